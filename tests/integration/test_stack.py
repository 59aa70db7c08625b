"""The stack through its real processes: lifecycle, truthful status, Redis auth, port clashes."""

from __future__ import annotations

import ipaddress
import os
import socket

import psutil
import pytest
import redis

from config.settings import Settings
from mailroom.stack import Stack, StackError
from schemas.topics import TOPICS


@pytest.fixture
def own_stack(tmp_path):
    """A second, private stack (own ports, own run dir) that a test may break."""
    offset = int(os.environ.get("MAILROOM_TEST_PORT_OFFSET", "0"))  # as the test stack's (tests/conftest.py)
    settings = Settings.from_env({}, run_dir=tmp_path / "run", kafka_port=29292 + offset, kafka_controller_port=29293 + offset,
                                 redis_port=26579 + offset, flink_rest_port=28281 + offset, mlflow_port=25200 + offset,
                                 prometheus_port=29290 + offset, metrics_port=29450 + offset)
    stack = Stack(settings)
    yield stack
    stack.down()


def _state(stack: Stack) -> dict[str, bool]:
    return {s.name: s.running for s in stack.status()}


def test_up_twice_status_kill_down(own_stack):
    first = own_stack.up()
    assert set(first["started"]) == {"kafka", "redis", "mlflow", "prometheus"}
    assert set(first["topics_created"]) == {t.name(own_stack.settings.topic_prefix) for t in TOPICS}
    pids = {s.name: s.pid for s in own_stack.status()}

    second = own_stack.up()  # idempotent: nothing started, nothing created, same processes
    assert second == {"started": [], "topics_created": []}
    assert {s.name: s.pid for s in own_stack.status()} == pids
    assert _state(own_stack) == {"kafka": True, "redis": True, "mlflow": True, "prometheus": True, "dashboard": False, "flink": False}

    psutil.Process(pids["kafka"]).kill()  # a broker that died must show as down
    psutil.Process(pids["kafka"]).wait(10)
    assert _state(own_stack)["kafka"] is False
    assert _state(own_stack)["redis"] is True

    assert own_stack.up()["started"] == ["kafka"]  # up restarts only what is missing
    assert _state(own_stack) == {"kafka": True, "redis": True, "mlflow": True, "prometheus": True, "dashboard": False, "flink": False}

    stopped = own_stack.down()
    assert set(stopped) == {"kafka", "redis", "mlflow", "prometheus"}
    assert _state(own_stack) == {"kafka": False, "redis": False, "mlflow": False, "prometheus": False, "dashboard": False, "flink": False}
    assert not psutil.pid_exists(pids["redis"]) or psutil.Process(pids["redis"]).status() == psutil.STATUS_ZOMBIE


def test_down_leaves_foreign_processes_alone(own_stack):
    assert own_stack.down() == []  # nothing started: nothing stopped, no error


def test_taken_port_is_named(own_stack):
    port = own_stack.settings.redis_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError, match=f"Port {port} .*MAILROOM_REDIS_PORT"):
            own_stack.up()


def test_redis_requires_the_password(stack, test_settings):
    anonymous = redis.Redis(host=test_settings.host, port=test_settings.redis_port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.set("mailroom:test:anon", "x")
    wrong = redis.Redis(host=test_settings.host, port=test_settings.redis_port, username="operator", password="not-the-password")
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    client = test_settings.redis_client()
    assert client.set("mailroom:test:auth", "ok", ex=60)
    assert client.get("mailroom:test:auth") == b"ok"


def test_the_default_user_cannot_log_in(stack, test_settings):
    for password in (test_settings.redis_password, "", "anything"):  # AUTH <password> is the default user's login
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=test_settings.host, port=test_settings.redis_port, password=password or None).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=test_settings.host, port=test_settings.redis_port, username="default", password=test_settings.redis_password).ping()


