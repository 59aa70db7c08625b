"""Flink tests' JVM: Flink's Prometheus reporter on the gateway's classpath, where a local
MiniCluster's metric registry finds it (it does not load the pip package's plugins/ folder).
The gateway adds HADOOP_CLASSPATH to its classpath; set here, before any test starts it."""

from __future__ import annotations

import glob
import os

from config.flinkconf import flink_home

PROMETHEUS_JAR = glob.glob(str(flink_home() / "plugins" / "metrics-prometheus" / "flink-metrics-prometheus-*.jar"))
os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(filter(None, [os.environ.get("HADOOP_CLASSPATH", ""), *PROMETHEUS_JAR]))
