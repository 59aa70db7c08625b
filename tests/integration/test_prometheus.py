"""The Prometheus server of the stack scrapes a real embedded Flink job: the router registered as a
target on start, its reporter's series queryable with the job's labels, unregistered when stopped;
and the session cluster's JobManager and TaskManager. Every reporter listens on loopback only."""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
import urllib.request

import psutil

from config.monitoring import metrics_port, targets_dir
from mailroom.stack import FlinkCluster
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


def _listening(port: int, pids: set[int]) -> set[str]:
    """The addresses `port` listens on (in the processes `pids`): the loopback reporter's must all be loopback."""
    return {c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid in pids}


def _tree(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {proc.pid, *(child.pid for child in proc.children(recursive=True))}


def _is_loopback(ip: str) -> bool:
    """Also for a JVM's dual-stack socket bound to 127.0.0.1, which shows as ::ffff:127.0.0.1."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _assert_loopback_only(port: int, pids: set[int]) -> None:
    addresses = _listening(port, pids)
    assert addresses, f"nothing of {pids} listens on {port}"
    assert all(_is_loopback(ip) for ip in addresses), addresses


def test_prometheus_scrapes_an_embedded_job(stack, test_settings, topics, tmp_path):
    status = next(s for s in stack.status() if s.name == "prometheus")
    assert status.running and test_settings.prometheus_url in status.detail and status.rss_mb
    args = ["--input", topics("docs"), "--text-topic", topics("text"), "--scans-topic", topics("scans"),
            "--dead-letter-topic", topics("dead"), "--group-id", f"{test_settings.topic_prefix}router-prom"]
    job = start_job(test_settings, "jobs.router", args, tmp_path / "router.log")
    try:
        assert (targets_dir(test_settings) / "router.json").exists()
        wait_until_running(test_settings, "router", job)
        (up,) = _eventually(test_settings, 'up{mailroom_job="router"} == 1')
        assert up["metric"]["job"] == "flink"
        _assert_loopback_only(metrics_port(test_settings, "router"), _tree(job.pid))  # the loopback reporter, not 0.0.0.0
        # a scrape from before the job ran says 0: wait for one that says 1
        (running,) = _eventually(test_settings, 'flink_jobmanager_numRunningJobs{mailroom_job="router"} == 1')
        # the embedded job's (a router on the session cluster would be mailroom_job="jobmanager")
        (uptime,) = _eventually(test_settings, 'flink_jobmanager_job_uptime{job_name="mailroom_router",mailroom_job="router"}')
        assert float(uptime["value"][1]) > 0
        tasks = _eventually(test_settings, 'flink_taskmanager_job_task_isBackPressured{job_name="mailroom_router",mailroom_job="router"}')
        assert not {"task_attempt_id", "task_attempt_num", "tm_id", "job_id"} & {label for t in tasks for label in t["metric"]}
    finally:
        stop_job(job)
    assert not (targets_dir(test_settings) / "router.json").exists()


def test_prometheus_scrapes_the_session_cluster_on_loopback(stack, test_settings):
    cluster = FlinkCluster(test_settings)
    cluster.start()
    try:
        (jobmanager,) = cluster._daemon_pids("standalonesession")
        (taskmanager,) = cluster._daemon_pids("taskexecutor")
        _assert_loopback_only(metrics_port(test_settings, "jobmanager"), {jobmanager})
        _assert_loopback_only(metrics_port(test_settings, "taskmanager"), {taskmanager})
        assert "Started LoopbackPrometheusReporter HTTP server on 127.0.0.1:" in "".join(
            log.read_text() for log in cluster.log_dir.glob("flink-*-standalonesession-*.log"))
        (up,) = _eventually(test_settings, 'up{mailroom_job="jobmanager"} == 1')
        (slots,) = _eventually(test_settings, 'flink_jobmanager_taskSlotsTotal{mailroom_job="jobmanager"}')
        assert float(slots["value"][1]) >= 1
        _eventually(test_settings, 'up{mailroom_job="taskmanager"} == 1')
        _eventually(test_settings, 'flink_taskmanager_Status_JVM_CPU_Load{mailroom_job="taskmanager"}')
    finally:
        cluster.stop()
    assert not cluster.status().running
