"""Conformance tooling: ties the TLA+ spec to the Python implementation (TLC runs, mutants, traces)."""
