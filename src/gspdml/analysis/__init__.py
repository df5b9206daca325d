"""Analyses of trained models: zero-shot attribute evaluation."""
