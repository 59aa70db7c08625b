"""The dashboard as a service of the stack: started by `mailroom run` (or `mailroom dashboard
--background`), stopped by `mailroom stack down`."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import psutil

from config.settings import Settings
from mailroom.stack import TrackedService, _record, _require_free, _wait


class DashboardService(TrackedService):
    """`python -m mailroom.cli dashboard` in the background, recorded under <run_dir>/dashboard/."""

    name = "dashboard"

    def __init__(self, settings: Settings):
        super().__init__(settings, "dashboard.log")

    def start(self) -> None:
        if proc := self.process():
            _wait(self._answers, proc, 30, "the dashboard", self.log)
            return
        _require_free(self.s.host, self.s.dashboard_port, "the dashboard", "MAILROOM_DASHBOARD_PORT")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", "mailroom.cli", "dashboard"], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **self.s.as_env()})
        _record(self.pidfile, popen.pid)
        _wait(self._answers, psutil.Process(popen.pid), 60, "the dashboard", self.log)

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.s.dashboard_url}/healthz", timeout=3) as resp:
            return resp.status == 200

    def where(self) -> str:
        return f"page {self.s.dashboard_url}"
