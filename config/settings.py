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
from dataclasses import dataclass, field, fields, replace
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
    "embedded_jvm_opts": "MAILROOM_EMBEDDED_JVM_OPTS",
    "taskmanager_jvm_opts": "MAILROOM_TASKMANAGER_JVM_OPTS",
    "kafka_retention_bytes": "MAILROOM_KAFKA_RETENTION_BYTES",
    "redis_port": "MAILROOM_REDIS_PORT",
    "redis_password": "MAILROOM_REDIS_PASSWORD",
    "kafka_passwords": "MAILROOM_KAFKA_PASSWORDS",
    "kafka_principal": "MAILROOM_KAFKA_PRINCIPAL",
    "redis_scoring_password": "MAILROOM_REDIS_SCORING_PASSWORD",
    "redis_accuracy_password": "MAILROOM_REDIS_ACCURACY_PASSWORD",
    "redis_dashboard_password": "MAILROOM_REDIS_DASHBOARD_PASSWORD",
    "redis_smoke_password": "MAILROOM_REDIS_SMOKE_PASSWORD",
    "dashboard_token": "MAILROOM_DASHBOARD_TOKEN",
    "flink_rest_port": "MAILROOM_FLINK_REST_PORT",
    "flink_taskmanagers": "MAILROOM_FLINK_TASKMANAGERS",
    "flink_slots": "MAILROOM_FLINK_SLOTS",
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
    kafka_heap: str = "384m"  # MAILROOM_KAFKA_HEAP: the broker JVM's -Xmx
    # the JVM options of an embedded job's MiniCluster (pyflink's JVM_ARGS). The JVM's defaults size the heap from the
    # machine (an initial heap of 1/64 of its memory, G1's remembered sets): a small start and the serial collector,
    # which grows the heap only as live data needs, keep each job's JVM to what it uses (`make run`: scoring job 1,383 -> 1,178 MB)
    embedded_jvm_opts: str = "-Xms64m -Xmx1g -XX:+UseSerialGC"  # MAILROOM_EMBEDDED_JVM_OPTS
    # extra JVM options of the session cluster's TaskManagers (Flink's env.java.opts.taskmanager; Flink sizes their heap
    # itself, from taskmanager.memory.process.size; "" (bench --taskmanager-jvm-opts ""): the JVM's choice, G1 here). The serial
    # collector, as in the embedded jobs: two TaskManagers at p2 did 29 vs 24 and 20 vs 16 docs/s with it, 64 vs 74 and
    # 85 vs 110 CPU ms per document, 450-530 MB less RSS (`mailroom bench --variants peer mailroom-cluster --parallelism 2
    # --taskmanager-jvm-opts "" "-XX:+UseSerialGC "`, runs 20261203T165348Z and 20261203T165936Z, in both orders)
    taskmanager_jvm_opts: str = "-XX:+UseSerialGC"  # MAILROOM_TASKMANAGER_JVM_OPTS
    # a partition keeps at most this much (besides its 7 days), in segments of an eighth of it: the broker's disk
    # is bounded by topics x partitions x (this + a segment)
    kafka_retention_bytes: int = 1 << 29  # MAILROOM_KAFKA_RETENTION_BYTES
    # Kafka's SASL/SCRAM passwords as JSON {"principal": "password"} (principals: schemas/access.py); a principal
    # not named here gets one generated once into <run_dir>/kafka-passwords.json (mode 0600)
    kafka_passwords: str = field(default="", repr=False)  # MAILROOM_KAFKA_PASSWORDS
    # who this process's Kafka clients authenticate as; empty: its role decides (a job its own name, `mailroom inbox
    # hr` dept-hr, ...), else the operator
    kafka_principal: str = ""  # MAILROOM_KAFKA_PRINCIPAL
    redis_port: int = 26379  # MAILROOM_REDIS_PORT
    # Redis users (ACL, `REDIS_USERS`); the default user is disabled. The operator's password (full rights: the
    # tools, the tests) is kept in run_dir/redis.password, the others in run_dir/redis_user_passwords (both mode 0600,
    # generated once unless the variable gives it)
    redis_password: str = field(default="", repr=False)  # MAILROOM_REDIS_PASSWORD: the `operator` user's
    redis_scoring_password: str = field(default="", repr=False)  # MAILROOM_REDIS_SCORING_PASSWORD: the `scoring` user's (the feature namespace)
    redis_accuracy_password: str = field(default="", repr=False)  # MAILROOM_REDIS_ACCURACY_PASSWORD: the `accuracy` user's (accuracy + shadow figures)
    redis_dashboard_password: str = field(default="", repr=False)  # MAILROOM_REDIS_DASHBOARD_PASSWORD: the `dashboard` user's (read only)
    redis_smoke_password: str = field(default="", repr=False)  # MAILROOM_REDIS_SMOKE_PASSWORD: the `smoke` user's (tests/jobs/smoke.py)
    # (the operator's password is generated when Settings are made, the other users' when first needed; no secret is
    # in the repr, so a traceback or a log line that prints Settings shows none)
    flink_rest_port: int = 28081  # MAILROOM_FLINK_REST_PORT: session cluster REST API and web UI
    # the session cluster's declared shape (`mailroom stack up --flink --taskmanagers N --slots S` overrides both):
    # TaskManager processes, and slots in each; one slot each by default, as thread-mode Python runs every operator of
    # a TaskManager in one interpreter, so a second core needs a second TaskManager
    flink_taskmanagers: int = 1  # MAILROOM_FLINK_TASKMANAGERS
    flink_slots: int = 1  # MAILROOM_FLINK_SLOTS
    mlflow_port: int = 25000  # MAILROOM_MLFLOW_PORT: the MLflow server (UI + REST API) over the model registry
    prometheus_port: int = 29090  # MAILROOM_PROMETHEUS_PORT: the Prometheus server (UI + HTTP API)
    # the first of the ports (this + 0..29) where Flink's Prometheus reporters and the project's own services
    # expose metrics to Prometheus (`config.monitoring.METRICS_PORT_OFFSETS`)
    metrics_port: int = 29250  # MAILROOM_METRICS_PORT
    dashboard_port: int = 28000  # MAILROOM_DASHBOARD_PORT: the dashboard page (`mailroom dashboard`)
    dashboard_token: str = field(default="", repr=False)  # MAILROOM_DASHBOARD_TOKEN: the page's access token; default generated into run_dir/dashboard.token
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
                    raise ConfigError(f"{ENV_VARS[f.name]}={raw!r} is not a whole number; unset it or give one.") from None
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
        return settings  # the other Redis users' passwords and the dashboard token: read (generated) when first used

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

    def with_run_dir(self, run_dir: Path) -> "Settings":
        """These settings with files of their own under `run_dir` (logs, checkpoints), still speaking to this stack:
        the Kafka and Redis passwords kept in this run directory travel along (as their environment variables would)."""
        try:
            stored = json.loads(self.kafka_passwords_file.read_text())
        except (OSError, ValueError):
            stored = {}
        given = json.loads(self.kafka_passwords) if self.kafka_passwords else {}
        redis = {f"redis_{user}_password": self.redis_password_of(user) for user in REDIS_USERS if user != OPERATOR}
        return replace(self, run_dir=run_dir, kafka_passwords=json.dumps({**stored, **given}), **redis)

    def redis_password_of(self, user: str) -> str:
        """The password of the Redis user `user` (a key of REDIS_USERS)."""
        if user not in REDIS_USERS:
            raise ValueError(f"{user!r} is not a Redis user: one of {list(REDIS_USERS)}")
        if user == OPERATOR:
            return self.redis_password
        return getattr(self, f"redis_{user}_password") or _stored_passwords(self.run_dir)[user]

    def compose_env(self) -> dict[str, str]:
        """The secrets docker-compose.yml reads, from these settings: the Kafka operator's and the KRaft controller's
        passwords (the broker's own users) and every Redis user's. `mailroom stack env` prints them for the shell."""
        env = {"MAILROOM_KAFKA_OPERATOR_PASSWORD": self.kafka_password(OPERATOR),
               "MAILROOM_KAFKA_CONTROLLER_PASSWORD": self.kafka_password(KAFKA_CONTROLLER)}
        env.update({ENV_VARS["redis_password" if user == OPERATOR else f"redis_{user}_password"]: self.redis_password_of(user)
                    for user in REDIS_USERS})
        return env

    def dashboard_secret(self) -> str:
        """The token the dashboard requires: MAILROOM_DASHBOARD_TOKEN, else the one kept in run_dir/dashboard.token."""
        return self.dashboard_token or _stored_secret(self.dashboard_token_file)

    def redis_client(self, user: str = "operator", **kwargs):
        """A redis-py client for the project's Redis, authenticated as `user` (a key of REDIS_USERS; the
        operator has every right: the jobs and the dashboard pass their own user)."""
        import redis

        return redis.Redis(host=self.host, port=self.redis_port, username=user, password=self.redis_password_of(user), **kwargs)

    def redis_acl(self) -> list[list[str]]:
        """The `user` directives of redis.conf (or redis-server's `--user` arguments): each Redis user with its
        password and rules, the default user disabled."""
        return [["default", "off", "resetpass", "resetkeys", "resetchannels", "-@all"]] + [
            [user, "on", "resetpass", f">{self.redis_password_of(user)}", *rules] for user, rules in REDIS_USERS.items()]

    @property
    def dashboard_token_file(self) -> Path:
        return self.run_dir / "dashboard.token"

    @property
    def dashboard_login_url(self) -> str:
        """The dashboard page's URL with its token: what a person opens in a browser."""
        return f"{self.dashboard_url}/?token={self.dashboard_secret()}"


