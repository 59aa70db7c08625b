"""Process sampling: CPU time and resident memory of process trees."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Usage:
    """Samples of a process tree: (epoch s, its cumulative CPU s, its resident MB, the whole
    machine's cumulative busy CPU s: others' work on a shared machine shows there)."""

    samples: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def cpu_s(self) -> float | None:
        return round(self.samples[-1][1] - self.samples[0][1], 1) if self.samples else None

    @property
    def peak_rss_mb(self) -> float | None:
        return round(max(s[2] for s in self.samples), 1) if self.samples else None

    @property
    def own_cores(self) -> float | None:
        """Cores the process trees used on average, from the first sample to the last."""
        if len(self.samples) < 2:
            return None
        return round(self.cpu_s / (self.samples[-1][0] - self.samples[0][0]), 2)

    @property
    def machine_busy_cores(self) -> float | None:
        """Cores busy on average, machine-wide, from the first sample to the last."""
        if len(self.samples) < 2:
            return None
        (start, *_, busy_start), (end, *_, busy_end) = self.samples[0], self.samples[-1]
        return round((busy_end - busy_start) / (end - start), 2)

    def cpu_between(self, start_s: float, end_s: float) -> float:
        """CPU seconds used between two instants (interpolated between samples)."""
        import numpy as np

        times, cpu = [s[0] for s in self.samples], [s[1] for s in self.samples]
        return float(np.interp(end_s, times, cpu) - np.interp(start_s, times, cpu))


class TreeSampler:
    """Samples CPU time and RSS of process trees (each root and its descendants) in a thread."""

    def __init__(self, pids: list[int], interval_s: float = 0.25):
        import psutil

        self.roots = [psutil.Process(pid) for pid in pids]
        self.interval_s = interval_s
        self.usage = Usage()
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> latest CPU s, so exited children still count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        rss = 0
        for root in self.roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    cpu = proc.cpu_times()
                    self._cpu[(proc.pid, proc.create_time())] = cpu.user + cpu.system
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        self.usage.samples.append((time.time(), sum(self._cpu.values()), rss / 2**20, busy))
