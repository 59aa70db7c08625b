"""Run a job module on the embedded MiniCluster or submit it to the session cluster.

Embedded: `python -m jobs.<name> ...` in a child process (the MiniCluster lives and dies with
it). Cluster: `flink run -py jobs/<name>.py ...` from the pip package's own bin/flink.
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

from config.settings import Settings
from config.flinkconf import embedded_ui_port, flink_home
from mailroom.stack import FlinkCluster


def job_log_dir(settings: Settings, module: str) -> Path:
    """Where an embedded job's Flink log goes (Python logging of its functions included)."""
    return settings.run_dir / "logs" / module


def job_command(settings: Settings, module: str, args: list[str], cluster: bool = False, detached: bool = False,
                log_dir: Path | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run `module` (e.g. 'jobs.router') with `args`."""
    env = {**os.environ, **_settings_env(settings)}
    if not cluster:
        env["FLINK_LOG_DIR"] = str(log_dir or job_log_dir(settings, module))
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
        *args,
    ]
    return cmd, env


def run_job(settings: Settings, module: str, args: list[str], cluster: bool = False, detached: bool = False, timeout: float | None = None,
            log_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run a job to completion (or, detached, until the cluster accepted it)."""
    cmd, env = job_command(settings, module, args, cluster, detached, log_dir)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def start_job(settings: Settings, module: str, args: list[str], log_path, cluster: bool = False, log_dir: Path | None = None) -> subprocess.Popen:
    """Start a (long-running) job in the background, its output going to `log_path`."""
    cmd, env = job_command(settings, module, args, cluster, log_dir=log_dir)
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _settings_env(settings: Settings) -> dict[str, str]:
    """Settings as the environment variables a child process reads them from."""
    from dataclasses import fields

    from config.settings import ENV_VARS

    return {ENV_VARS[f.name]: str(getattr(settings, f.name)) for f in fields(settings)}


def stop_job(job: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a job started by start_job and its MiniCluster JVM (the whole process group)."""
    if job.poll() is None:
        try:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout)
        except ProcessLookupError:
            pass


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
