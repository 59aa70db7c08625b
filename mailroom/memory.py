"""The whole embedded stack's resident memory while `make run` runs: sampled, reported, and recorded for
`mailroom bench` (its figures to reach hold the latest record)."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone

import psutil

from config.settings import Settings

RECORD = "stack-memory.json"  # in the run directory: the latest `make run`'s figures
OWN = "mailroom run and its jobs"  # this process's tree: the jobs' Python clients, their MiniCluster JVMs, Python workers


class StackMemory:
    """Samples, in a thread, the RSS of every process of named process trees (`parts`: name -> root PID, more may be
    added while it runs; a process counts once, in the first part that holds it, OWN's tree last). Keeps the peak of
    the sum and each part's share at that peak."""

    def __init__(self, parts: dict[str, int], interval_s: float = 1.0):
        self.parts = parts
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.at_peak: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-memory", daemon=True)

    def start(self) -> "StackMemory":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def __enter__(self) -> "StackMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        seen: set[int] = set()
        by_part = {}
        for name, pid in sorted(self.parts.items(), key=lambda part: part[0] == OWN):  # own tree last: a job counts as itself
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            rss = 0
            for proc in tree:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
            by_part[name] = rss / 2**20
        self.samples += 1
        total = sum(by_part.values())
        if total > self.peak_mb:
            self.peak_mb, self.at_peak = total, by_part

    def summary(self) -> str:
        parts = ", ".join(f"{name} {mb:,.0f}" for name, mb in sorted(self.at_peak.items(), key=lambda kv: -kv[1]))
        return f"peak RSS of the whole stack {self.peak_mb:,.0f} MB ({self.peak_mb / 1024:.2f} GiB; at that moment, MB: {parts})"


def stack_parts(settings: Settings) -> dict[str, int]:
    """The running services' root PIDs by name, then this process (the run and the jobs it starts)."""
    from mailroom.stack import Stack

    parts = {status.name: status.pid for status in Stack(settings).status() if status.running and status.pid}
    return {**parts, OWN: os.getpid()}


def write_record(settings: Settings, run_id: str, memory: StackMemory) -> None:
    record = {"run_id": run_id, "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "peak_rss_mb": round(memory.peak_mb, 1),
              "at_peak_mb": {name: round(mb, 1) for name, mb in memory.at_peak.items()}, "samples": memory.samples,
              "interval_s": memory.interval_s, "cpus": os.cpu_count()}
    (settings.run_dir / RECORD).write_text(json.dumps(record, indent=2))


def read_record(settings: Settings) -> dict | None:
    """The latest `make run`'s memory record, or None when there is none."""
    try:
        return json.loads((settings.run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None

