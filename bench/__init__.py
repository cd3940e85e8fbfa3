"""Benchmarks: they print figures; tests assert behaviour, never time."""
