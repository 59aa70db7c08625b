"""The session cluster through its real processes and the faults an operator meets, each with the exact books (every
document once in its output topic, none twice, nothing dead-lettered): a declared shape of two TaskManagers with one
slot each and a job spread over both; a TaskManager killed mid-stream (`kill -9`) that `mailroom stack up --flink`
starts again; the broker stopped and started again mid-stream; the job stopped with a savepoint (an upgrade) and
resumed from it while documents kept arriving; the scoring job stopped with a savepoint while its engines were reading
scans, and every scan delivered once after the resume."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter

import psutil
import pytest

from config.monitoring import metrics_port
from mailroom.kafkautil import read_topic
from mailroom.stack import FlinkCluster, Stack
from mailroom.submit import run_job
from models.generator import generate
from schemas import codec
from schemas.topics import topic_name
from tests.integration.test_router import _args, _ids, _send
from tests.poison import routed_values
from tests.unit.badinputs import valid_text_document


@pytest.fixture(scope="module")
def two_taskmanagers(stack, test_settings):
    cluster = FlinkCluster(test_settings, taskmanagers=2)
    cluster.start()
    yield cluster
    cluster.stop()
    assert not FlinkCluster(test_settings).status().running


@pytest.fixture
def router_topics(topics):
    return {"input": topics("docs", 2), "text": topics("text", 2), "scans": topics("scans", 2), "dead": topics("dead")}


def _submit_router(settings, router_topics, group: str, *extra: str) -> str:
    # --parallelism first, as `mailroom job router --cluster --parallelism 2` passes it: the job must get it, not the flink CLI
    submitted = run_job(settings, "jobs.router", ["--parallelism", "2", *_args(router_topics, group, *extra)], cluster=True, detached=True,
                        timeout=300)
    assert submitted.returncode == 0, submitted.stderr[-3000:] + submitted.stdout[-3000:]
    return FlinkCluster(settings).running_job("mailroom-router")


def _cancel_all(settings) -> None:
    FlinkCluster(settings).cancel_all()


def _rest(settings, path: str):
    return FlinkCluster(settings).rest(path)


def _wait_for_output_and_checkpoint(settings, job: str, topic: str) -> None:
    deadline = time.monotonic() + 180
    while not (_rest(settings, f"/jobs/{job}/checkpoints")["counts"]["completed"] and read_topic(settings, topic, timeout_s=1)):
        assert time.monotonic() < deadline, "no checkpoint and no output within 180 s"
        time.sleep(1)


def _assert_each_once(settings, router_topics, values: list[bytes]) -> None:
    ids = _ids(read_topic(settings, router_topics["text"], min_count=len(values), timeout_s=300))
    assert len(set(ids)) == len(values), f"{len(values) - len(set(ids))} lost"
    assert Counter(ids).most_common(1)[0][1] == 1  # nothing twice for a read_committed reader
    assert not read_topic(settings, router_topics["dead"], timeout_s=2)


def _documents(n: int) -> list[bytes]:
    run = uuid.uuid4().hex[:6]
    return [valid_text_document(f"{run}-{i}", text=f"Document {i} about an invoice.") for i in range(n)]


def test_the_declared_shape_shows_in_status(two_taskmanagers, test_settings):
    rows = {row.name: row for row in Stack(test_settings).status()}  # the running cluster's shape, not the default 1
    assert "2 of 2 TaskManagers x 1 slot(s)" in rows["flink"].detail and rows["flink"].running
    taskmanagers = [rows["taskmanager 0"], rows["taskmanager 1"]]
    assert all(tm.running and "slots 1 (" in tm.detail and "process memory" in tm.detail and tm.rss_mb > 50 for tm in taskmanagers)
    assert len({tm.pid for tm in taskmanagers}) == 2  # two processes: two interpreters, two cores for thread-mode Python
    for tm in taskmanagers:  # with the TaskManager JVM options of the settings (the serial collector by default)
        assert set(test_settings.taskmanager_jvm_opts.split()) <= set(psutil.Process(tm.pid).cmdline())
    for index, tm in enumerate(taskmanagers):  # each TaskManager's reporter on its own port, loopback only
        port = metrics_port(test_settings, "taskmanager") + index
        listening = [c.laddr for c in psutil.Process(tm.pid).net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
        assert listening and all(address.ip in ("127.0.0.1", "::ffff:127.0.0.1") for address in listening), listening
    assert two_taskmanagers.start() == [] and len(two_taskmanagers.taskmanager_processes()) == 2  # in shape: nothing more


def test_a_killed_taskmanager_is_started_again_and_the_job_loses_and_doubles_nothing(two_taskmanagers, stack, test_settings,
                                                                                    router_topics):
    values = _documents(2000)
    try:
        job = _submit_router(test_settings, router_topics, f"{test_settings.topic_prefix}router-{uuid.uuid4().hex[:6]}")
        spread = two_taskmanagers.job_taskmanagers("mailroom-router")
        assert len(spread) == 2, spread  # parallelism 2 over both TaskManagers, one slot each

        _send(test_settings, router_topics["input"], values[:1000])
        _wait_for_output_and_checkpoint(test_settings, job, router_topics["text"])
        _send(test_settings, router_topics["input"], values[1000:1500])
        victim, process = sorted(two_taskmanagers.taskmanager_processes().items())[-1]
        os.kill(process.pid, signal.SIGKILL)  # mid-stream, a crash
        process.wait(30)
        _send(test_settings, router_topics["input"], values[1500:])

        started = Stack(test_settings).up(with_flink=True)["started"]  # what a supervisor (or a person) runs
        assert started == [f"taskmanager {victim}"]
        _assert_each_once(test_settings, router_topics, values)
        assert _rest(test_settings, f"/jobs/{job}")["state"] == "RUNNING"  # the same job, restarted by Flink, not resubmitted
    finally:
        _cancel_all(test_settings)


def test_the_broker_restarted_mid_stream_loses_and_doubles_nothing(two_taskmanagers, stack, test_settings, router_topics):
    values = _documents(2000)
    try:
        job = _submit_router(test_settings, router_topics, f"{test_settings.topic_prefix}router-{uuid.uuid4().hex[:6]}")
        _send(test_settings, router_topics["input"], values[:1000])
        _wait_for_output_and_checkpoint(test_settings, job, router_topics["text"])
        stack.kafka.stop()  # a clean stop, as for a broker upgrade: open transactions are left to time out or commit
        time.sleep(5)  # the job's clients retry meanwhile
        stack.kafka.start()
        _send(test_settings, router_topics["input"], values[1000:])
        _assert_each_once(test_settings, router_topics, values)
        assert _rest(test_settings, f"/jobs/{job}")["state"] == "RUNNING"
    finally:
        _cancel_all(test_settings)


def test_stop_with_savepoint_and_resume_loses_and_doubles_nothing(two_taskmanagers, stack, test_settings, router_topics):
    values = _documents(2000)
    group = f"{test_settings.topic_prefix}router-{uuid.uuid4().hex[:6]}"
    try:
        job = _submit_router(test_settings, router_topics, group)
        _send(test_settings, router_topics["input"], values[:1000])
        _wait_for_output_and_checkpoint(test_settings, job, router_topics["text"])
        savepoint = two_taskmanagers.stop_with_savepoint(job, test_settings.run_dir / "savepoints", timeout_s=120)
        _send(test_settings, router_topics["input"], values[1000:1500])  # while the job is down: waits in Kafka

        resumed = _submit_router(test_settings, router_topics, group, "--restore-from", savepoint)
        assert resumed != job
        _send(test_settings, router_topics["input"], values[1500:])
        _assert_each_once(test_settings, router_topics, values)
    finally:
        _cancel_all(test_settings)


def test_scans_being_read_at_a_savepoint_are_read_again_after_the_resume_and_delivered_once(two_taskmanagers, pipeline_settings):
    settings = pipeline_settings
    now = int(time.time() * 1000)
    docs = [{**doc, "received_ms": now} for doc in generate(60, seed=41, scan_share=1.0) if doc["content_type"] == "image"]
    values = routed_values(docs)
    scans = topic_name("routed_scans", settings.topic_prefix)
    group = f"{settings.topic_prefix}scoring"
    args = ["--parallelism", "1", "--group-id", group, "--ocr-engines", "2", "--no-ocr-cache",  # each page read, none from the cache
            "--ocr-max-wait-ms", "600000"]  # nor given up on for the time the resume takes

    def submit(*extra: str) -> str:
        submitted = run_job(settings, "jobs.scoring", [*args, *extra], cluster=True, detached=True, timeout=600)
        assert submitted.returncode == 0, submitted.stderr[-3000:] + submitted.stdout[-3000:]
        return FlinkCluster(settings).running_job("mailroom-scoring")

    predictions = topic_name("predictions", settings.topic_prefix)
    try:
        job = submit()
        _send(settings, scans, values[:2])
        _wait_for_output_and_checkpoint(settings, job, predictions)
        _send(settings, scans, values[2:])  # a backlog of scans ~150 ms a page, four in flight at a time
        deadline = time.monotonic() + 120
        while len(read_topic(settings, predictions, timeout_s=1)) < 6:  # the engines are on the backlog: stop them there
            assert time.monotonic() < deadline, "the backlog is not being read"
        savepoint = two_taskmanagers.stop_with_savepoint(job, settings.run_dir / "savepoints", timeout_s=120)
        assert len(read_topic(settings, predictions, timeout_s=2)) < len(values), "the backlog was read before the savepoint"
        submit("--restore-from", savepoint)
        read = [codec.decode(m.value, expected="prediction").record for m in read_topic(settings, predictions, min_count=len(values), timeout_s=300)]
        ids = Counter(record["doc_id"] for record in read)
        assert sorted(ids) == sorted(doc["doc_id"] for doc in docs), f"{len(docs) - len(ids)} lost"
        assert ids.most_common(1)[0][1] == 1  # nothing twice for a read_committed reader
        statuses = Counter(record["ocr_status"] for record in read)  # each one read (or nothing legible on it), the restored too
        assert set(statuses) <= {"READ", "NO_TEXT"} and statuses["READ"] > len(values) // 2, statuses
        assert not read_topic(settings, topic_name("dead_letters", settings.topic_prefix), timeout_s=2)
    finally:
        _cancel_all(settings)


def test_the_supervisor_starts_again_what_was_killed(two_taskmanagers, stack, test_settings, tmp_path):
    """`mailroom stack supervise`: a TaskManager and Redis killed outright are started again without a person."""
    import subprocess
    import sys

    log = tmp_path / "supervise.out"
    with open(log, "wb") as out:
        supervisor = subprocess.Popen([sys.executable, "-m", "mailroom.cli", "stack", "supervise", "--interval", "1"],
                                      env={**os.environ, **test_settings.as_env()}, stdout=out, stderr=subprocess.STDOUT)
    try:
        victim, process = sorted(two_taskmanagers.taskmanager_processes().items())[0]
        redis = stack.redis.process()
        for killed in (process, redis):
            os.kill(killed.pid, signal.SIGKILL)
            killed.wait(30)
        deadline = time.monotonic() + 120
        while not ("started redis again" in (said := log.read_text()) and f"started taskmanager {victim} again" in said):
            assert time.monotonic() < deadline and supervisor.poll() is None, said
            time.sleep(1)
        assert len(two_taskmanagers.taskmanager_processes()) == 2 and stack.redis.status().running
        assert two_taskmanagers.taskmanager_processes()[victim].pid != process.pid
        assert test_settings.redis_client("scoring").ping()  # its users are back with it
    finally:
        supervisor.terminate()
        assert supervisor.wait(30) == 0, log.read_text()