OPERATOR = "operator"
KAFKA_CONTROLLER = "controller"  # the KRaft controller listener's one (PLAIN) user: the broker itself
# Commands every writer needs: read and write its keys, pipelines and MULTI/EXEC, PING/AUTH/HELLO/CLIENT SETINFO;
# never FLUSHALL, KEYS, CONFIG, DEBUG and the like (@dangerous), nor FUNCTION (no scripts are used).
_WRITER = ["resetchannels", "-@all", "+@read", "+@write", "+@transaction", "+@connection", "-@dangerous", "-function"]
REDIS_USERS = {
    OPERATOR: ["~*", "&*", "+@all"],  # the tools (`mailroom accuracy --source redis`, the stack's checks) and the tests
    "scoring": ["resetkeys", "~mailroom:features:*", *_WRITER],  # schemas.redis_keys.FEATURES_NAMESPACE
    "accuracy": ["resetkeys", "~mailroom:accuracy:*", "~mailroom:shadow:*", *_WRITER],  # ACCURACY_ and SHADOW_NAMESPACE
    # read only (%R~: read permission only on the keys; no write command at all): SCAN, HGETALL, GET, ...
    "dashboard": ["resetkeys", "%R~mailroom:*", "resetchannels", "-@all", "+@read", "+@connection", "-@dangerous"],
    "smoke": ["resetkeys", "~mailroom:smoke:*", *_WRITER],  # tests/jobs/smoke.py
}


