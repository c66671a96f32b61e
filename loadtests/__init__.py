"""Benchmarks and load tests (run as scripts; see README)."""
