"""Streaming logic in plain Python (routing, cleaning, scoring, batching, joining, metrics, dead letters) and `adapters/`, the thin Flink functions over it: the only pyflink imports below jobs/."""
