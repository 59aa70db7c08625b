"""Mailroom: streaming document classification on Kafka, Redis and PyFlink.

The `mailroom` package holds what every part shares: settings, topic declarations, the
local stack (Kafka, Redis, a Flink session cluster) and the command line.
"""

__version__ = "0.1.0"
