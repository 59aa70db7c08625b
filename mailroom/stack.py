"""The local stack: a KRaft Kafka broker, Redis, the MLflow server over the model registry, the Prometheus server
and (optionally) a Flink session cluster.

`up` starts what is not running, waits until each service answers a real request and creates
missing topics; a second `up` changes nothing. `down` stops only what `up` started (tracked by
PID and process start time under the run directory). `status` checks every service for real.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from config.flinkconf import REPORTER_PORT, flink_home, jobmanager_dynamic_properties, write_cluster_conf, write_plugins_dir
from config.monitoring import MAX_TASKMANAGERS, metrics_port, register_target, unregister_target, write_prometheus_config
from config.settings import KAFKA_CONTROLLER, ConfigError, Settings
from schemas.access import OPERATOR
from schemas.topics import TOPICS

SCRAM_MECHANISM = "SCRAM-SHA-512"
TASKMANAGER_ID = "mailroom-tm-"  # + index: the session cluster's TaskManagers' resource ids
SCRAM_FORMATTED = "data.formatted-with-scram"  # beside the data: marks storage formatted with the operator's SCRAM user (this version on)


class StackError(RuntimeError):
    """A service could not start or answer; the message says what to do."""


@dataclass
class ServiceStatus:
    name: str
    running: bool
    detail: str  # where it listens, or why it is down
    pid: int | None = None
    log: Path | None = None
    rss_mb: float | None = None

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# --- process bookkeeping ---------------------------------------------------------------------


def _record(path: Path, pid: int) -> None:
    path.write_text(json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time()}))


def _tracked(path: Path) -> psutil.Process | None:
    """The process recorded in `path`, if it still runs (same PID *and* start time)."""
    try:
        rec = json.loads(path.read_text())
        proc = psutil.Process(rec["pid"])
        if abs(proc.create_time() - rec["create_time"]) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (FileNotFoundError, ValueError, KeyError, psutil.Error):
        pass
    return None


def _stop(proc: psutil.Process, timeout: float = 30) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    except psutil.NoSuchProcess:
        pass


def _rss_mb(proc: psutil.Process | None) -> float | None:
    try:
        return round(proc.memory_info().rss / 2**20, 1) if proc else None
    except psutil.Error:
        return None


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def accepts(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _require_free(host: str, port: int, what: str, env_var: str) -> None:
    if not port_free(host, port):
        raise StackError(
            f"Port {port} on {host} is already taken, so {what} cannot start there. "
            f"Stop whatever listens on {port} (`ss -ltnp 'sport = :{port}'` shows it) or pick another port with {env_var}."
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait(check, proc: psutil.Process | None, timeout: float, what: str, log: Path) -> None:
    """Poll `check()` until it returns True; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and (not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE):
            raise StackError(f"{what} exited during start-up. Last lines of {log}:\n{_tail(log)}")
        try:
            if check():
                return
        except Exception as exc:  # the service is not answering yet
            last_error = exc
        time.sleep(0.5)
    raise StackError(f"{what} did not answer within {timeout:.0f}s ({last_error}). See {log}:\n{_tail(log)}")


# --- services started and tracked by us ------------------------------------------------------


class TrackedService:
    """A process `up` started, recorded in <run_dir>/<name>/process.json; checked for real."""

    name = ""

    def __init__(self, settings: Settings, log_name: str):
        self.s = settings
        self.dir = settings.run_dir / self.name
        self.log = self.dir / log_name
        self.pidfile = self.dir / "process.json"

    def process(self) -> psutil.Process | None:
        return _tracked(self.pidfile)

    def crashed(self) -> bool:
        """Started by `up` and gone without `down` (which removes the record): killed, or died."""
        return self.pidfile.exists() and self.process() is None

    def _answers(self) -> bool:
        raise NotImplementedError

    def where(self) -> str:
        raise NotImplementedError

    def status(self) -> ServiceStatus:
        proc = self.process()
        if not proc:
            # not started here, but it may run all the same (docker compose, a system service) with our credentials
            try:
                if self._answers():
                    return ServiceStatus(self.name, True, f"{self.where()}, not started by mailroom (docker compose?)")
            except Exception:
                pass
            return ServiceStatus(self.name, False, "not running", log=self.log)
        try:
            answers = self._answers()
        except Exception as exc:
            return ServiceStatus(self.name, False, f"process {proc.pid} runs but does not answer: {exc}", proc.pid, self.log)
        return ServiceStatus(self.name, answers, self.where(), proc.pid, self.log, _rss_mb(proc))

    def stop(self) -> bool:
        proc = self.process()
        self.pidfile.unlink(missing_ok=True)  # first: a supervisor must not take the stop for a crash while it lasts
        if proc:
            _stop(proc)
        return proc is not None


