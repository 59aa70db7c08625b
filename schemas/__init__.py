"""Avro schemas (*.avsc) and the one codec every job and tool uses."""