def test_each_redis_user_writes_only_its_namespace(stack, test_settings):
    from schemas.redis_keys import ACCURACY_NAMESPACE, FEATURES_NAMESPACE, SHADOW_NAMESPACE

    operator = test_settings.redis_client()
    operator.hset(f"{ACCURACY_NAMESPACE}:acl-test:1", mapping={"accuracy": "0.9"})
    operator.expire(f"{ACCURACY_NAMESPACE}:acl-test:1", 60)
    dashboard = test_settings.redis_client("dashboard")
    assert dashboard.hgetall(f"{ACCURACY_NAMESPACE}:acl-test:1") == {b"accuracy": b"0.9"}  # reads, as the page does
    assert f"{ACCURACY_NAMESPACE}:acl-test:1".encode() in set(dashboard.scan_iter(match=f"{ACCURACY_NAMESPACE}:*"))
    for write in (lambda c: c.hset(f"{ACCURACY_NAMESPACE}:acl-test:1", "accuracy", "1"), lambda c: c.set(f"{FEATURES_NAMESPACE}:x", "1"),
                  lambda c: c.delete(f"{ACCURACY_NAMESPACE}:acl-test:1"), lambda c: c.flushall(), lambda c: c.config_get("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write(dashboard)

    scoring, accuracy = test_settings.redis_client("scoring"), test_settings.redis_client("accuracy")
    assert scoring.set(f"{FEATURES_NAMESPACE}:acl-test", "1", ex=60) and scoring.get(f"{FEATURES_NAMESPACE}:acl-test") == b"1"
    for key in (f"{ACCURACY_NAMESPACE}:acl-test:1", f"{SHADOW_NAMESPACE}:acl-test", "mailroom:smoke:acl-test", "other"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            scoring.set(key, "1", ex=60)
    assert accuracy.set(f"{SHADOW_NAMESPACE}:acl-test", "1", ex=60) and accuracy.hset(f"{ACCURACY_NAMESPACE}:acl-test:1", "n", "1") == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        accuracy.set(f"{FEATURES_NAMESPACE}:acl-test", "2")
    for client in (scoring, accuracy, test_settings.redis_client("smoke")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
    assert operator.get(f"{FEATURES_NAMESPACE}:acl-test") == b"1"


def test_services_listen_on_loopback_only(stack, test_settings):
    ports = {test_settings.kafka_port, test_settings.kafka_controller_port, test_settings.redis_port, test_settings.prometheus_port}
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
    assert set(listening) == ports
    assert all(ipaddress.ip_address(ip).is_loopback for ip in listening.values()), listening


def test_services_started_elsewhere_with_our_secrets_count_as_running(stack, test_settings, tmp_path):
    """As with docker compose: the services run, started by someone else (here: the test stack, seen from another run
    directory), with the secrets `mailroom stack env` gives. `status` reports them up, `up` starts nothing twice and
    creates the topics and grants, `down` leaves them alone."""
    import json
    from dataclasses import replace

    from schemas.access import principals

    given = test_settings.compose_env()
    # every principal's password as the test stack's (`up` sets each user's SCRAM credentials from them)
    elsewhere = Settings.from_env(
        {"MAILROOM_KAFKA_PASSWORDS": json.dumps({p: test_settings.kafka_password(p) for p in principals()}),
         **{name: value for name, value in given.items() if name.startswith("MAILROOM_REDIS")}},
        run_dir=tmp_path / "elsewhere")
    elsewhere = replace(elsewhere, **{f: getattr(test_settings, f) for f in (
        "kafka_port", "kafka_controller_port", "redis_port", "mlflow_port", "prometheus_port", "flink_rest_port", "dashboard_port")})
    other = Stack(elsewhere)
    statuses = {s.name: s for s in other.status()}
    for name in ("kafka", "redis", "mlflow", "prometheus"):
        assert statuses[name].running and statuses[name].pid is None, statuses[name]
        assert "not started by mailroom" in statuses[name].detail
    assert other.up()["started"] == []
    assert other.down() == [] and all(s.running for s in stack.status() if s.name in ("kafka", "redis", "mlflow", "prometheus"))


def test_the_broker_bounds_each_partition_on_disk(stack, test_settings):
    """The broker applies the retention cap to every topic (its disk: topics x partitions x (cap + a segment))."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from mailroom.kafkautil import admin
    from schemas.topics import topic_name

    client = admin(test_settings)
    try:
        topic = topic_name("documents", test_settings.topic_prefix)
        described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        [configs] = [entries for by_name in described.values() for entries in by_name.values()]
    finally:
        client.close()
    assert int(configs["retention.bytes"]["value"]) == test_settings.kafka_retention_bytes
    assert int(configs["segment.bytes"]["value"]) == test_settings.kafka_retention_bytes // 8
