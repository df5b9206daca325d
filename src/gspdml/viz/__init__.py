"""Plots: pooling-weight maps, prototype histograms, embedding geometry."""
