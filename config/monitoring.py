"""Where each part of Mailroom exposes its metrics to Prometheus: one port per embedded job's
Flink reporter, a range for the session cluster's JobManager and TaskManagers, one per service
of the project's own (prometheus-client). All are `Settings.metrics_port` + an offset.

>>> from config.settings import Settings
>>> metrics_port(Settings(redis_password="pw"), "scoring")
29251
"""

from __future__ import annotations

from config.settings import Settings

METRICS_PORT_OFFSETS = {
    "router": 0,  # the embedded jobs' MiniClusters (one reporter each)
    "scoring": 1,
    "accuracy": 2,
    "smoke": 3,
    "jobmanager": 10,  # the session cluster: its JobManager, then one port per TaskManager
    "taskmanager": 11,  # 11..19
    "retrainer": 20,  # the project's own services
    "judge": 21,
}
MAX_TASKMANAGERS = 9


def metrics_port(settings: Settings, name: str) -> int:
    """The metrics port of `name` (a key of METRICS_PORT_OFFSETS; "taskmanager" is the first TaskManager's)."""
    return settings.metrics_port + METRICS_PORT_OFFSETS[name]
