"""The session cluster through its real processes: a declared shape of two TaskManagers with one slot each, a job
spread over both, and a TaskManager killed mid-stream (`kill -9`) that `mailroom stack up --flink` starts again while
the job loses and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections import Counter

import psutil
import pytest

from config.monitoring import metrics_port
from mailroom.kafkautil import read_topic
from mailroom.stack import FlinkCluster, Stack
from mailroom.submit import run_job
from tests.integration.test_router import _args, _ids, _send
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


def _rest(settings, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{settings.flink_rest_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _running_job(settings, name: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in _rest(settings, "/jobs/overview")["jobs"]:
            if job["name"] == name and job["state"] == "RUNNING" and job["tasks"]["running"] == job["tasks"]["total"]:
                return job["jid"]
        time.sleep(1)
    raise AssertionError(f"{name} was not running on the session cluster after {timeout_s:.0f} s")


def test_the_declared_shape_shows_in_status(two_taskmanagers, test_settings):
    rows = {row.name: row for row in Stack(test_settings).status()}  # the running cluster's shape, not the default 1
    assert "2 of 2 TaskManagers x 1 slot(s)" in rows["flink"].detail and rows["flink"].running
    taskmanagers = [rows["taskmanager 0"], rows["taskmanager 1"]]
    assert all(tm.running and "slots 1 (" in tm.detail and "process memory" in tm.detail and tm.rss_mb > 50 for tm in taskmanagers)
    assert len({tm.pid for tm in taskmanagers}) == 2  # two processes: two interpreters, two cores for thread-mode Python
    for index, tm in enumerate(taskmanagers):  # each TaskManager's reporter on its own port, loopback only
        port = metrics_port(test_settings, "taskmanager") + index
        listening = [c.laddr for c in psutil.Process(tm.pid).net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
        assert listening and all(address.ip in ("127.0.0.1", "::ffff:127.0.0.1") for address in listening), listening
    assert two_taskmanagers.start() is None and len(two_taskmanagers.taskmanager_processes()) == 2  # in shape: nothing more


def test_a_killed_taskmanager_is_started_again_and_the_job_loses_and_doubles_nothing(two_taskmanagers, stack, test_settings,
                                                                                    router_topics):
    run = uuid.uuid4().hex[:6]
    values = [valid_text_document(f"{run}-{i}", text=f"Document {i} about an invoice.") for i in range(2000)]
    group = f"{test_settings.topic_prefix}router-{run}"
    submitted = run_job(test_settings, "jobs.router", _args(router_topics, group, "--parallelism", "2"), cluster=True, detached=True,
                        timeout=300)
    assert submitted.returncode == 0, submitted.stderr[-3000:] + submitted.stdout[-3000:]
    try:
        job = _running_job(test_settings, "mailroom-router")
        vertices = _rest(test_settings, f"/jobs/{job}")["vertices"]
        spread = {tm["taskmanager-id"] for v in vertices for tm in _rest(test_settings, f"/jobs/{job}/vertices/{v['id']}/taskmanagers")["taskmanagers"]}
        assert len(spread) == 2, spread  # parallelism 2 over both TaskManagers, one slot each

        _send(test_settings, router_topics["input"], values[:1000])
        deadline = time.monotonic() + 180  # output, and a completed checkpoint to restart from
        while not (_rest(test_settings, f"/jobs/{job}/checkpoints")["counts"]["completed"] and
                   read_topic(test_settings, router_topics["text"], timeout_s=1)):
            assert time.monotonic() < deadline, "no checkpoint and no output within 180 s"
            time.sleep(1)
        _send(test_settings, router_topics["input"], values[1000:1500])
        victim, process = sorted(two_taskmanagers.taskmanager_processes().items())[-1]
        os.kill(process.pid, signal.SIGKILL)  # mid-stream, a crash
        process.wait(30)
        _send(test_settings, router_topics["input"], values[1500:])

        started = Stack(test_settings).up(with_flink=True)["started"]  # what a supervisor (or a person) runs
        assert started == [f"taskmanager {victim}"]
        records = read_topic(test_settings, router_topics["text"], min_count=len(values), timeout_s=300)
        ids = _ids(records)
        assert len(set(ids)) == len(values), f"{len(values) - len(set(ids))} lost"
        assert Counter(ids).most_common(1)[0][1] == 1  # nothing twice for a read_committed reader
        assert not read_topic(test_settings, router_topics["dead"], timeout_s=2)
        assert _rest(test_settings, f"/jobs/{job}")["state"] == "RUNNING"  # the same job, restarted by Flink, not resubmitted
    finally:
        for running in _rest(test_settings, "/jobs/overview")["jobs"]:
            if running["state"] not in ("FINISHED", "CANCELED", "FAILED"):
                _rest(test_settings, f"/jobs/{running['jid']}", method="PATCH")  # cancel
