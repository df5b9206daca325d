"""Benchmarks behind `gspdml bench ...` (speed ratios measured side by side in one run)."""
