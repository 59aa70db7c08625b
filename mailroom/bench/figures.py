"""The bench's figures: percentiles, the sustained-throughput window, a variant's Result and the goal line."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def percentiles(values, points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p95": ..., "p99": ...} by linear interpolation; None when there are no values.

    >>> percentiles(range(1, 101))["p50"]
    50.5
    """
    import numpy as np

    values = np.asarray(list(values), dtype=float)
    if not values.size:
        return {f"p{p}": None for p in points}
    return {f"p{p}": round(float(v), 1) for p, v in zip(points, np.percentile(values, points))}


@dataclass(frozen=True)
class Window:
    """The records processed between two processing timestamps (epoch ms)."""

    start_ms: int
    end_ms: int
    records: int

    @property
    def rate(self) -> float:
        return self.records / ((self.end_ms - self.start_ms) / 1000)


def sustained_window(times_ms, low: float = 0.1, high: float = 0.9) -> Window | None:
    """The window from the `low` to the `high` quantile of the records' processing timestamps.

    It counts the records stamped after its start and up to its end, so a micro-batch stamped
    at one instant counts once it is done. None if the quantiles do not span any time.

    >>> sustained_window([1000] * 100 + [2000] * 100 + [3000] * 100).rate  # 100 per second
    100.0
    """
    import numpy as np

    times = np.sort(np.asarray(list(times_ms), dtype=np.int64))
    if times.size < 2:
        return None
    start, end = int(times[int(low * (times.size - 1))]), int(times[math.ceil(high * (times.size - 1))])
    if end <= start:
        return None
    return Window(start, end, int(np.count_nonzero((times > start) & (times <= end))))


@dataclass
class Result:
    """One row of the table: a variant's figures."""

    variant: str
    input: str
    parallelism: int | None
    docs: int
    docs_per_s: float | None
    offered_per_s: float | None = None
    latency_ms: dict | None = None  # receipt -> arrival in a department topic
    scored_latency_ms: dict | None = None  # receipt -> scored (before any commit)
    cpu_s: float | None = None
    cpu_ms_per_doc: float | None = None  # within the throughput window
    peak_rss_mb: float | None = None
    wall_s: float | None = None
    first_output_s: float | None = None  # process start -> first record processed
    own_cores: float | None = None  # the variant's processes, on average while they ran
    machine_busy_cores: float | None = None  # machine-wide (the broker, the bench, other users too)

    @property
    def label(self) -> str:
        return f"{self.variant} {self.input}" + (f" p{self.parallelism}" if self.parallelism else "")


def _head_to_head(results: list[Result]) -> dict[int, tuple[float, float]]:
    """parallelism -> (mailroom docs/s, peer docs/s), for each parallelism both ran at."""
    rates = {(r.variant, r.parallelism): r.docs_per_s for r in results if r.docs_per_s}
    both = sorted(p for variant, p in rates if variant == "mailroom" and ("peer", p) in rates)
    return {p: (rates["mailroom", p], rates["peer", p]) for p in both}


def goal(results: list[Result]) -> dict[str, float]:
    """Mailroom's sustained throughput over the peer's, per parallelism both ran at."""
    return {f"p{p}": round(mailroom / peer, 2) for p, (mailroom, peer) in _head_to_head(results).items()}


def goal_line(results: list[Result]) -> str:
    pairs = _head_to_head(results)
    if not pairs:
        return "Goal line: needs the peer and mailroom at the same parallelism."
    parts = [f"{mailroom / peer:.2f}x at p{p} ({mailroom:,.0f} vs {peer:,.0f} docs/s)" for p, (mailroom, peer) in pairs.items()]
    return ("Goal: Mailroom's scoring job sustains " + ", ".join(parts) + " the throughput of the hand-written peer, Kafka in to "
            "Kafka out - and gives exactly-once output and checkpointed sender state, which the peer lacks (it auto-commits "
            "offsets, loses its state on restart, and at p>1 splits each sender's history across processes).")


def report(results: list[Result], meta: dict, errors: list[str]) -> dict:
    """Everything the JSON file holds."""
    return {**meta, "results": [{"label": r.label, **asdict(r)} for r in results], "goal": goal(results), "errors": errors}
