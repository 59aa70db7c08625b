"""Where each part of Mailroom exposes its metrics to Prometheus: one port per embedded job's
Flink reporter, a range for the session cluster's JobManager and TaskManagers, one per service
of the project's own (prometheus-client). All are `Settings.metrics_port` + an offset.

The Prometheus server (`mailroom stack up`) reads the prometheus.yml written here, finds what to
scrape in <run_dir>/prometheus/targets/<name>.json (file_sd: register_target / unregister_target)
and evaluates config/prometheus/alerts.yml.

>>> from config.settings import Settings
>>> metrics_port(Settings(redis_password="pw"), "scoring")
29251
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from config.settings import PROJECT_DIR, Settings

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

FLINK_TARGETS = ("router", "scoring", "accuracy", "smoke", "jobmanager", "taskmanager")  # scraped as job "flink"
SERVICE_TARGETS = ("retrainer", "judge", "dashboard")  # scraped as job "services" (the dashboard on its own port)
ALERT_RULES = PROJECT_DIR / "config" / "prometheus" / "alerts.yml"
SCRAPE_INTERVAL = "5s"


def prometheus_dir(settings: Settings) -> Path:
    return settings.run_dir / "prometheus"


def targets_dir(settings: Settings) -> Path:
    """Where the file_sd target files live, one <name>.json per running job or service."""
    return prometheus_dir(settings) / "targets"


def prometheus_config(settings: Settings) -> dict:
    """prometheus.yml: the Flink reporters and the services found through file_sd, Prometheus itself, the alert rules."""
    targets = targets_dir(settings)

    def discovered(names: tuple[str, ...]) -> list[dict]:
        return [{"files": [str(targets / f"{name}.json") for name in names], "refresh_interval": SCRAPE_INTERVAL}]

    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {"job_name": "flink", "file_sd_configs": discovered(FLINK_TARGETS)},
            {"job_name": "services", "file_sd_configs": discovered(SERVICE_TARGETS)},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{settings.host}:{settings.prometheus_port}"]}]},
        ],
    }


def write_prometheus_config(settings: Settings, directory: Path) -> Path:
    """Write prometheus.yml into `directory` (and create the targets folder); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    targets_dir(settings).mkdir(parents=True, exist_ok=True)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus_config(settings), sort_keys=False))
    return path


def register_target(settings: Settings, name: str, ports: int | list[int], labels: dict[str, str] | None = None) -> Path:
    """Tell Prometheus to scrape `name` (a key of METRICS_PORT_OFFSETS) on `ports`, labelled mailroom_job=<name>.
    Written atomically: Prometheus watches the folder and must never read half a file."""
    if name not in FLINK_TARGETS + SERVICE_TARGETS:
        raise ValueError(f"{name!r} is not a scrape target: one of {FLINK_TARGETS + SERVICE_TARGETS}")
    ports = [ports] if isinstance(ports, int) else ports
    group = {"targets": [f"{settings.host}:{port}" for port in ports], "labels": {"mailroom_job": name, **(labels or {})}}
    directory = targets_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps([group], indent=2))
    os.replace(partial, path)
    return path


def unregister_target(settings: Settings, name: str) -> None:
    """Stop scraping `name` (it stopped on purpose: a target left behind by a crash stays, so its `up` alerts)."""
    (targets_dir(settings) / f"{name}.json").unlink(missing_ok=True)


if __name__ == "__main__":  # used by docker-compose.yml's prometheus service: python -m config.monitoring
    print(write_prometheus_config(Settings.from_env(), prometheus_dir(Settings.from_env())))
