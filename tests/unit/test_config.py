"""Settings, topic declarations, Flink configuration and docker-compose.yml, without a JVM."""

from __future__ import annotations

import re

import pytest
import yaml

from config.flinkconf import base_config, cluster_config, job_config
from config.settings import ENV_VARS, PROJECT_DIR, REDIS_USERS, ConfigError, Settings
from mailroom.stack import SERVER_ENV
from schemas.labels import DEPARTMENTS, LABELS
from schemas.topics import TOPICS, department_topic_key, topic_name


def test_environment_overrides_defaults(tmp_path):
    s = Settings.from_env({"MAILROOM_KAFKA_PORT": "29092", "MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_REDIS_PASSWORD": "pw"})
    assert s.kafka_port == 29092 and s.bootstrap_servers == "127.0.0.1:29092"
    assert s.run_dir == tmp_path and s.redis_password == "pw"


def test_every_setting_names_its_environment_variable():
    source = (PROJECT_DIR / "config" / "settings.py").read_text()
    for field, var in ENV_VARS.items():
        assert re.search(rf"^\s+{field}: .*# {var}", source, re.M), f"{field} has no comment naming {var}"


def test_bad_port_says_which_variable(tmp_path):
    with pytest.raises(ConfigError, match="MAILROOM_REDIS_PORT"):
        Settings.from_env({"MAILROOM_REDIS_PORT": "six", "MAILROOM_RUN_DIR": str(tmp_path)})


def test_generated_redis_password_is_stable_and_private(tmp_path):
    first = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)})
    second = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)})
    assert len(first.redis_password) >= 24 and first.redis_password == second.redis_password
    assert (tmp_path / "redis.password").stat().st_mode & 0o077 == 0


def test_every_redis_user_has_its_own_stable_private_password(tmp_path):
    first, second = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)}), Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)})
    passwords = {user: first.redis_password_of(user) for user in REDIS_USERS}
    assert passwords == {user: second.redis_password_of(user) for user in REDIS_USERS}
    assert len(set(passwords.values())) == len(REDIS_USERS) and all(len(p) >= 24 for p in passwords.values())
    assert (tmp_path / "redis_user_passwords").stat().st_mode & 0o077 == 0
    given = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_REDIS_DASHBOARD_PASSWORD": "dpw"})
    assert given.redis_password_of("dashboard") == "dpw" and given.redis_password_of("scoring") == passwords["scoring"]
    acl = {rule[0]: rule for rule in first.redis_acl()}
    assert acl["default"][:2] == ["default", "off"] and set(acl) == {"default", *REDIS_USERS}
    assert "%R~mailroom:*" in acl["dashboard"] and "+@write" not in acl["dashboard"]
    assert "~mailroom:features:*" in acl["scoring"] and "~*" not in acl["scoring"]


def test_generated_dashboard_token_is_stable_and_private(tmp_path):
    s = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)})
    token = s.dashboard_secret()
    assert len(token) >= 24 and token == Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)}).dashboard_secret()
    assert s.dashboard_token_file.stat().st_mode & 0o077 == 0 and s.dashboard_login_url.endswith(f"/?token={token}")
    assert Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_DASHBOARD_TOKEN": "t"}).dashboard_secret() == "t"


def test_topics_are_declared_once_and_cover_every_department():
    names = [t.name("mailroom.") for t in TOPICS]
    assert len(names) == len(set(names))
    assert set(DEPARTMENTS) == set(LABELS)
    for label in LABELS:
        assert department_topic_key(label) in {t.key for t in TOPICS}
    for key in ("documents", "routed_text", "routed_scans", "dead_letters", "predictions", "ground_truth", "metrics"):
        assert topic_name(key, "x.").startswith("x.")
    assert all(t.partitions >= 1 and (t.retention_ms > 0 or t.compacted) for t in TOPICS)
    control = next(t for t in TOPICS if t.key == "model_control")
    assert control.partitions == 1 and control.configs()["cleanup.policy"] == "compact"  # one ordered, kept-forever state