def _create_private(path: Path, text: str) -> bool:
    """Create `path` (mode 0600) holding `text` unless it exists; atomic: a concurrent reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    try:
        os.link(partial, path)
        return True
    except FileExistsError:
        return False
    finally:
        partial.unlink()


def _stored_secret(path: Path) -> str:
    """A secret kept in `path` (mode 0600), generated on first use."""
    if not path.exists():
        _create_private(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _stored_password(run_dir: Path) -> str:
    """The Redis operator's password kept in run_dir (mode 0600), generated on first use."""
    return _stored_secret(run_dir / "redis.password")



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


def _stored_passwords(run_dir: Path) -> dict[str, str]:
    """The other Redis users' passwords kept in run_dir/redis_user_passwords (JSON, mode 0600), generated on first use
    (a user added later gets a password added to the file)."""
    path = run_dir / "redis_user_passwords"
    users = [user for user in REDIS_USERS if user != OPERATOR]
    if not path.exists():
        _create_private(path, json.dumps({user: secrets.token_urlsafe(24) for user in users}, indent=2) + "\n")
    stored = json.loads(path.read_text())
    if any(user not in stored for user in users):
        stored = {**{user: secrets.token_urlsafe(24) for user in users}, **stored}
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(stored, indent=2) + "\n")
        os.replace(partial, path)
    return stored
