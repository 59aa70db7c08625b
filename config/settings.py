"""All of Mailroom's configuration, in one frozen object.

Every field can be overridden by the environment variable named in its comment. Jobs and
tools receive a `Settings` instance (it is picklable, so it travels into Flink workers as a
constructor argument); nothing else reads the environment.

>>> s = Settings.from_env({"MAILROOM_KAFKA_PORT": "29092", "MAILROOM_REDIS_PASSWORD": "pw"})
>>> s.bootstrap_servers
'127.0.0.1:29092'
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

PROJECT_DIR = Path(__file__).resolve().parent.parent

class ConfigError(ValueError):
    """A setting is unusable (a malformed environment variable, a missing jar); the message says what to do."""


# field name -> environment variable that overrides it
ENV_VARS = {
    "run_dir": "MAILROOM_RUN_DIR",
    "cache_dir": "MAILROOM_CACHE_DIR",
    "host": "MAILROOM_HOST",
    "kafka_port": "MAILROOM_KAFKA_PORT",
    "kafka_controller_port": "MAILROOM_KAFKA_CONTROLLER_PORT",
    "kafka_heap": "MAILROOM_KAFKA_HEAP",
    "redis_port": "MAILROOM_REDIS_PORT",
    "redis_password": "MAILROOM_REDIS_PASSWORD",
    "kafka_passwords": "MAILROOM_KAFKA_PASSWORDS",
    "kafka_principal": "MAILROOM_KAFKA_PRINCIPAL",
    "flink_rest_port": "MAILROOM_FLINK_REST_PORT",
    "mlflow_port": "MAILROOM_MLFLOW_PORT",
    "prometheus_port": "MAILROOM_PROMETHEUS_PORT",
    "metrics_port": "MAILROOM_METRICS_PORT",
    "dashboard_port": "MAILROOM_DASHBOARD_PORT",
    "flink_conf_file": "MAILROOM_FLINK_CONF",
    "topic_prefix": "MAILROOM_TOPIC_PREFIX",
    "python_executable": "MAILROOM_PYTHON",
    "registry_dir": "MAILROOM_REGISTRY_DIR",
}


@dataclass(frozen=True)
class Settings:
    """Where Mailroom's services run and where it keeps its files."""

    run_dir: Path = PROJECT_DIR / ".run"  # MAILROOM_RUN_DIR: data, logs, PID files (git-ignored)
    cache_dir: Path = PROJECT_DIR / ".cache"  # MAILROOM_CACHE_DIR: fetched jars (git-ignored)
    host: str = "127.0.0.1"  # MAILROOM_HOST: every service binds here, loopback only
    # Default ports sit below Linux's ephemeral range (32768-60999), so a client socket that
    # the kernel numbers at random never takes one while its service restarts.
    kafka_port: int = 29092  # MAILROOM_KAFKA_PORT: the broker's client listener
    kafka_controller_port: int = 29093  # MAILROOM_KAFKA_CONTROLLER_PORT: the KRaft controller
    kafka_heap: str = "512m"  # MAILROOM_KAFKA_HEAP: the broker JVM's -Xmx
    # Kafka's SASL/SCRAM passwords as JSON {"principal": "password"} (principals: schemas/access.py); a principal
    # not named here gets one generated once into <run_dir>/kafka-passwords.json (mode 0600)
    kafka_passwords: str = ""  # MAILROOM_KAFKA_PASSWORDS
    # who this process's Kafka clients authenticate as; empty: its role decides (a job its own name, `mailroom inbox
    # hr` dept-hr, ...), else the operator
    kafka_principal: str = ""  # MAILROOM_KAFKA_PRINCIPAL
    redis_port: int = 26379  # MAILROOM_REDIS_PORT
    redis_password: str = ""  # MAILROOM_REDIS_PASSWORD: default generated once into run_dir
    flink_rest_port: int = 28081  # MAILROOM_FLINK_REST_PORT: session cluster REST API and web UI
    mlflow_port: int = 25000  # MAILROOM_MLFLOW_PORT: the MLflow server (UI + REST API) over the model registry
    prometheus_port: int = 29090  # MAILROOM_PROMETHEUS_PORT: the Prometheus server (UI + HTTP API)
    # the first of the ports (this + 0..29) where Flink's Prometheus reporters and the project's own services
    # expose metrics to Prometheus (`config.monitoring.METRICS_PORT_OFFSETS`)
    metrics_port: int = 29250  # MAILROOM_METRICS_PORT
    dashboard_port: int = 28000  # MAILROOM_DASHBOARD_PORT: the dashboard page (`mailroom dashboard`)
    flink_conf_file: Path = PROJECT_DIR / "flink-conf" / "config.yaml"  # MAILROOM_FLINK_CONF
    topic_prefix: str = "mailroom."  # MAILROOM_TOPIC_PREFIX: namespaces every topic name
    python_executable: str = sys.executable  # MAILROOM_PYTHON: the interpreter Flink workers run
    registry_dir: Path | None = None  # MAILROOM_REGISTRY_DIR: the model registry; default <run_dir>/registry

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then the environment, then explicit keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(ENV_VARS[f.name])
            if raw is None or raw == "":
                continue
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{ENV_VARS[f.name]}={raw!r} is not a whole number; unset it or give a port number.") from None
            elif f.type in ("Path", Path, "Path | None"):
                values[f.name] = Path(raw).expanduser().resolve()
            else:
                values[f.name] = raw
        values.update(overrides)
        settings = cls(**values)
        if settings.registry_dir is None:
            settings = replace(settings, registry_dir=settings.run_dir / "registry")
        if not settings.redis_password:
            settings = replace(settings, redis_password=_stored_password(settings.run_dir))
        return settings

    def as_env(self) -> dict[str, str]:
        """These settings as the environment variables a child process reads them from."""
        return {ENV_VARS[f.name]: str(getattr(self, f.name)) for f in fields(self)}

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def flink_rest_url(self) -> str:
        return f"http://{self.host}:{self.flink_rest_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    @property
    def jar_dir(self) -> Path:
        return self.cache_dir / "jars"

    @property
    def connector_jar(self) -> Path:
        jars = sorted((self.jar_dir / "connector").glob("flink-sql-connector-kafka-*.jar"))
        if not jars:
            raise ConfigError(f"The Flink Kafka connector jar is missing under {self.jar_dir}/connector. Run `make jars` (or `make setup`).")
        return jars[-1]

    @property
    def principal(self) -> str:
        """The Kafka principal this process's clients use (the operator unless set)."""
        return self.kafka_principal or "operator"

    def as_principal(self, principal: str) -> "Settings":
        """These settings for a process in the role of `principal`, unless MAILROOM_KAFKA_PRINCIPAL chose one already."""
        return self if self.kafka_principal else replace(self, kafka_principal=principal)

    def kafka_password(self, principal: str) -> str:
        """The SCRAM password of a Kafka principal: from MAILROOM_KAFKA_PASSWORDS, else kept in run_dir (generated on first use)."""
        if self.kafka_passwords:
            try:
                given = json.loads(self.kafka_passwords)
            except ValueError:
                raise ConfigError("MAILROOM_KAFKA_PASSWORDS is not JSON; give an object like {\"operator\": \"...\"} or unset it.") from None
            if not isinstance(given, dict):
                raise ConfigError("MAILROOM_KAFKA_PASSWORDS must be a JSON object {\"principal\": \"password\"}.")
            if given.get(principal):
                return str(given[principal])
        return _stored_kafka_password(self.run_dir, principal)

    @property
    def kafka_passwords_file(self) -> Path:
        return self.run_dir / "kafka-passwords.json"

    def redis_client(self, **kwargs):
        """A redis-py client for the project's Redis, authenticated."""
        import redis

        return redis.Redis(host=self.host, port=self.redis_port, password=self.redis_password, **kwargs)


def _stored_password(run_dir: Path) -> str:
    """The Redis password kept in run_dir (mode 0600), generated on first use."""
    path = run_dir / "redis.password"
    if path.exists():
        return path.read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _stored_kafka_password(run_dir: Path, principal: str) -> str:
    """One principal's Kafka password from <run_dir>/kafka-passwords.json (mode 0600), added on first use.

    Processes that start together (a job and a tool) may ask at once: the file is locked while read and extended."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "kafka-passwords.json"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        text = fh.read()
        try:
            stored = json.loads(text) if text.strip() else {}
        except ValueError:
            raise ConfigError(f"{path} is not JSON; delete it (and run `mailroom stack up`) to generate new Kafka passwords.") from None
        if principal not in stored:
            stored[principal] = secrets.token_urlsafe(24)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(stored, indent=1, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return stored[principal]
