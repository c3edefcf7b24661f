"""Shared pieces of the examples and benchmarks: data, models, robustness protocol, reports."""
