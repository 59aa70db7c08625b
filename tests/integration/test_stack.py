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
    wrong = redis.Redis(host=test_settings.host, port=test_settings.redis_port, password="not-the-password")
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    client = test_settings.redis_client()
    assert client.set("mailroom:test:auth", "ok", ex=60)
    assert client.get("mailroom:test:auth") == b"ok"


def test_services_listen_on_loopback_only(stack, test_settings):
    ports = {test_settings.kafka_port, test_settings.kafka_controller_port, test_settings.redis_port, test_settings.prometheus_port}
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
    assert set(listening) == ports
    assert all(ipaddress.ip_address(ip).is_loopback for ip in listening.values()), listening
