"""Tests of the scripts in benchmarks/ (one module per script)."""
