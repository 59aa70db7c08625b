"""`mailroom bench` on the real stack: the peer joins its group knowing its partitions, created topics take writes
at once, and the scoring job runs spread over two TaskManager processes."""

from __future__ import annotations

import json
import os
import re
import subprocess

import psutil
from kafka import KafkaProducer

from mailroom.bench.peer import _joined_consumer
from mailroom.kafkautil import client_config
from schemas.topics import BY_KEY, TOPICS, topic_name


def test_a_peer_process_is_given_every_partition_when_it_first_joins(pipeline_settings, capsys):
    """kafka-python's first assignment held no partitions when the consumer joined before its topics' metadata came
    (the bench's peer then received nothing for 5 minutes when the refresh was lost): the first assignment the
    group hands out must hold every partition of both routed topics."""
    topics = [topic_name(key, pipeline_settings.topic_prefix) for key in ("routed_text", "routed_scans")]
    consumer = _joined_consumer(pipeline_settings, topics, pipeline_settings.topic_prefix + "peer-group")
    try:
        for _ in range(50):
            consumer.poll(timeout_ms=100)
            if consumer.assignment():
                break
        expected = BY_KEY["routed_text"].partitions + BY_KEY["routed_scans"].partitions
        assert len(consumer.assignment()) == expected
    finally:
        consumer.close()
    assigned = [int(n) for n in re.findall(r"assigned (\d+) partitions", capsys.readouterr().out)]
    assert assigned and assigned[0] == expected, assigned


def test_created_topics_take_writes_at_once(pipeline_settings):
    """create_topics returns once every partition answers at its leader: a producer that does not retry succeeds on
    every partition of every declared topic straight away (it got NotLeaderForPartitionError before)."""
    out = KafkaProducer(**client_config(pipeline_settings), retries=0, acks="all", linger_ms=0)
    try:
        futures = [out.send(t.name(pipeline_settings.topic_prefix), b"x", partition=p) for t in TOPICS if t.key.startswith("routed")
                   or t.key == "documents" for p in range(t.partitions)]
        out.flush()
        failed = [f.exception for f in futures if f.failed()]
        assert not failed and len(futures) >= 9
    finally:
        out.close()


def test_the_bench_runs_the_scoring_job_on_two_taskmanagers(pipeline_settings, tmp_path):
    """A quick bench of the scoring job at p2 on a session cluster of its own with two TaskManager processes: every
    document scored, the job's subtasks on both TaskManagers (a leading --parallelism once went to the flink CLI
    instead, and the job ran at 1), the figures to reach in the report, and nothing of the cluster left after it."""
    env = {**os.environ, **pipeline_settings.as_env(), "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run([pipeline_settings.python_executable, "-m", "mailroom.cli", "bench", "--quick", "--docs", "200", "--variants",
                          "mailroom-cluster", "--parallelism", "2", "--out", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    data = json.loads((run_dir / "bench.json").read_text())
    (row,) = data["results"]
    assert (row["variant"], row["parallelism"], row["taskmanagers"]) == ("mailroom-cluster", 2, 2) and not data["errors"]
    assert row["docs"] == data["routed"] and row["docs_per_s"] > 0 and row["latency_ms"]["p99"] > 0
    # each scan's reading counted (a row whose engines skipped some did less work, and would be named under the table)
    assert sum(row["scans_read"].values()) >= data["scan_share"] * data["routed"] * 0.9 > 0
    assert set(row["scans_read"]) <= {"READ", "NO_TEXT"}, row["scans_read"]
    at_p2 = next(t for t in data["targets"] if t["figure"].startswith("scoring job / peer at p2"))
    assert at_p2["measured"] is None and "two TaskManagers" in at_p2["detail"]  # no peer ran: nothing to compare with
    assert "figures to reach" in out.stdout
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert not left  # the variant's cluster and job are gone with it
