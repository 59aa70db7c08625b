"""The smoke job through the real stack: Kafka -> PyFlink (Python touching Redis) -> Kafka."""

from __future__ import annotations

import os
import uuid


from mailroom.kafkautil import producer, read_topic
from mailroom.stack import FlinkCluster
from mailroom.submit import run_job
from schemas.redis_keys import smoke_counter_key


def _round_trip(settings, topics, cluster: bool) -> None:
    source, sink = topics("smoke-in", partitions=2), topics("smoke-out", partitions=2)
    run_id = uuid.uuid4().hex[:8]
    sent = [f"{i}:".encode() + os.urandom(i % 300) for i in range(500)]
    prod = producer(settings)
    for value in sent:
        prod.send(source, value)
    prod.flush()
    prod.close()

    result = run_job(settings, "tests.jobs.smoke", ["--input", source, "--output", sink, "--run-id", run_id], cluster=cluster, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]

    received = [r.value for r in read_topic(settings, sink, min_count=len(sent))]
    assert len(received) == len(sent)  # once: no duplicates, none lost
    assert sorted(received) == sorted(sent)  # unchanged, byte for byte
    assert int(settings.redis_client().get(smoke_counter_key(run_id))) == len(sent)


def test_smoke_job_on_minicluster(stack, test_settings, topics):
    _round_trip(test_settings, topics, cluster=False)


def test_smoke_job_on_session_cluster(stack, test_settings, topics):
    cluster = FlinkCluster(test_settings)
    cluster.start()
    try:
        status = cluster.status()
        assert status.running, status.detail
        _round_trip(test_settings, topics, cluster=True)
    finally:
        cluster.stop()
    assert not cluster.status().running
