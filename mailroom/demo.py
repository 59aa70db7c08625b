"""What `make run` shows: the stack up and a job end to end on the embedded MiniCluster."""

from __future__ import annotations

import os
import time
import uuid

from mailroom.kafkautil import delete_topics, ensure_topics, producer, read_topic
from mailroom.settings import Settings
from mailroom.stack import Stack
from mailroom.submit import run_job


def smoke(settings: Settings, count: int = 200, cluster: bool = False, keep_topics: bool = False) -> dict:
    """Produce `count` random messages, run the smoke job, read them back and compare."""
    run_id = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"{settings.topic_prefix}smoke.{run_id}.in", f"{settings.topic_prefix}smoke.{run_id}.out"
    ensure_topics(settings, [topic_in, topic_out], partitions=2)
    sent = [os.urandom(16 + i % 512) for i in range(count)]
    prod = producer(settings)
    for value in sent:
        prod.send(topic_in, value)
    prod.flush()
    prod.close()

    started = time.monotonic()
    result = run_job(settings, "jobs.smoke", ["--input", topic_in, "--output", topic_out, "--run-id", run_id], cluster=cluster, timeout=600)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"smoke job failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    received = [r.value for r in read_topic(settings, topic_out, min_count=count)]
    client = settings.redis_client()
    counted = int(client.get(f"mailroom:smoke:{run_id}") or 0)
    client.close()
    if not keep_topics:
        delete_topics(settings, [topic_in, topic_out])
    return {
        "run_id": run_id,
        "sent": len(sent),
        "received": len(received),
        "unchanged_once": sorted(received) == sorted(sent),
        "redis_count": counted,
        "job_seconds": round(elapsed, 1),
        "where": "session cluster" if cluster else "embedded MiniCluster",
    }


def run(settings: Settings, count: int = 200, cluster: bool = False) -> dict:
    state = Stack(settings).up(with_flink=cluster)
    return {"stack": state, "smoke": smoke(settings, count, cluster)}
