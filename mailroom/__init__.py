"""Mailroom: streaming document classification on Kafka, Redis and PyFlink.

The `mailroom` package is the top layer: the tools people run (the command line, the local
stack of Kafka, Redis and a Flink session cluster, job submission, producer, feedback, the
demo and the benchmark). It starts the jobs as processes; nothing below imports it.
"""

__version__ = "0.1.0"