def test_every_flink_setting_has_a_comment_saying_why():
    lines = (PROJECT_DIR / "flink-conf" / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            group_start = i
            while group_start > 0 and lines[group_start - 1] and not lines[group_start - 1].startswith("#"):
                group_start -= 1  # consecutive keys of one setting share the comment above them
            assert group_start > 0 and lines[group_start - 1].startswith("#"), f"no comment above: {line}"


def test_job_and_cluster_config(tmp_path):
    s = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_REDIS_PASSWORD": "pw"})
    base = base_config(s)
    assert base["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert {"state.backend.type", "python.execution-mode", "python.fn-execution.bundle.size"} <= set(base)
    job = job_config(s)
    assert job["python.executable"] == s.python_executable
    assert job["execution.checkpointing.dir"].startswith("file://")
    cluster = cluster_config(s)
    for key in ("rest.bind-address", "jobmanager.bind-host", "taskmanager.bind-host", "rest.address"):
        assert cluster[key] == "127.0.0.1", key
    assert cluster["rest.port"] == str(s.flink_rest_port)
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in cluster["env.java.opts.all"]  # Java 17


def _compose() -> dict:
    return yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())


def test_compose_has_the_stack_on_the_projects_loopback_ports(tmp_path):
    compose, s = _compose(), Settings.from_env({"MAILROOM_REDIS_PASSWORD": "x", "MAILROOM_RUN_DIR": str(tmp_path)})
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "jobmanager", "taskmanager", "mlflow", "prometheus"}
    assert all(svc.get("network_mode") == "host" and "ports" not in svc for svc in services.values())

    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka["KAFKA_LISTENERS"] == f"SASL_PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}"
    # the same authentication and authorisation as the broker `mailroom stack up` configures
    from mailroom.stack import Kafka

    (tmp_path / "kafka").mkdir()
    props = dict(line.split("=", 1) for line in Kafka(s)._write_config().read_text().splitlines())
    for key in ("listener.security.protocol.map", "inter.broker.listener.name", "sasl.enabled.mechanisms",
                "sasl.mechanism.inter.broker.protocol", "sasl.mechanism.controller.protocol", "authorizer.class.name",
                "allow.everyone.if.no.acl.found", "super.users", "listener.name.controller.sasl.enabled.mechanisms"):
        env = "KAFKA_" + key.replace("_", "__").replace("-", "___").replace(".", "_").upper()
        assert str(kafka[env]) == props[key], key
    assert 'username="operator"' in kafka["KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
    assert str(kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "1"
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    pom = (PROJECT_DIR / "mailroom" / "jvm" / "pom.xml").read_text()
    kafka_version = re.search(r"<kafka.version>(.+)</kafka.version>", pom).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version}"

    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--bind") + 1] == s.host
    assert redis_cmd[redis_cmd.index("--port") + 1] == str(s.redis_port)
    assert "--requirepass" not in redis_cmd
    starts = [i for i, word in enumerate(redis_cmd) if word == "--user"]  # the ACL users, as redis.conf's `user` lines
    users = [redis_cmd[i + 1:j] for i, j in zip(starts, starts[1:] + [redis_cmd.index("--save")])]
    expected = Settings(**{field: "PW" for field in ENV_VARS if field.startswith("redis_") and field.endswith("_password")}).redis_acl()

    def password_var(user: str) -> str:
        return ENV_VARS["redis_password" if user == "operator" else f"redis_{user}_password"]

    assert [[">PW" if u[0] != "default" and w == f">${{{password_var(u[0])}:?set {password_var(u[0])}}}" else w for w in u]
            for u in users] == expected
    assert expected[0][:2] == ["default", "off"]


def test_compose_formats_kafka_with_the_operator_and_reads_exactly_the_secrets_stack_env_prints(tmp_path):
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["entrypoint"] == ["bash", "-c"]
    script = kafka["command"][0]
    # the image's own configure and launch, with the storage formatted with the first SCRAM user between them
    steps = [step.strip() for step in script.split("&&")]
    assert steps[2] == "/etc/kafka/docker/configure" and steps[-1] == "exec /etc/kafka/docker/launch"
    assert "--ignore-formatted" in steps[3] and "-c /etc/kafka/kafka.properties" in steps[3]
    from mailroom.stack import SCRAM_MECHANISM

    assert f'--add-scram "{SCRAM_MECHANISM}=[name=operator,password=$$MAILROOM_KAFKA_OPERATOR_PASSWORD]"' in steps[3]
    assert kafka["environment"]["MAILROOM_KAFKA_OPERATOR_PASSWORD"].startswith("${MAILROOM_KAFKA_OPERATOR_PASSWORD:?")

    s = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)})
    printed = s.compose_env()
    required = set(re.findall(r"\$\{(MAILROOM_[A-Z_]+):\?", (PROJECT_DIR / "docker-compose.yml").read_text()))
    assert required == set(printed)
    assert printed["MAILROOM_KAFKA_OPERATOR_PASSWORD"] == s.kafka_password("operator")
    assert printed["MAILROOM_REDIS_DASHBOARD_PASSWORD"] == s.redis_password_of("dashboard")
    assert len(set(printed.values())) == len(printed)  # a secret of its own each


