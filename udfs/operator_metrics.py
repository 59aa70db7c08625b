"""What the Python operators count for their metrics (`schemas.metric_names`), as plain data: no
pyflink. An operator adds to a `MetricCounts` per record or per batch; its adapter
(`udfs.adapters.common.OperatorMetrics`) pushes the counts into Flink's metric objects in one
go, once per batch, or for per-record operators when `FlushPolicy` says so. Every counter
increment through Flink is a JNI call; this keeps them to one per metric and push.

>>> counts = MetricCounts()
>>> counts.add(DEAD_LETTERS, "UNDECODABLE"); counts.add(DEAD_LETTERS, "UNDECODABLE", n=2)
>>> [(metric.name, values, n) for (metric, values), n in counts.take()[0].items()]
[('dead_letters', ('UNDECODABLE',), 3)]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from schemas.metric_names import (
    ALERT_OPEN, BATCH_DOCUMENTS, BATCH_SCORE_MS, BATCH_SIZE, BATCHES, CONTENT, DEAD_LETTERS, DELIVERED, DOCUMENTS_IN, JOIN_OUTCOMES,
    LATENCY_MS, MODEL_VERSION, OCR_PAGES, OCR_SCANS, POPULATION, PREDICTED, PREDICTIONS, ROUTED, SHADOW_DISAGREEMENTS, SHADOW_PAIRS,
    OperatorMetric,
)
from models.modelio import KINDS
from models.population import EDGES, binned, bins
from schemas.labels import LABELS
from udfs.joining import Corrected, DuplicatePrediction, DuplicateTruth, LateTruth, Matched, OrphanTruth, StaleTruth, Unmatched
from udfs.routing import Destination, RoutingResult
from udfs.scoring import ScoredBatch, model_input_text

Key = tuple[OperatorMetric, tuple[str, ...]]
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
JOIN_OUTCOME_NAMES = {Matched: "matched", Corrected: "corrected", LateTruth: "late", OrphanTruth: "orphan", Unmatched: "unmatched",
                      DuplicateTruth: "duplicate_truth", StaleTruth: "stale_truth", DuplicatePrediction: "duplicate_prediction"}


class MetricCounts:
    """Counter increments and last values by (metric, label values), until taken."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.last: dict[Key, int] = {}

    def add(self, metric: OperatorMetric, *values: str, n: int = 1) -> None:
        """Count `n` more for the counter `metric` with these label values."""
        self._check(metric, values, "counter")
        if n:
            self.counts[(metric, tuple(str(v) for v in values))] += n

    def set(self, metric: OperatorMetric, *values: str, value: int) -> None:
        """The last value of the gauge `metric` with these label values (an int, as Flink requires)."""
        self._check(metric, values, "last")
        self.last[(metric, tuple(str(v) for v in values))] = int(value)

    def merge(self, other: "MetricCounts") -> None:
        self.counts.update(other.counts)
        self.last.update(other.last)

    def take(self) -> tuple[dict[Key, int], dict[Key, int]]:
        """(counter increments, last values), and start again from nothing."""
        taken = dict(self.counts), dict(self.last)
        self.counts, self.last = Counter(), {}
        return taken

    def __bool__(self) -> bool:
        return bool(self.counts or self.last)

    @staticmethod
    def _check(metric: OperatorMetric, values: tuple, kind: str) -> None:
        if metric.kind != kind or len(values) != len(metric.labels):
            raise ValueError(f"{metric.name} is a {metric.kind} with labels {metric.labels}; got a {kind} with values {values}")


class FlushPolicy:
    """When a per-record operator pushes its counts: at least `interval_ms` after the last push,
    or once `max_records` records were counted since (and on close, by the adapter).

    >>> policy = FlushPolicy(interval_ms=1000, max_records=3)
    >>> policy.started(0); [policy.record(t) for t in (10, 20, 30)]
    [False, False, True]
    >>> policy.record(500), policy.record(1030)
    (False, True)
    """

    def __init__(self, interval_ms: int = 1000, max_records: int = 1000):
        self.interval_ms, self.max_records = interval_ms, max_records
        self.last_push_ms, self.pending = 0, 0

    def started(self, now_ms: int) -> None:
        self.last_push_ms, self.pending = now_ms, 0

    def record(self, now_ms: int) -> bool:
        """One more record counted: is a push due? (If so, the caller pushes; this resets.)"""
        self.pending += 1
        return self.due(now_ms)

    def due(self, now_ms: int) -> bool:
        """Is a push due now (a timer's check: no record counted)? Resets when it is."""
        if self.pending and (self.pending >= self.max_records or now_ms - self.last_push_ms >= self.interval_ms):
            self.started(now_ms)
            return True
        return False


def quantiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank p50/p95/p99 of `values` (none: {}).

    >>> quantiles(list(range(1, 101)))
    {'p50': 50, 'p95': 95, 'p99': 99}
    """
    ordered = sorted(values)
    return {name: int(ordered[max(0, math.ceil(len(ordered) * q) - 1)]) for name, q in QUANTILES.items()} if ordered else {}


def route_counts(counts: MetricCounts, result: RoutingResult) -> None:
    """What one routed message adds: a document in, and a dead letter's reason (routing itself
    is counted after the duplicate check, by `routed_counts`)."""
    counts.add(DOCUMENTS_IN)
    if result.destination is Destination.DEAD_LETTER:
        counts.add(DEAD_LETTERS, result.reason.value)


def routed_counts(counts: MetricCounts, destination: str | None) -> None:
    """What the duplicate check adds for one document: its destination ("routed_text" or
    "routed_scans", counted as text / scans), or None for a duplicate."""
    if destination is None:
        counts.add(DEAD_LETTERS, "DUPLICATE_ID")
    else:
        counts.add(ROUTED, Destination(destination).name.lower())


def reading_counts(counts: MetricCounts, pages_read: int, status: str) -> None:
    """What reading one scan adds: its pages and its reading status."""
    counts.add(OCR_PAGES, n=pages_read)
    counts.add(OCR_SCANS, status)


def batch_counts(scored: ScoredBatch, size: int, score_ms: float, now_ms: int) -> MetricCounts:
    """What one scored micro-batch (`udfs.scoring.ScoredBatch` of `size` documents, scored in
    `score_ms`) adds, its documents emitted at `now_ms`."""
    counts = MetricCounts()
    counts.add(BATCHES)
    counts.add(BATCH_DOCUMENTS, n=size)
    counts.set(BATCH_SIZE, value=size)
    counts.set(BATCH_SCORE_MS, value=round(score_ms))
    for decision in scored.decisions:
        doc = decision.doc
        counts.add(DELIVERED, decision.department)
        counts.add(PREDICTED, decision.label)
        counts.add(PREDICTIONS, decision.kind, decision.slot)
        counts.add(CONTENT, doc.content_type)
        for feature, bin_label in {**binned(model_input_text(doc), doc.features), "label": decision.label}.items():
            counts.add(POPULATION, decision.kind, feature, bin_label)
    for name, value in quantiles([max(0, now_ms - d.doc.received_ms) for d in scored.decisions]).items():
        counts.set(LATENCY_MS, name, value=value)
    for kind, n in scored.shadow_pairs.items():
        counts.add(SHADOW_PAIRS, kind, n=n)
        counts.add(SHADOW_DISAGREEMENTS, kind, n=scored.shadow_disagreements[kind])
    return counts


def version_counts(versions: dict[tuple[str, str], int]) -> MetricCounts:
    """The version each (kind, slot) serves (0: none), slots in lower case."""
    counts = MetricCounts()
    for (kind, slot), version in versions.items():
        counts.set(MODEL_VERSION, kind, slot.lower(), value=version)
    return counts


def join_counts(counts: MetricCounts, events: Iterable) -> None:
    """What a join's events add: one outcome each (a Predicted event is no outcome)."""
    for event in events:
        outcome = JOIN_OUTCOME_NAMES.get(type(event))
        if outcome is not None:
            counts.add(JOIN_OUTCOMES, outcome)


class AlertStates:
    """ALERT_OPEN per (model, slot): the alert state of the newest version seen of the model in
    that slot (an older version's tracker may still report while its windows drain).

    >>> alerts = AlertStates()
    >>> alerts.update("text-clf", "3", "champion", True), alerts.update("text-clf", "2", "champion", False)
    (1, 1)
    """

    def __init__(self):
        self.newest: dict[tuple[str, str], tuple[int, bool]] = {}

    def update(self, model: str, version: str, slot: str, alerting: bool) -> int:
        """Record one version's state; the value for (model, slot)."""
        number = int(version) if str(version).isdigit() else 0
        current = self.newest.get((model, slot))
        if current is None or number >= current[0]:
            self.newest[(model, slot)] = (number, alerting)
        return int(self.newest[(model, slot)][1])

    def counts(self, model: str, version: str, slot: str, alerting: bool) -> MetricCounts:
        counts = MetricCounts()
        counts.set(ALERT_OPEN, model, slot, value=self.update(model, version, slot, alerting))
        return counts


def population_series() -> list[tuple[str, str, str]]:
    """Every (kind, feature, bin) that POPULATION counts, for the scoring operator to declare at 0 when it opens: a
    series that first appears with its first push hides that push from Prometheus' increase(), and the drift figures
    of a short run (one or two micro-batches) would miss most of its documents.

    >>> series = population_series()
    >>> ("text", "text_length", "0-100") in series and ("image", "label", "invoice") in series and len(series) == len(set(series))
    True
    """
    return ([(kind, feature, b) for kind in KINDS for feature in EDGES for b in bins(feature)]
            + [(kind, "label", label) for kind in KINDS for label in LABELS])
