"""The Prometheus server of the stack scrapes a real embedded Flink job: the router registered as a
target on start, its reporter's series queryable with the job's labels, unregistered when stopped."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

from config.monitoring import targets_dir
from mailroom.submit import start_job, stop_job, wait_until_running


def _query(settings, promql: str) -> list[dict]:
    url = f"{settings.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        answer = json.load(resp)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _eventually(settings, promql: str, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while not (result := _query(settings, promql)):
        assert time.monotonic() < deadline, f"no series for {promql} after {timeout_s:.0f} s"
        time.sleep(2)
    return result


def test_prometheus_scrapes_an_embedded_job(stack, test_settings, topics, tmp_path):
    status = next(s for s in stack.status() if s.name == "prometheus")
    assert status.running and test_settings.prometheus_url in status.detail and status.rss_mb
    args = ["--input", topics("docs"), "--text-topic", topics("text"), "--scans-topic", topics("scans"),
            "--dead-letter-topic", topics("dead"), "--group-id", f"{test_settings.topic_prefix}prom"]
    job = start_job(test_settings, "jobs.router", args, tmp_path / "router.log")
    try:
        assert (targets_dir(test_settings) / "router.json").exists()
        wait_until_running(test_settings, "router", job)
        (up,) = _eventually(test_settings, 'up{mailroom_job="router"} == 1')
        assert up["metric"]["job"] == "flink"
        (running,) = _eventually(test_settings, 'flink_jobmanager_numRunningJobs{mailroom_job="router"}')
        assert running["value"][1] == "1"
        (uptime,) = _eventually(test_settings, 'flink_jobmanager_job_uptime{job_name="mailroom_router"}')
        assert float(uptime["value"][1]) > 0 and uptime["metric"]["mailroom_job"] == "router"
        tasks = _eventually(test_settings, 'flink_taskmanager_job_task_isBackPressured{job_name="mailroom_router"}')
        assert not {"task_attempt_id", "task_attempt_num", "tm_id", "job_id"} & {label for t in tasks for label in t["metric"]}
    finally:
        stop_job(job)
    assert not (targets_dir(test_settings) / "router.json").exists()
