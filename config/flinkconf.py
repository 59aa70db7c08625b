"""Flink configuration: flink-conf/config.yaml plus the values that depend on this machine.

Both the embedded MiniCluster and the standalone session cluster start from the same file,
so a job behaves the same on either.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sysconfig
from pathlib import Path

import yaml

from config.monitoring import MAX_TASKMANAGERS, metrics_port
from config.settings import PROJECT_DIR, Settings

# Flink's Prometheus reporter (the plugin in pyflink/plugins/metrics-prometheus/). It has no host option:
# it binds every interface (InetSocketAddress(port) in PrometheusReporter), so its ports carry only metrics.
PROMETHEUS_REPORTER = {
    "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
    # labels that change on every restart: each would start new series
    "metrics.reporter.prom.scope.variables.excludes": "task_attempt_id;task_attempt_num;tm_id;job_id",
}
REPORTER_PORT = "metrics.reporter.prom.port"


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = "true" if value is True else "false" if value is False else str(value)
    return flat


def base_config(settings: Settings) -> dict[str, str]:
    """The settings from flink-conf/config.yaml, flattened to dotted keys."""
    with open(settings.flink_conf_file) as fh:
        return _flatten(yaml.safe_load(fh) or {})


def job_config(settings: Settings) -> dict[str, str]:
    """What a job needs on any cluster: the shared file + interpreter + checkpoint directory."""
    return {
        **base_config(settings),
        "python.executable": settings.python_executable,
        "python.client.executable": settings.python_executable,
        # thread mode embeds Python in the JVM, which does not see the venv by itself
        "python.pythonpath": os.pathsep.join([sysconfig.get_paths()["purelib"], str(PROJECT_DIR)]),
        "execution.checkpointing.dir": (settings.run_dir / "checkpoints").resolve().as_uri(),
        "execution.checkpointing.savepoint-dir": (settings.run_dir / "savepoints").resolve().as_uri(),
        "rest.bind-address": settings.host,  # the MiniCluster's REST endpoint: loopback only
        "rest.address": settings.host,
        "jobmanager.bind-host": settings.host,  # also the BLOB server's, which binds 0.0.0.0 otherwise
        "taskmanager.bind-host": settings.host,
        **PROMETHEUS_REPORTER,
    }


EMBEDDED_UI_OFFSETS = {"router": 10, "scoring": 11, "accuracy": 12, "smoke": 13}


def embedded_ui_port(settings: Settings, job: str) -> int:
    """The fixed web UI / REST port of a job's embedded MiniCluster: the session cluster's + offset."""
    return settings.flink_rest_port + EMBEDDED_UI_OFFSETS[job]


def flink_home() -> Path:
    """The pip package's Flink distribution (bin/, lib/, opt/, conf/), found without importing it."""
    return Path(importlib.util.find_spec("pyflink").origin).parent


def taskmanager_metrics_ports(settings: Settings) -> str:
    """The session TaskManagers' reporter port range: each TaskManager takes the first free port of it."""
    first = metrics_port(settings, "taskmanager")
    return f"{first}-{first + MAX_TASKMANAGERS - 1}"


def jobmanager_dynamic_properties(settings: Settings) -> list[str]:
    """`jobmanager.sh start` arguments that give the JobManager its own reporter port (outside the TaskManagers' range)."""
    return ["-D", f"{REPORTER_PORT}={metrics_port(settings, 'jobmanager')}"]


def prometheus_reporter_jar() -> Path:
    """The reporter plugin's jar. The session cluster loads it from plugins/; an embedded MiniCluster
    ignores plugins/ ("factory ... could not be found"), so make_env adds it to the job's class path."""
    return next((flink_home() / "plugins" / "metrics-prometheus").glob("flink-metrics-prometheus-*.jar"))


def cluster_config(settings: Settings) -> dict[str, str]:
    """The session cluster's config.yaml: the distribution's defaults (JVM flags for Java 17),
    then the shared file, then loopback-only addresses, fixed ports and modest memory. The reporter
    port is the TaskManagers' range; the JobManager overrides it (jobmanager_dynamic_properties)."""
    host = settings.host
    with open(flink_home() / "conf" / "config.yaml") as fh:
        distribution = _flatten(yaml.safe_load(fh) or {})
    return {
        **distribution,
        **job_config(settings),
        "jobmanager.rpc.address": host,
        "jobmanager.rpc.port": str(settings.flink_rest_port + 1),
        "jobmanager.bind-host": host,
        "taskmanager.bind-host": host,
        "taskmanager.host": host,
        "rest.port": str(settings.flink_rest_port),
        REPORTER_PORT: taskmanager_metrics_ports(settings),
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.memory.process.size": "2048m",
    }


def write_flat_yaml(config: dict[str, str], path: Path) -> None:
    """Flat `key: "value"` lines; a JSON string is a valid YAML scalar, quoted safely."""
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in sorted(config.items())))


def write_cluster_conf(settings: Settings, conf_dir: Path) -> Path:
    """A FLINK_CONF_DIR for the session cluster: config.yaml + the distribution's log4j files."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties", "logback.xml"):
        shutil.copy(flink_home() / "conf" / name, conf_dir / name)
    write_flat_yaml(cluster_config(settings), conf_dir / "config.yaml")
    return conf_dir


if __name__ == "__main__":  # used by docker-compose.yml: python -m config.flinkconf
    print(write_cluster_conf(Settings.from_env(), Settings.from_env().run_dir / "flink" / "conf"))
