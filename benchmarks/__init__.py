"""Benchmark scripts: speed, memory and kernel figures printed and written as JSON (benchmarks/README.md)."""
