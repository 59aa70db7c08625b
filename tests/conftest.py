"""Shared fixtures. Tests run their own stack on their own ports and run directory, so they
never touch a stack started by `make run`; each test uses uniquely named topics."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from config.settings import PROJECT_DIR, Settings

LAYERS = {"unit": None, "flink": "flink", "integration": "integration"}


def pytest_collection_modifyitems(items):
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if LAYERS.get(layer):
            item.add_marker(getattr(pytest.mark, LAYERS[layer]))


@pytest.fixture(scope="session")
def test_settings() -> Settings:
    """Settings for the test stack: ports and run directory of its own. MAILROOM_TEST_PORT_OFFSET
    (default 0) moves every port, so two checkouts can run their tests at the same time."""
    offset = int(os.environ.get("MAILROOM_TEST_PORT_OFFSET", "0"))
    return Settings.from_env(
        {},
        run_dir=PROJECT_DIR / ".run" / "test",
        kafka_port=29192 + offset,
        kafka_controller_port=29193 + offset,
        redis_port=26479 + offset,
        flink_rest_port=28181 + offset,
        mlflow_port=25100 + offset,
        prometheus_port=29190 + offset,
        metrics_port=29350 + offset,
        dashboard_port=28100 + offset,
    )


@pytest.fixture(scope="session")
def stack(test_settings):
    """Kafka + Redis for the whole session, stopped at the end."""
    from mailroom.stack import Stack

    running = Stack(test_settings)
    if not running.prometheus.status().running:
        # Prometheus keeps an earlier session's series for its 5-minute look-back (no staleness marks across a
        # restart): start from an empty database, so that queries see this session's jobs only
        shutil.rmtree(test_settings.run_dir / "prometheus" / "data", ignore_errors=True)
    running.up()
    yield running
    running.down()


@pytest.fixture
def topics(stack, test_settings):
    """A factory of fresh, uniquely named topics, deleted after the test."""
    from mailroom.kafkautil import delete_topics, ensure_topics, grant_topics
    from schemas.access import JOB_PRINCIPALS

    made: list[str] = []

    def make(name: str, partitions: int = 1) -> str:
        topic = f"test.{name}.{uuid.uuid4().hex[:8]}"
        ensure_topics(test_settings, [topic], partitions)
        # jobs run on ad-hoc topics as their own principals: grant them these topics (the declared ones have ACLs of their own)
        grant_topics(test_settings, [topic], list(JOB_PRINCIPALS))
        made.append(topic)
        return topic

    yield make
    if made:
        delete_topics(test_settings, made)


@pytest.fixture(scope="session")
def registry(test_settings):
    """A registry with text, scan and image champions, trained (quick) for this test session."""
    import shutil
    import subprocess

    path = test_settings.run_dir / "registry"
    shutil.rmtree(path, ignore_errors=True)
    out = subprocess.run([test_settings.python_executable, "-m", "mailroom.cli", "train", "--quick", "-n", "1500", "--no-real",
                          "--no-progress", "--registry", str(path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    from mailroom.stack import MlflowServer

    server = MlflowServer(test_settings)
    if path == test_settings.registry_dir and server.process():  # the test stack's server has the replaced database open
        server.stop()
        server.start()
    return path


@pytest.fixture
def pipeline_settings(stack, test_settings, registry):
    """Settings whose topic prefix is unique to the test: every declared topic, fresh."""
    from dataclasses import replace

    from mailroom.kafkautil import admin, revoke
    from mailroom.stack import Kafka

    settings = replace(test_settings, topic_prefix=f"t{uuid.uuid4().hex[:8]}.", registry_dir=registry)
    Kafka(settings).create_topics()
    yield settings
    client = admin(settings)
    try:
        client.delete_topics([t for t in client.list_topics() if t.startswith(settings.topic_prefix)])
    finally:
        client.close()
    revoke(settings, lambda resource: resource.startswith(settings.topic_prefix))
