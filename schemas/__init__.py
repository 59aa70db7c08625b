"""The contract every party shares: Avro schemas (*.avsc) and the one codec, topics, labels and departments, time units, Redis keys."""
