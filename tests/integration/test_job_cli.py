"""`mailroom job` through the real stack: a stop signal to it ends the job's Python process and
its MiniCluster JVM, and `mailroom job` exits with 128 + the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mailroom.submit import wait_until_running
from tests.unit.test_submit import _running


def test_sigterm_stops_the_embedded_job_and_its_jvm(pipeline_settings, tmp_path):
    env = {**os.environ, **pipeline_settings.as_env()}
    log = tmp_path / "mailroom-job.out"
    with open(log, "wb") as out:
        mailroom = subprocess.Popen([str(Path(sys.executable).with_name("mailroom")), "job", "router", "--", "--group-id",
                                     f"{pipeline_settings.topic_prefix}router"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_running(pipeline_settings, "router", mailroom)
        tree = psutil.Process(mailroom.pid).children(recursive=True)
        assert any(p.name() == "java" for p in tree), [p.cmdline()[:3] for p in tree]
        started = time.monotonic()
        mailroom.send_signal(signal.SIGTERM)
        assert mailroom.wait(30) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        while _running(tree) and time.monotonic() - started < 30:
            time.sleep(0.5)
        assert _running(tree) == [], [p.cmdline()[:3] for p in _running(tree)]
        assert "running jobs.router on the embedded MiniCluster" in log.read_text()
    finally:
        if mailroom.poll() is None:  # the test failed before the signal: clean up the way it should work, else by force
            tree = [psutil.Process(mailroom.pid), *psutil.Process(mailroom.pid).children(recursive=True)]
            mailroom.send_signal(signal.SIGTERM)
            try:
                mailroom.wait(60)
            except subprocess.TimeoutExpired:
                for process in _running(tree):
                    process.kill()
