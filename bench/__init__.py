"""Benchmarks for neardup; each writes bench/results/*.json (figures, machine, date, git revision)."""
