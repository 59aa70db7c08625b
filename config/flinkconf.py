"""Flink configuration: flink-conf/config.yaml plus the values that depend on this machine.

Both the embedded MiniCluster and the standalone session cluster start from the same file,
so a job behaves the same on either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sysconfig
from pathlib import Path

import yaml

from config.monitoring import MAX_TASKMANAGERS, metrics_port
from config.settings import ConfigError, PROJECT_DIR, Settings

# The project's loopback-bound Prometheus reporter (mailroom/jvm/reporter/, built by `make jars`): Flink's
# PrometheusReporter with a host option, over the plugin in pyflink/plugins/metrics-prometheus/.
REPORTER_SOURCES = PROJECT_DIR / "mailroom" / "jvm" / "reporter" / "src"
PROMETHEUS_REPORTER = {
    "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.LoopbackPrometheusReporterFactory",
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
        "metrics.reporter.prom.host": settings.host,
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
    """Flink's reporter plugin jar, which the loopback reporter extends. An embedded MiniCluster ignores
    plugins/ ("factory ... could not be found"), so make_env adds both jars to the job's class path;
    the session cluster loads them from its own plugin folder (write_plugins_dir)."""
    return next((flink_home() / "plugins" / "metrics-prometheus").glob("flink-metrics-prometheus-*.jar"))


def reporter_sources_digest() -> str:
    """A hash of the loopback reporter's sources and of the Flink jar it is compiled against."""
    digest = hashlib.sha256(prometheus_reporter_jar().name.encode())
    for path in sorted(p for p in REPORTER_SOURCES.rglob("*") if p.is_file()):
        digest.update(path.relative_to(REPORTER_SOURCES).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def loopback_reporter_path(settings: Settings) -> Path:
    """Where `make jars` (mailroom.jars) puts the reporter built from the current sources."""
    return settings.jar_dir / "reporter" / f"mailroom-prometheus-loopback-{reporter_sources_digest()}.jar"


def loopback_reporter_jar(settings: Settings) -> Path:
    """The loopback reporter's jar, built from the current sources (or a ConfigError that says how)."""
    jar = loopback_reporter_path(settings)
    if not jar.exists():
        raise ConfigError(f"The loopback Prometheus reporter jar {jar.name} is missing under {jar.parent} "
                          "(or older than its sources). Run `make jars` (or `make setup`).")
    return jar


def reporter_jars(settings: Settings) -> list[Path]:
    """Flink's Prometheus plugin jar and the loopback reporter: one class loader must hold both
    (the reporter lives in the plugin's package to reach its package-private registry)."""
    return [prometheus_reporter_jar(), loopback_reporter_jar(settings)]


def write_plugins_dir(settings: Settings, plugins_dir: Path) -> Path:
    """A FLINK_PLUGINS_DIR for the session cluster: one plugin folder with both reporter jars."""
    folder = plugins_dir / "metrics-prometheus-loopback"
    jars = reporter_jars(settings)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for jar in jars:
        shutil.copy(jar, folder / jar.name)
    return plugins_dir


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
        "taskmanager.numberOfTaskSlots": str(settings.flink_slots),
        "cluster.evenly-spread-out-slots": "true",  # a job's subtasks over all TaskManagers (all cores), not packed into one
        # a TaskManager killed outright: its heartbeat RPCs fail at once, and two failed ones in a row (6 s) mark it
        # lost, so its tasks restart elsewhere instead of waiting out the 50 s heartbeat timeout
        "heartbeat.interval": "3000",
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.memory.process.size": "2048m",
        **({"env.java.opts.taskmanager": settings.taskmanager_jvm_opts} if settings.taskmanager_jvm_opts else {}),
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


if __name__ == "__main__":  # used by docker-compose.yml: python -m config.flinkconf (FLINK_PLUGINS_DIR: .run/flink/plugins)
    _settings = Settings.from_env()
    print(write_cluster_conf(_settings, _settings.run_dir / "flink" / "conf"))
    print(write_plugins_dir(_settings, _settings.run_dir / "flink" / "plugins"))
