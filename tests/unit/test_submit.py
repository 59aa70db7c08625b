"""mailroom/submit.py's run_in_foreground and stop_job on stand-in jobs (no Kafka, no Flink): a Python
process with a child in the JVM's place, which, like PyFlink's gateway JVM, ignores SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from config.settings import PROJECT_DIR, Settings
from mailroom import submit

CHILD = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); {extra}print('child up', flush=True); time.sleep(120)"
JOB = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {child!r}])
print("job up", child.pid, flush=True)
time.sleep({job_s})
"""
RUNNER = """
import sys
from config.settings import Settings
from mailroom import submit
submit.job_command = lambda *args, **kwargs: ([sys.executable, "-c", sys.argv[1]], None)
sys.exit(submit.run_in_foreground(Settings.from_env({}), "jobs.stand_in", []))
"""


def _job(job_s: float = 120, child_extra: str = "") -> str:
    return JOB.format(child=CHILD.format(extra=child_extra), job_s=job_s)


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_until_up(job: subprocess.Popen) -> psutil.Process:
    """Block until the job and its child have started (each says so, on stdout); return the child."""
    lines = sorted(job.stdout.readline().split() for _ in range(2))
    assert [line[:2] for line in lines] == [["child", "up"], ["job", "up"]]
    return psutil.Process(int(lines[1][2]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_stops_the_whole_job_and_exits_128_plus_it(sig):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, _job()], stdout=subprocess.PIPE, text=True, cwd=PROJECT_DIR)
    try:
        child = _wait_until_up(runner)  # the job's output is streamed while it runs
        tree = psutil.Process(runner.pid).children(recursive=True)
        assert child in tree and len(tree) == 2
        runner.send_signal(sig)
        assert runner.wait(30) == 128 + sig
        assert _running(tree) == []
    finally:
        runner.kill()


def test_the_job_exit_code_and_output_come_through(monkeypatch, capfd):
    monkeypatch.setattr(submit, "job_command", lambda *args, **kwargs: ([sys.executable, "-c", "print('streamed'); raise SystemExit(3)"], None))
    handler = signal.getsignal(signal.SIGTERM)
    assert submit.run_in_foreground(Settings.from_env({}), "jobs.stand_in", []) == 3
    assert "streamed" in capfd.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is handler


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_stop_job_ends_what_is_left_of_a_job_that_exited():
    job = _start(_job(job_s=0))
    child = _wait_until_up(job)
    job.wait(10)
    assert _running([child]) == [child]
    submit.stop_job(job)
    assert _running([child]) == []


def test_stop_job_kills_what_ignores_sigterm():
    job = _start(_job(child_extra="signal.signal(signal.SIGTERM, signal.SIG_IGN); "))
    tree = [psutil.Process(job.pid), _wait_until_up(job)]
    started = time.monotonic()
    submit.stop_job(job, timeout=1)
    assert _running(tree) == [] and time.monotonic() - started < 10
    assert job.returncode == -signal.SIGTERM  # the job itself ended on SIGTERM; only its child needed SIGKILL