# --- Kafka -----------------------------------------------------------------------------------


class Kafka(TrackedService):
    """A single-node Kafka broker + controller (KRaft) from the jars in .cache/jars/broker."""

    name = "kafka"

    def __init__(self, settings: Settings):
        super().__init__(settings, "kafka.out")
        self.data = self.dir / "data"

    @property
    def classpath(self) -> str:
        jar_dir = self.s.jar_dir / "broker"
        if not any(jar_dir.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka broker jars are missing under {jar_dir}. Run `make jars` (or `make setup`).")
        return str(jar_dir / "*")

    def _write_config(self) -> Path:
        s = self.s
        operator, controller = OPERATOR, KAFKA_CONTROLLER
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        controller_pw = s.kafka_password(controller)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.host}:{s.kafka_controller_port}",
            # clients and the broker itself: SASL/SCRAM on loopback (no TLS: nothing leaves the machine)
            "listeners": f"SASL_PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_plaintext.{SCRAM_MECHANISM.lower()}.sasl.jaas.config":
                f'{scram} required username="{operator}" password="{s.kafka_password(operator)}";',
            # the KRaft controller cannot use SCRAM (its credentials live in the metadata it serves): PLAIN, one static
            # user known to the broker only
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                f'{plain} required username="{controller}" password="{controller_pw}" user_{controller}="{controller_pw}";',
            # the standard authorizer: what schemas/access.py does not grant is refused
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{operator};User:{controller}",
            "log.dirs": str(self.data),
            # a bounded disk: each partition drops its oldest segments beyond this (and beyond 7 days)
            "log.retention.bytes": str(self.s.kafka_retention_bytes),
            "log.segment.bytes": str(max(self.s.kafka_retention_bytes // 8, 1 << 20)),
            # the log cleaner's key buffer for the compacted topics (the model and control streams, a few thousand
            # keys): 128 MB of heap by default, held from boot; 16 MB holds ~600,000 keys a pass
            "log.cleaner.dedupe.buffer.size": str(16 << 20),
            # a single broker cannot meet the default replication factor of 3
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # a broker restarted after a crash waits until the controller expires its old session
            # (9 s by default): one local node can afford a short one
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "3000",
            # topics are declared in schemas/topics.py; a typo must not create a new one
            "auto.create.topics.enable": "false",
            # Flink's exactly-once sink keeps transactions open up to its timeout (15 min cap)
            "transaction.max.timeout.ms": "900000",
        }
        path = self.dir / "server.properties"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds passwords
        os.fchmod(fd, 0o600)  # written without them before
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            "appender.file.fileName = ${sys:kafka.logs.dir}/server.log\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
        )
        return path

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.s.kafka_heap}",
            "-Xms64m",  # the serial collector grows the heap only as live data needs (G1 took all of -Xmx at boot)
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dkafka.logs.dir={self.dir}",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            self.classpath,
            main_class,
            *args,
        ]

    def start(self) -> None:
        if proc := self.process():  # started earlier, maybe still booting
            _wait(self._answers, proc, 90, "Kafka", self.log)
            return
        _require_free(self.s.host, self.s.kafka_port, "Kafka", "MAILROOM_KAFKA_PORT")
        _require_free(self.s.host, self.s.kafka_controller_port, "the Kafka controller", "MAILROOM_KAFKA_CONTROLLER_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._set_aside_storage_without_users()
        if not (self.data / "meta.properties").exists():  # format storage once
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            out = subprocess.run(
                # an id may start with "-"; the operator's SCRAM user must exist before the broker can authenticate anyone
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(config),
                           "--add-scram", f"{SCRAM_MECHANISM}=[name={OPERATOR},password={self.s.kafka_password(OPERATOR)}]"),
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise StackError(f"Formatting Kafka storage failed:\n{out.stdout}\n{out.stderr}")
            (self.dir / SCRAM_FORMATTED).touch()
        with open(self.log, "ab") as log:
            popen = subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _record(self.pidfile, popen.pid)
        kafka_log = logging.getLogger("kafka")
        level = kafka_log.level
        kafka_log.setLevel(logging.CRITICAL)  # connection refused is expected while it boots
        try:
            _wait(self._answers, psutil.Process(popen.pid), 90, "Kafka", self.log)
        finally:
            kafka_log.setLevel(level)

    def _answers(self) -> bool:
        from kafka import KafkaAdminClient

        from mailroom.kafkautil import client_config

        if not accepts(self.s.host, self.s.kafka_port):  # an admin client waits up to 30 s for a broker that is not listening
            return False
        admin = KafkaAdminClient(**client_config(self.s, OPERATOR), request_timeout_ms=5000)
        try:
            return bool(admin.describe_cluster()["brokers"])
        finally:
            admin.close()

    def _set_aside_storage_without_users(self) -> None:
        """Storage formatted before authentication (an older run directory) has no SCRAM user, and KRaft cannot add
        the first one afterwards: move it aside (nothing is deleted) so that a new store is formatted with the operator."""
        if (self.data / "meta.properties").exists() and not (self.dir / SCRAM_FORMATTED).exists():
            aside = self.dir / f"data.before-authentication.{int(time.time())}"
            self.data.rename(aside)
            print(f"Kafka: {self.data} was formatted before authentication (no SCRAM users); moved to {aside}, "
                  "a new store is formatted and the topics created again", file=sys.stderr)

    def create_topics(self) -> list[str]:
        """Create the declared topics that do not exist yet (returning once each partition has a leader), every
        principal's user and the ACLs of schemas/access.py for this topic prefix; return the names of the topics created."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        from mailroom.kafkautil import await_leaders, client_config, ensure_access

        ensure_access(self.s)
        admin = KafkaAdminClient(**client_config(self.s, OPERATOR), request_timeout_ms=10000)
        try:
            existing = set(admin.list_topics())
            missing = [t for t in TOPICS if t.name(self.s.topic_prefix) not in existing]
            if missing:
                admin.create_topics(
                    [
                        NewTopic(
                            t.name(self.s.topic_prefix),
                            num_partitions=t.partitions,
                            replication_factor=1,
                            topic_configs=t.configs(),
                        )
                        for t in missing
                    ]
                )
                await_leaders(admin, [t.name(self.s.topic_prefix) for t in missing])
            return [t.name(self.s.topic_prefix) for t in missing]
        finally:
            admin.close()

    def where(self) -> str:
        return f"{self.s.bootstrap_servers} (controller {self.s.host}:{self.s.kafka_controller_port})"


# --- Redis -----------------------------------------------------------------------------------


class Redis(TrackedService):
    """Debian's redis-server on loopback, one ACL user per writer (`config.settings.REDIS_USERS`, the default user
    disabled), no persistence (a cache)."""

    name = "redis"

    def __init__(self, settings: Settings):
        super().__init__(settings, "redis.log")

    def start(self) -> None:
        if proc := self.process():
            import redis

            try:
                self._answers()
            except redis.exceptions.AuthenticationError:  # started before the ACL users (one password), or other passwords
                raise StackError(f"Redis (PID {proc.pid}) refuses the operator user: it runs with an older configuration. "
                                 "Run `mailroom stack down`, then `mailroom stack up`.") from None
            except redis.exceptions.RedisError:
                pass  # not answering yet
            _wait(self._answers, proc, 30, "Redis", self.log)
            return
        binary = shutil.which("redis-server")
        if not binary:
            raise StackError("redis-server is not installed. Run `make setup` (it installs Debian's redis-server).")
        _require_free(self.s.host, self.s.redis_port, "Redis", "MAILROOM_REDIS_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the passwords
        with os.fdopen(fd, "w") as fh:
            fh.write(
                f"bind {self.s.host}\nport {self.s.redis_port}\nprotected-mode yes\n"
                + "".join("user " + " ".join(rule) + "\n" for rule in self.s.redis_acl())  # the users; default off
                + f"dir {self.dir}\nlogfile {self.log}\ndaemonize no\n"
                'save ""\nappendonly no\n'  # a feature cache: Flink state is the source of truth
                "maxmemory 256mb\nmaxmemory-policy volatile-ttl\n"
            )
        popen = subprocess.Popen(
            [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True
        )
        _record(self.pidfile, popen.pid)
        _wait(self._answers, psutil.Process(popen.pid), 30, "Redis", self.log)

    def _answers(self) -> bool:
        client = self.s.redis_client("operator", socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def where(self) -> str:
        return f"{self.s.host}:{self.s.redis_port} (ACL users {', '.join(user[0] for user in self.s.redis_acl()[1:])}; default user off)"


# --- MLflow ----------------------------------------------------------------------------------


# no server-side job runner (GenAI judges and the like): eight huey worker processes, ~800 MB, unused here
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class MlflowServer(TrackedService):
    """`mlflow server` on loopback over the model registry's database and artifacts: the UI of every
    training run and model version, and the REST API."""

    name = "mlflow"

    def __init__(self, settings: Settings):
        super().__init__(settings, "mlflow.log")

    def command(self) -> list[str]:
        from models.registry import database_uri

        registry = self.s.registry_dir
        return [sys.executable, "-m", "mailroom.mlflow_server", "--registry", str(registry), "--backend-store-uri", database_uri(registry),
                "--default-artifact-root", str(registry / "artifacts"), "--host", self.s.host, "--port", str(self.s.mlflow_port),
                "--workers", "1"]

    def start(self) -> None:
        if proc := self.process():
            _wait(self._answers, proc, 60, "MLflow", self.log)
            return
        _require_free(self.s.host, self.s.mlflow_port, "the MLflow server", "MAILROOM_MLFLOW_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            popen = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, **SERVER_ENV})
        _record(self.pidfile, popen.pid)
        _wait(self._answers, psutil.Process(popen.pid), 90, "MLflow", self.log)

    def _answers(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(f"{self.s.mlflow_url}/health", timeout=3) as resp:
            return resp.status == 200

    def where(self) -> str:
        return f"UI + REST {self.s.mlflow_url} (registry {self.s.registry_dir})"


# --- Prometheus ------------------------------------------------------------------------------


class Prometheus(TrackedService):
    """Debian's Prometheus server on loopback: scrapes the targets registered under <run_dir>/prometheus/targets/
    and evaluates config/prometheus/alerts.yml; a week (at most 512 MB) of history."""

    name = "prometheus"

    def __init__(self, settings: Settings):
        super().__init__(settings, "prometheus.log")

    def command(self, binary: str) -> list[str]:
        return [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
                "--storage.tsdb.retention.time=7d", "--storage.tsdb.retention.size=512MB",
                f"--web.listen-address={self.s.host}:{self.s.prometheus_port}"]

    def start(self) -> None:
        if proc := self.process():
            _wait(self._answers, proc, 60, "Prometheus", self.log)
            return
        binary = shutil.which("prometheus")
        if not binary:
            raise StackError("The prometheus binary is missing: install Debian's prometheus: `make setup`.")
        _require_free(self.s.host, self.s.prometheus_port, "Prometheus", "MAILROOM_PROMETHEUS_PORT")
        write_prometheus_config(self.s, self.dir)
        with open(self.log, "ab") as log:
            popen = subprocess.Popen(self.command(binary), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        _record(self.pidfile, popen.pid)
        _wait(self._answers, psutil.Process(popen.pid), 60, "Prometheus", self.log)

    def _answers(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(f"{self.s.prometheus_url}/-/ready", timeout=3) as resp:
            return resp.status == 200

    def where(self) -> str:
        return f"UI + HTTP API {self.s.prometheus_url} (targets {self.dir / 'targets'})"


class DashboardService(TrackedService):
    """The dashboard page (`mailroom dashboard`) in the background, scraped by Prometheus on its own port;
    started by `mailroom run` (or `mailroom dashboard --background`), stopped by `stack down`."""

    name = "dashboard"

    def __init__(self, settings: Settings):
        super().__init__(settings, "dashboard.log")

    def start(self) -> None:
        if proc := self.process():
            _wait(self._answers, proc, 30, "the dashboard", self.log)
            return
        _require_free(self.s.host, self.s.dashboard_port, "the dashboard", "MAILROOM_DASHBOARD_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", "mailroom.dashboard"], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **self.s.as_env()})
        _record(self.pidfile, popen.pid)
        _wait(self._answers, psutil.Process(popen.pid), 60, "the dashboard", self.log)
        register_target(self.s, "dashboard", self.s.dashboard_port)

    def stop(self) -> bool:
        unregister_target(self.s, "dashboard")
        return super().stop()

    def _answers(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(f"{self.s.dashboard_url}/healthz", timeout=3) as resp:
            return resp.status == 200

    def where(self) -> str:
        return f"page {self.s.dashboard_url}/?token=... (token in {self.s.dashboard_token_file} unless MAILROOM_DASHBOARD_TOKEN)"


# --- Flink session cluster -------------------------------------------------------------------


class FlinkCluster:
    """A standalone Flink session cluster from pyflink's bin/: one JobManager and a declared number of TaskManager
    processes, each with a declared number of slots. `start` brings a running cluster back to that shape."""

    name = "flink"

    def __init__(self, settings: Settings, taskmanagers: int | None = None, slots: int | None = None):
        self.dir = settings.run_dir / "flink"
        self.conf_dir = self.dir / "conf"
        self.log_dir = self.dir / "log"
        self.plugins_dir = self.dir / "plugins"  # the loopback Prometheus reporter only, not the pip package's plugins/
        self.shape_file = self.dir / "shape.json"  # the shape the running cluster was declared with
        declared = self._declared()
        def pick(given: int | None, key: str, default: int) -> int:
            return given if given is not None else declared.get(key, default)

        shape = replace(settings, flink_taskmanagers=pick(taskmanagers, "taskmanagers", settings.flink_taskmanagers),
                        flink_slots=pick(slots, "slots", settings.flink_slots))
        if not 1 <= shape.flink_taskmanagers <= MAX_TASKMANAGERS:
            raise StackError(f"{shape.flink_taskmanagers} TaskManagers: give 1 to {MAX_TASKMANAGERS} (--taskmanagers, "
                             "MAILROOM_FLINK_TASKMANAGERS); each has a metrics port of its own in a range of that size")
        if shape.flink_slots < 1:
            raise StackError(f"{shape.flink_slots} slots per TaskManager: give at least 1 (--slots, MAILROOM_FLINK_SLOTS)")
        self.s = shape
        self.taskmanagers, self.slots = shape.flink_taskmanagers, shape.flink_slots

    def _declared(self) -> dict:
        try:
            return json.loads(self.shape_file.read_text()) if self._daemon_pids("standalonesession") else {}
        except (OSError, ValueError):
            return {}

    @property
    def env(self) -> dict:
        return {**os.environ, "FLINK_CONF_DIR": str(self.conf_dir), "FLINK_LOG_DIR": str(self.log_dir), "FLINK_PID_DIR": str(self.dir),
                "FLINK_PLUGINS_DIR": str(self.plugins_dir)}

    def _daemon_pids(self, kind: str) -> list[int]:
        """PIDs that Flink's daemon scripts wrote (flink-$USER-<kind>.pid; $USER may be unset); dead ones too."""
        return [int(x) for pidfile in self.dir.glob(f"flink-*-{kind}.pid") for x in pidfile.read_text().split()]

    def _live(self, kind: str) -> list[psutil.Process]:
        procs = []
        for pid in self._daemon_pids(kind):
            try:
                proc = psutil.Process(pid)
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and "java" in proc.name():
                    procs.append(proc)
            except psutil.Error:
                pass
        return procs

    def processes(self) -> list[psutil.Process]:
        return self._live("standalonesession") + self._live("taskexecutor")

    def taskmanager_processes(self) -> dict[int, psutil.Process]:
        """The live TaskManagers by index (their resource id is mailroom-tm-<index>)."""
        found = {}
        for proc in self._live("taskexecutor"):
            try:
                match = re.search(rf"taskmanager\.resource-id={TASKMANAGER_ID}(\d+)\b", " ".join(proc.cmdline()))
            except psutil.Error:
                continue
            found[int(match.group(1)) if match else MAX_TASKMANAGERS + len(found)] = proc
        return found

    def _forget_dead(self, kind: str) -> None:
        """Keep only live PIDs in the daemon script's pid file (it appends one per start and never drops a killed one)."""
        live = {p.pid for p in self._live(kind)}
        for pidfile in self.dir.glob(f"flink-*-{kind}.pid"):
            pidfile.write_text("".join(f"{pid}\n" for pid in map(int, pidfile.read_text().split()) if pid in live))

    def start(self) -> list[int]:
        """Start what is missing of the declared shape: the JobManager, then every missing TaskManager; stop any beyond it.
        Returns the indices of the TaskManagers it started."""
        home = flink_home()
        jobmanager = self._live("standalonesession")
        if jobmanager and self._declared().get("slots", self.slots) != self.slots:
            raise StackError(f"The session cluster runs with {self._declared()['slots']} slots per TaskManager, not {self.slots}: "
                             "`mailroom stack down` first to change the slots")
        if not jobmanager:
            _require_free(self.s.host, self.s.flink_rest_port, "the Flink REST API", "MAILROOM_FLINK_REST_PORT")
            _require_free(self.s.host, self.s.flink_rest_port + 1, "the Flink JobManager RPC (REST port + 1)", "MAILROOM_FLINK_REST_PORT")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            write_cluster_conf(self.s, self.conf_dir)
            try:
                write_plugins_dir(self.s, self.plugins_dir)
            except ConfigError as exc:
                raise StackError(str(exc)) from None
            # thread-mode Python needs flink-python in lib/, or a second job on the TaskManager fails (pemja)
            for jar in (home / "opt").glob("flink-python-*.jar"):
                if not (home / "lib" / jar.name).exists():
                    shutil.copy(jar, home / "lib" / jar.name)
            self._forget_dead("standalonesession")
            self._daemon("jobmanager.sh", "start", *jobmanager_dynamic_properties(self.s))
        self.shape_file.parent.mkdir(parents=True, exist_ok=True)
        self.shape_file.write_text(json.dumps({"taskmanagers": self.taskmanagers, "slots": self.slots}))
        running = self.taskmanager_processes()
        for index, proc in running.items():
            if index >= self.taskmanagers:
                _stop(proc)
        self._forget_dead("taskexecutor")
        missing = [index for index in range(self.taskmanagers) if index not in running]
        for index in missing:
            self._daemon("taskmanager.sh", "start", *self._taskmanager_properties(index))
        jm = self._live("standalonesession")
        _wait(self._in_shape, jm[0] if jm else None, 120, "Flink", self.log_dir)
        self.register_metrics()
        return missing

    def _taskmanager_properties(self, index: int) -> list[str]:
        """A TaskManager's fixed identity: its resource id (so `status` can tell them apart) and its own reporter port."""
        return ["-D", f"taskmanager.resource-id={TASKMANAGER_ID}{index}",
                "-D", f"{REPORTER_PORT}={metrics_port(self.s, 'taskmanager') + index}"]

    def _daemon(self, script: str, *args: str) -> None:
        out = subprocess.run(["bash", str(flink_home() / "bin" / script), *args], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise StackError(f"{script} {args[0]} failed:\n{out.stdout}\n{out.stderr}")

    def register_metrics(self) -> None:
        """Prometheus targets: the JobManager's reporter and each running TaskManager's port."""
        register_target(self.s, "jobmanager", metrics_port(self.s, "jobmanager"))
        register_target(self.s, "taskmanager", [metrics_port(self.s, "taskmanager") + i
                                                for i in sorted(self.taskmanager_processes()) if i < MAX_TASKMANAGERS])

    def rest(self, path: str, method: str = "GET", body: dict | None = None):
        """One call of the session cluster's REST API (JSON in and out; None for an empty answer)."""
        import urllib.request

        request = urllib.request.Request(f"{self.s.flink_rest_url}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def running_job(self, name: str, not_these: tuple[str, ...] = (), timeout_s: float = 300) -> str:
        """The id of the job `name` once all its tasks run (one not in `not_these`); StackError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for job in self.rest("/jobs/overview")["jobs"]:
                if job["name"] == name and job["state"] == "RUNNING" and job["tasks"]["running"] == job["tasks"]["total"] \
                        and job["jid"] not in not_these:
                    return job["jid"]
            time.sleep(1)
        raise StackError(f"{name} was not running on the session cluster after {timeout_s:.0f} s")

    def stop_with_savepoint(self, job: str, target_dir: Path, timeout_s: float = 300) -> str:
        """Stop `job` with a savepoint into `target_dir` (an operator's upgrade); return the savepoint's location."""
        trigger = self.rest(f"/jobs/{job}/stop", "POST", {"targetDirectory": target_dir.resolve().as_uri(), "drain": False})["request-id"]
        deadline = time.monotonic() + timeout_s
        while (state := self.rest(f"/jobs/{job}/savepoints/{trigger}"))["status"]["id"] != "COMPLETED":
            if time.monotonic() > deadline:
                raise StackError(f"the savepoint of job {job} did not complete within {timeout_s:.0f} s: {state}")
            time.sleep(1)
        if "failure-cause" in state["operation"]:
            raise StackError(f"the savepoint of job {job} failed: {state['operation']['failure-cause']}")
        return state["operation"]["location"]

    def job_taskmanagers(self, name: str) -> set[str]:
        """The resource ids of the TaskManagers the running job `name`'s subtasks are deployed on."""
        jid = self.running_job(name, timeout_s=30)
        vertices = self.rest(f"/jobs/{jid}")["vertices"]
        return {tm["taskmanager-id"] for vertex in vertices for tm in self.rest(f"/jobs/{jid}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]}

    def unfinished_jobs(self) -> list[dict]:
        """The session cluster's jobs that have not ended (REST /jobs/overview rows: jid, name, state, ...)."""
        return [job for job in self.rest("/jobs/overview")["jobs"] if job["state"] not in ("FINISHED", "CANCELED", "FAILED")]

    def cancel_all(self) -> None:
        """Cancel every job of the session cluster that has not ended."""
        for job in self.unfinished_jobs():
            self.rest(f"/jobs/{job['jid']}", method="PATCH")

    def registered(self) -> list[dict]:
        """The TaskManagers the JobManager has registered (REST /taskmanagers), by resource id."""
        return sorted(self.rest("/taskmanagers")["taskmanagers"], key=lambda tm: tm["id"])

    def _in_shape(self) -> bool:
        ids = {tm["id"] for tm in self.registered()}
        return all(f"{TASKMANAGER_ID}{i}" in ids for i in range(self.taskmanagers))

    def status(self) -> ServiceStatus:
        procs = self.processes()
        if not self._live("standalonesession"):
            return ServiceStatus(self.name, False, "not running" + (f" (TaskManagers {[p.pid for p in procs]} left)" if procs else ""),
                                 log=self.log_dir)
        try:
            registered = self.registered()
        except Exception as exc:
            return ServiceStatus(self.name, False, f"processes {[p.pid for p in procs]} run but REST does not answer: {exc}", procs[0].pid, self.log_dir)
        rss = sum(_rss_mb(p) or 0 for p in procs)
        shape = f"{len(registered)} of {self.taskmanagers} TaskManagers x {self.slots} slot(s)"
        if len(registered) < self.taskmanagers:
            shape += " (`mailroom stack up --flink` restores the shape)"
        return ServiceStatus(self.name, bool(registered), f"REST + web UI {self.s.flink_rest_url}, {shape}", procs[0].pid, self.log_dir,
                             round(rss, 1))

    def taskmanager_statuses(self) -> list[ServiceStatus]:
        """One row per declared or running TaskManager: registered or not, its slots and memory, its process."""
        try:
            registered = {tm["id"]: tm for tm in self.registered()}
        except Exception:
            registered = {}
        procs = self.taskmanager_processes()
        rows = []
        for index in sorted(set(range(self.taskmanagers)) | set(procs)):
            tm, proc = registered.get(f"{TASKMANAGER_ID}{index}"), procs.get(index)
            if tm:
                memory = tm.get("memoryConfiguration", {})
                detail = (f"slots {tm['slotsNumber']} ({tm['freeSlots']} free), process memory "
                          f"{memory.get('totalProcessMemory', 0) / 2**20:,.0f} MB (managed {memory.get('managedMemory', 0) / 2**20:,.0f} MB), "
                          f"metrics :{metrics_port(self.s, 'taskmanager') + index}")
            else:
                detail = "not registered" if proc else "not running (`mailroom stack up --flink` starts it)"
            rows.append(ServiceStatus(f"taskmanager {index}", bool(tm and proc), detail, proc.pid if proc else None, self.log_dir, _rss_mb(proc)))
        return rows

    def stop(self) -> bool:
        procs = self.processes()
        for script in ("taskmanager.sh", "jobmanager.sh"):
            subprocess.run(["bash", str(flink_home() / "bin" / script), "stop-all"], env=self.env, capture_output=True)
        for proc in procs:
            if proc.is_running():
                _stop(proc)
        for kind in ("standalonesession", "taskexecutor"):
            self._forget_dead(kind)
        self.shape_file.unlink(missing_ok=True)
        for target in ("taskmanager", "jobmanager"):
            unregister_target(self.s, target)
        return bool(procs)


# --- the stack as a whole --------------------------------------------------------------------


class Stack:
    """Kafka, Redis, the MLflow server and Prometheus always; the Flink session cluster on request."""

    def __init__(self, settings: Settings, taskmanagers: int | None = None, slots: int | None = None):
        self.settings = settings
        self.kafka = Kafka(settings)
        self.redis = Redis(settings)
        self.mlflow = MlflowServer(settings)
        self.prometheus = Prometheus(settings)
        self.flink = FlinkCluster(settings, taskmanagers, slots)  # the shape: given, else the running cluster's, else settings
        self.dashboard = DashboardService(settings)  # started by `mailroom run`, not by `up`

    def up(self, with_flink: bool = False) -> dict:
        """Start what is missing (with Flink: also the TaskManagers missing from its declared shape); return what was
        started and which topics were created."""
        started = []
        for service in (self.redis, self.kafka, self.mlflow, self.prometheus):
            if not service.status().running:
                service.start()
                started.append(service.name)
        if with_flink:
            was_up = self.flink.status().running
            again = self.flink.start()  # idempotent: starts only what the shape misses
            started += [f"taskmanager {i}" for i in again] if was_up else [self.flink.name]
        created = self.kafka.create_topics()
        return {"started": started, "topics_created": created}

    def repair(self) -> list[str]:
        """Start again what crashed (a service `up` started that is gone without `down`) and the TaskManagers missing
        from a running session cluster's declared shape; return what was started. What `down` stopped stays down."""
        started = []
        for service in (self.redis, self.kafka, self.mlflow, self.prometheus, self.dashboard):
            if service.crashed():
                service.start()
                started.append(service.name)
        if self.flink.status().running and len(self.flink.taskmanager_processes()) < self.flink.taskmanagers:
            started += [f"taskmanager {i}" for i in self.flink.start()]
        return started

    def down(self) -> list[str]:
        return [s.name for s in (self.dashboard, self.flink, self.prometheus, self.mlflow, self.kafka, self.redis) if s.stop()]

    def status(self) -> list[ServiceStatus]:
        """Each service, checked for real; with the session cluster up, one row per TaskManager after it."""
        flink = self.flink.status()
        return [self.kafka.status(), self.redis.status(), self.mlflow.status(), self.prometheus.status(), self.dashboard.status(),
                flink, *(self.flink.taskmanager_statuses() if flink.running else [])]
