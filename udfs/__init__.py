"""Flink functions (functions.py, the only pyflink import) over plain-Python logic (the rest)."""
