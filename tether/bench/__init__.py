"""Benchmarks (`tether bench`): each reports ratios to raw baselines of the same run."""