def test_stack_env_prints_shell_exports(tmp_path, capsys, monkeypatch):
    import shlex

    from mailroom import cli

    monkeypatch.setenv("MAILROOM_RUN_DIR", str(tmp_path))
    assert cli.main(["stack", "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    exported = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert exported == Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path)}).compose_env()


def test_compose_mlflow_serves_the_registry_on_loopback_with_the_locked_mlflow():
    svc, s = _compose()["services"]["mlflow"], Settings.from_env({"MAILROOM_REDIS_PASSWORD": "x"})
    lock = (PROJECT_DIR / "requirements.lock").read_text()
    mlflow_pin = re.search(r"^mlflow==(.+)$", lock, re.M).group(1)
    assert "-c /tmp/requirements.lock" in svc["build"]["dockerfile_inline"] and svc["image"] == f"mailroom-mlflow:{mlflow_pin}"
    command = svc["command"]
    assert command[:2] == ["mlflow", "server"] and command[command.index("--host") + 1] == s.host
    assert command[command.index("--port") + 1] == str(s.mlflow_port)
    registry = "${PWD}/.run/registry"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{registry}/mlflow.db"  # sqlite, no file store
    assert command[command.index("--default-artifact-root") + 1] == f"{registry}/artifacts"
    assert svc["volumes"] == [f"./.run/registry:{registry}"] and s.registry_dir == PROJECT_DIR / ".run" / "registry"
    assert svc["environment"] == SERVER_ENV


def test_compose_flink_runs_python_jobs_with_the_projects_config():
    services = _compose()["services"]
    lock = (PROJECT_DIR / "requirements.lock").read_text()
    for name in ("jobmanager", "taskmanager"):
        svc = services[name]
        dockerfile = svc["build"]["dockerfile_inline"]
        assert "requirements.lock" in dockerfile and "openjdk-17-jdk-headless" in dockerfile  # javac: mailroom.jars builds the reporter
        assert "python -m mailroom.jars" in dockerfile
        assert svc["environment"]["FLINK_PLUGINS_DIR"] == "/opt/mailroom/.run/flink/plugins"  # what python -m config.flinkconf writes
        assert all(f"tesseract-ocr-{lang}" in dockerfile for lang in ("eng", "deu", "fra"))  # the scan reader's engine and data
        assert "tesserocr==" in lock
        assert "apache-flink==2.2.1" in lock and svc["image"].endswith(":2.2.1")
        assert "./flink-conf/config.yaml:/opt/mailroom/flink-conf/config.yaml:ro" in svc["volumes"]
        assert "python -m config.flinkconf" in svc["command"][-1]
        assert f"{'jobmanager' if name == 'jobmanager' else 'taskmanager'}.sh start-foreground" in svc["command"][-1]
    assert set(_compose()["volumes"]) == {"kafka-data", "flink-state", "prometheus-data"}


def test_compose_prometheus_reads_the_generated_config_and_the_rules_on_loopback():
    from config.monitoring import ALERT_RULES, prometheus_config

    svc, s = _compose()["services"]["prometheus"], Settings.from_env({"MAILROOM_REDIS_PASSWORD": "x"})
    assert svc["image"] == "prom/prometheus:v2.42.0"  # Debian bookworm's version, which `mailroom stack up` runs
    assert f"--web.listen-address={s.host}:{s.prometheus_port}" in svc["command"]
    assert "--config.file=${PWD}/.run/prometheus/prometheus.yml" in svc["command"]
    assert {"./.run/prometheus:${PWD}/.run/prometheus:ro", "./config/prometheus:${PWD}/config/prometheus:ro"} <= set(svc["volumes"])
    assert prometheus_config(s)["rule_files"] == [str(ALERT_RULES)] and ALERT_RULES.parent == PROJECT_DIR / "config" / "prometheus"


def test_the_mlflow_server_serves_the_registry_database_on_loopback(tmp_path):
    from mailroom.stack import MlflowServer

    s = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_REDIS_PASSWORD": "pw", "MAILROOM_MLFLOW_PORT": "25123"})
    command = MlflowServer(s).command()
    assert command[1:5] == ["-m", "mailroom.mlflow_server", "--registry", str(tmp_path / "registry")]  # prepared, then one process
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    assert command[command.index("--default-artifact-root") + 1] == str(tmp_path / "registry" / "artifacts")
    assert (command[command.index("--host") + 1], command[command.index("--port") + 1]) == ("127.0.0.1", "25123")
    assert s.mlflow_url == "http://127.0.0.1:25123"


def test_another_run_directory_keeps_the_stacks_secrets(tmp_path):
    s = Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path / "stack")})
    before = {p: s.kafka_password(p) for p in ("operator", "router")}
    moved = s.with_run_dir(tmp_path / "bench")
    assert moved.run_dir == tmp_path / "bench" and {p: moved.kafka_password(p) for p in before} == before
    assert moved.redis_password_of("scoring") == s.redis_password_of("scoring") and moved.redis_password == s.redis_password
    assert "kafka_passwords" not in repr(moved) and before["operator"] not in repr(moved)
