"""Flink adapters: one module per job, the only code under udfs/ that imports pyflink.

Each function here is a thin adapter over a plain class of udfs/ or models/: it holds Flink
state and timers and calls the plain logic, with no business branching of its own.
"""
