"""The benchmark harness behind `predkern bench` (cases.py is shared with benchmarks/)."""
