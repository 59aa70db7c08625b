"""Run a job module on the embedded MiniCluster or submit it to the session cluster.

Embedded: `python -m jobs.<name> ...` in a child process (the MiniCluster lives and dies with
it). Cluster: `flink run -py jobs/<name>.py ...` from the pip package's own bin/flink. A job
started in the background or in the foreground gets a session (process group) of its own, which
stop_job ends as a whole: the job's Python process and its JVM.

An embedded job's Flink reporter is registered as a Prometheus target when it starts and unregistered when
it ends cleanly or is stopped; a job that crashed stays registered, so its `up` series turns 0 and alerts.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from config.settings import Settings
from config.flinkconf import EMBEDDED_UI_OFFSETS, embedded_ui_port, flink_home
from config.monitoring import metrics_port, register_target, unregister_target
from mailroom.stack import FlinkCluster

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_scraped: dict[int, tuple[Settings, str]] = {}  # pid of a background embedded job -> what stop_job unregisters


def job_log_dir(settings: Settings, module: str) -> Path:
    """Where an embedded job's Flink log goes (Python logging of its functions included)."""
    return settings.run_dir / "logs" / module


def job_command(settings: Settings, module: str, args: list[str], cluster: bool = False, detached: bool = False,
                log_dir: Path | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run `module` (e.g. 'jobs.router') with `args`."""
    env = {**os.environ, **settings.as_env()}
    if not cluster:
        env["FLINK_LOG_DIR"] = str(log_dir or job_log_dir(settings, module))
        env["JVM_ARGS"] = settings.embedded_jvm_opts  # pyflink starts the MiniCluster's JVM with these
        return [settings.python_executable, "-m", module, *args], env
    script = importlib.util.find_spec(module).origin
    flink = FlinkCluster(settings)
    env.update(FLINK_CONF_DIR=str(flink.conf_dir), FLINK_LOG_DIR=str(flink.log_dir))
    cmd = [
        "bash", str(flink_home() / "bin" / "flink"), "run",
        "-m", f"{settings.host}:{settings.flink_rest_port}",
        *(["--detached"] if detached else []),
        "-pyexec", settings.python_executable,
        "-pyclientexec", settings.python_executable,
        "-py", script,
        "--",  # the job's own arguments from here: else the CLI takes a leading --parallelism N (or -p, -d ...) for itself
        *args,
    ]
    return cmd, env


def scrape_target(module: str, cluster: bool) -> str | None:
    """The Prometheus target of a job module run embedded (jobs.router -> router); None on the session cluster,
    whose JobManager and TaskManagers are targets of their own."""
    name = module.rsplit(".", 1)[-1]
    return name if not cluster and name in EMBEDDED_UI_OFFSETS else None


def _register(settings: Settings, target: str | None) -> None:
    if target:
        register_target(settings, target, metrics_port(settings, target))


def _unregister(settings: Settings, target: str | None) -> None:
    if target:
        unregister_target(settings, target)


def run_job(settings: Settings, module: str, args: list[str], cluster: bool = False, detached: bool = False, timeout: float | None = None,
            log_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run a job to completion (or, detached, until the cluster accepted it)."""
    cmd, env = job_command(settings, module, args, cluster, detached, log_dir)
    target = scrape_target(module, cluster)
    _register(settings, target)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode == 0:
        _unregister(settings, target)
    return result


def start_job(settings: Settings, module: str, args: list[str], log_path, cluster: bool = False, log_dir: Path | None = None) -> subprocess.Popen:
    """Start a (long-running) job in the background, its output going to `log_path`."""
    cmd, env = job_command(settings, module, args, cluster, log_dir=log_dir)
    log = open(log_path, "ab")
    target = scrape_target(module, cluster)
    _register(settings, target)
    job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    if target:
        _scraped[job.pid] = (settings, target)
    return job


def stop_job(job: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a job started by start_job or run_in_foreground and its MiniCluster JVM: SIGTERM to its whole process group,
    SIGKILL to what is left of the group after `timeout` s. Returns when every process of the group has ended.
    A stop on purpose: the job's Prometheus target goes too."""
    if job.pid in _scraped:
        _unregister(*_scraped.pop(job.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group(job.pid):
            break
        try:
            os.killpg(job.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while _group(job.pid) and time.monotonic() < deadline:
            job.poll()  # reap the job itself once it has ended
            time.sleep(0.2)
    job.poll()


def _group(pgid: int) -> list[int]:
    """The processes of process group `pgid` that have not ended (zombies have: they only wait to be reaped)."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except ProcessLookupError:
            pass
    return members


def run_in_foreground(settings: Settings, module: str, args: list[str], cluster: bool = False, detached: bool = False) -> int:
    """Run a job with its output going straight to this process's stdout and stderr; return its exit code. SIGINT, SIGTERM
    or SIGHUP to this process stop the job's whole process group (stop_job) and return 128 + the signal. Main thread only
    (it sets signal handlers)."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        cmd, env = job_command(settings, module, args, cluster, detached)
        target = scrape_target(module, cluster)
        _register(settings, target)
        job = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        while not received:
            try:
                code = job.wait(0.5)
            except subprocess.TimeoutExpired:
                continue
            if code == 0:
                _unregister(settings, target)
            return 128 - code if code < 0 else code  # killed by a signal: the shell's convention
        stop_job(job)
        _unregister(settings, target)
        return 128 + received[0]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_until_running(settings: Settings, job: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    """Block until the embedded job `job` (router, scoring, ...) has all its tasks running."""
    url = f"http://{settings.host}:{embedded_ui_port(settings, job)}/jobs/overview"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {job} job exited (code {process.returncode}) before it ran; see {job_log_dir(settings, 'jobs.' + job)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                jobs = json.load(response)["jobs"]
            if any(j["state"] == "RUNNING" and j["tasks"]["running"] == j["tasks"]["total"] for j in jobs):
                return
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            pass  # not up yet (or, briefly, something else answers on the port)
        time.sleep(0.5)
    raise RuntimeError(f"the {job} job was not running after {timeout_s:.0f} s")
