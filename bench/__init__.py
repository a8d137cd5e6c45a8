"""Benchmarks, the toy world and the demo."""
