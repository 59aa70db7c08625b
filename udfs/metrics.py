"""Online accuracy per model version and slot, and the paired champion/challenger comparison,
from the joins' events: plain Python, no pyflink.

The accuracy job keys the prediction join's events by `metrics_key(event)` (model name, version
and slot: champion, fallback or prior) and keeps, per key, a `ModelMetrics` in value state and
its panes in a map: any dict in tests, in Flink a MapState behind `get`, `[start] = pane`,
`del [start]` and iteration over the keys. `AccuracyTracker` has the configuration and the logic:

    state = tracker.apply(state, panes, event)                  # every join event
    outgoing = tracker.on_timer(state, panes, timer_ms, now_ms)   # reports, alerts, requests
    then: store state, register an event-time timer at tracker.next_timer_ms(state) (if not
          None), write every Outgoing (`.topic`, `.key`, `.encode()`), and put
          tracker.redis_mapping(state, now_ms) under tracker.redis_key(state) (with a TTL).

Two views, both supporting retraction (a Corrected event retracts its old pair, adds the new):

* Windows over the *prediction's* event time, as accuracy_report.v1 defines them: a window
  [end - window_ms, end) holds the predictions made in it and those of them that have ground
  truth so far. A window is the sum of its panes (slide_ms wide), so memory is bounded by
  (window_ms + settle_ms) / slide_ms panes per model version. A window is reported once, when
  the watermark passes its end + settle_ms (time for ground truth to arrive); windows with no
  predictions are skipped. Pairs whose panes were in reported windows only are counted as
  `late_for_windows` and still enter the last-N view.
* The last `last_n` labelled pairs in the order they were matched (a ring buffer), for the
  dashboard: the most recent feedback, whatever the documents' age.

Figures (`figures`) match scikit-learn on the same pairs: accuracy_score; per class
precision_recall_fscore_support(zero_division=0); macro-F1 is
f1_score(average="macro", zero_division=0) over the labels present in y_true or y_pred (the
union: a class never predicted and never true is left out, one predicted but never true counts
with F1 0); confusion_matrix with `labels` (LABELS order, unknown labels after, sorted).

Alert rule: when a reported window of a champion has at least `min_support` labelled pairs and
its macro-F1 is below `min_macro_f1` or its accuracy below `min_accuracy`, raise ONE alert
(alert.v1, CRITICAL, the first breached metric, macro-F1 first) and one retraining request
(retraining_request.v1), then stay quiet until a window with enough support has both figures
at least `rearm_margin` above their thresholds (re-armed). The fallback and prior slots are
reported, never judged: they decide only when the champion missed its deadline, and a
retraining request would blame a model for its latency (or for the label prior's answers).

Champion vs challenger (`ShadowTracker`, the same windows and last-N view): the shadow join's
events, keyed by `shadow_metrics_key(event)` (kind, champion model + version, challenger model
+ version), counted per labelled document as (true label, champion's label, challenger's label).
A window is reported as shadow_report.v1 (`paired_figures`): the paired counts (both right,
only the champion, only the challenger, both wrong), each model's accuracy, macro-F1 and
per-class figures on exactly those documents (as `figures`, so as scikit-learn), and label
coverage (labelled / shadow pairs). Truths that match no shadow pair are not counted: most
documents are outside every challenger's sample.

>>> from udfs.joining import Joiner
>>> prediction = {"doc_id": "d1", "sender": "s@x.example", "content_type": "TEXT", "label": "invoice", "probabilities": {},
...               "model_name": "m", "model_version": "1", "feature_set_id": "fs", "received_ms": 0, "features": {}}
>>> truth = {"doc_id": "d1", "label": "invoice", "department": "finance", "sent_ms": 30_000, "kind": "CONFIRM"}
>>> joiner, tracker = Joiner(), AccuracyTracker(MetricsConfig(window_ms=60_000, slide_ms=60_000, settle_ms=0))
>>> pair_state, events = joiner.on_prediction(None, prediction, now_ms=0)
>>> pair_state, more = joiner.on_truth(pair_state, truth, now_ms=30_000)
>>> state, panes = None, {}
>>> for event in events + more:
...     state = tracker.apply(state, panes, event)
>>> [(o.topic, o.record["accuracy"], o.record["label_coverage"]) for o in tracker.on_timer(state, panes, 60_000, now_ms=61_000)]
[('metrics', 1.0, 1.0)]
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, MutableMapping

from schemas.labels import LABELS
from schemas.redis_keys import ACCURACY_NAMESPACE, SHADOW_NAMESPACE, accuracy_key, shadow_key
from schemas.units import HOUR_MS, MINUTE_MS
from udfs.joining import CHAMPION, Corrected, Event, Key, Matched, Outgoing, Pair, Predicted

UNATTRIBUTED = ("", "", "")  # the metrics key of events without a model (OrphanTruth): they are only counted
LATE_FOR_WINDOWS = "late_for_windows"  # count of events whose pane was only in windows already reported
METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy"}  # the alert rule's metrics, as people write them

Confusion = dict[tuple[str, ...], int]  # (true label, predicted label) -> pairs; paired: (true, champion's, challenger's)


@dataclass(frozen=True)
class MetricsConfig:
    """Windows, last-N size, alert rule and Redis namespace. Picklable."""

    window_ms: int = HOUR_MS
    slide_ms: int = 5 * MINUTE_MS  # pane width; window_ms must be a multiple
    settle_ms: int = HOUR_MS  # a window is reported this long after it ends (event time)
    last_n: int = 1000  # labelled pairs in the last-N view
    min_support: int = 50  # labelled pairs a window needs before the alert rule judges it
    min_macro_f1: float = 0.7
    min_accuracy: float = 0.75
    rearm_margin: float = 0.02  # after an alert, both figures must be this far above their thresholds
    redis_namespace: str = ACCURACY_NAMESPACE
    shadow_namespace: str = SHADOW_NAMESPACE  # the champion/challenger hashes

    def __post_init__(self):
        if self.slide_ms <= 0 or self.window_ms <= 0 or self.window_ms % self.slide_ms:
            raise ValueError(f"window_ms ({self.window_ms}) must be a positive multiple of slide_ms ({self.slide_ms})")
        if self.settle_ms < 0 or self.last_n <= 0 or self.min_support <= 0:
            raise ValueError(f"settle_ms must be >= 0, last_n and min_support > 0: {self}")


def metrics_key(event: Event) -> tuple[str, str, str]:
    """What the metrics stream is keyed by: (model_name, model_version, slot), UNATTRIBUTED for orphans."""
    return event.model or UNATTRIBUTED


def shadow_metrics_key(event: Event) -> Key | None:
    """What the paired stream is keyed by: (kind, champion model, champion version, challenger
    model, challenger version); None for a truth that matched no shadow pair (not counted)."""
    return event.model


# --- figures ---------------------------------------------------------------------------------


def label_order(labels) -> list[str]:
    """LABELS order first, then labels we do not know, sorted."""
    present = set(labels)
    return [label for label in LABELS if label in present] + sorted(present - set(LABELS))


def figures(confusion: Mapping[tuple[str, str], int]) -> dict:
    """count, accuracy, macro_f1, labels, per_class and confusion (accuracy_report.v1 fields).

    The label set is the union of true and predicted labels with a non-zero count."""
    cells = {key: n for key, n in confusion.items() if n}
    labels = label_order({label for key in cells for label in key})
    count = sum(cells.values())
    per_class = []
    for label in labels:
        tp = cells.get((label, label), 0)
        support = sum(n for (actual, _), n in cells.items() if actual == label)
        predicted = sum(n for (_, guess), n in cells.items() if guess == label)
        per_class.append({
            "label": label,
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "f1": 2 * tp / (support + predicted) if tp else 0.0,
            "support": support,
        })
    return {
        "count": count,
        "accuracy": sum(cells.get((label, label), 0) for label in labels) / count if count else None,
        "macro_f1": sum(c["f1"] for c in per_class) / len(per_class) if per_class else None,
        "labels": labels,
        "per_class": per_class,
        "confusion": [[cells.get((actual, guess), 0) for guess in labels] for actual in labels],
    }


PAIRED_OUTCOMES = {(True, True): "both_right", (True, False): "only_champion_right", (False, True): "only_challenger_right",
                   (False, False): "both_wrong"}  # (champion right, challenger right) -> shadow_report field


def paired_figures(cells: Mapping[tuple[str, str, str], int]) -> dict:
    """count, the paired counts and each model's accuracy, macro_f1 and per_class (shadow_report.v1
    fields) from (true label, champion's label, challenger's label) counts."""
    champion: Confusion = {}
    challenger: Confusion = {}
    paired = dict.fromkeys(PAIRED_OUTCOMES.values(), 0)
    for (actual, first, second), n in cells.items():
        champion[(actual, first)] = champion.get((actual, first), 0) + n
        challenger[(actual, second)] = challenger.get((actual, second), 0) + n
        paired[PAIRED_OUTCOMES[(first == actual, second == actual)]] += n
    sides = {"champion": figures(champion), "challenger": figures(challenger)}
    return {"count": sum(cells.values()), **paired,
            **{side: {k: figs[k] for k in ("accuracy", "macro_f1", "per_class")} for side, figs in sides.items()}}


def _count(confusion: Confusion, key: tuple[str, ...], delta: int) -> None:
    n = confusion.get(key, 0) + delta
    if n < 0:
        raise ValueError(f"retracting {key} which was never added")
    if n:
        confusion[key] = n
    else:
        confusion.pop(key, None)


# --- state -----------------------------------------------------------------------------------


@dataclass
class Pane:
    """Counts of one slide_ms-wide slice of prediction event time."""

    predictions: int = 0
    confusion: Confusion = field(default_factory=dict)


@dataclass
class RecentPairs:
    """The last N labelled pairs in match order (ring buffer), with their confusion counts."""

    pairs: OrderedDict = field(default_factory=OrderedDict)  # doc_id -> (*cell, matched_ms)
    confusion: Confusion = field(default_factory=dict)

    def add(self, doc_id: str, cell: tuple[str, ...], matched_ms: int, capacity: int) -> None:
        if doc_id in self.pairs:
            self._forget(doc_id)
        self.pairs[doc_id] = (*cell, matched_ms)
        _count(self.confusion, cell, +1)
        while len(self.pairs) > capacity:
            self._forget(next(iter(self.pairs)))

    def correct(self, doc_id: str, cell: tuple[str, ...]) -> None:
        """Replace the pair's cell in place (it keeps its place) if it is still among the last N."""
        if doc_id in self.pairs:
            *old, matched_ms = self.pairs[doc_id]
            _count(self.confusion, tuple(old), -1)
            self.pairs[doc_id] = (*cell, matched_ms)
            _count(self.confusion, cell, +1)

    def matched_ms(self) -> list[int]:
        """When each of the last N was matched."""
        return [entry[-1] for entry in self.pairs.values()]

    def _forget(self, doc_id: str) -> None:
        *cell, _ = self.pairs.pop(doc_id)
        _count(self.confusion, tuple(cell), -1)


@dataclass(kw_only=True)
class WindowedState:
    """What a tracker keeps per key: window progress, the last-N view, event counts, the latest report."""

    next_end_ms: int | None = None  # end of the next window to report; None while there is nothing to report
    reported_until_ms: int | None = None  # end of the last window reported
    recent: RecentPairs = field(default_factory=RecentPairs)
    counts: dict[str, int] = field(default_factory=dict)  # join event class name (and LATE_FOR_WINDOWS) -> events
    latest_report: dict | None = None


@dataclass
class ModelMetrics(WindowedState):
    """Per model version and slot: what is reported, the alert state, the last-N view, event counts."""

    model_name: str
    model_version: str
    slot: str = CHAMPION
    alerting: bool = False  # an alert was raised and the model has not recovered since


@dataclass
class ShadowMetrics(WindowedState):
    """Per champion/challenger pair of one kind: what is reported, the last-N view, event counts."""

    kind: str
    champion_model: str
    champion_version: str
    challenger_model: str
    challenger_version: str


class WindowedTracker(ABC):
    """Sliding windows of panes over the subjects' event time and the last N labelled pairs, with
    retraction (module docstring). A subclass says what a labelled pair counts as (`cell`), makes
    the state of a new key and writes what a due window reports. Stateless apart from its config."""

    def __init__(self, config: MetricsConfig = MetricsConfig()):
        self.config = config

    @abstractmethod
    def new_state(self, event: Event) -> WindowedState:
        """The state of the key whose first event is `event`."""

    @abstractmethod
    def cell(self, pair: Pair) -> tuple[str, ...]:
        """The confusion cell a labelled pair counts in."""

    @abstractmethod
    def _due(self, state: WindowedState, end_ms: int, predictions: int, confusion: Confusion, now_ms: int) -> list[Outgoing]:
        """What the window ending at `end_ms` writes; keeps its report as state.latest_report."""

    def apply(self, state: WindowedState | None, panes: MutableMapping[int, Pane], event: Event) -> WindowedState:
        """Count the event; add predictions and pairs to their panes and the last-N view."""
        if state is None:
            state = self.new_state(event)
        name = type(event).__name__
        state.counts[name] = state.counts.get(name, 0) + 1
        if isinstance(event, Predicted):
            self._update_pane(state, panes, event.prediction.at_ms, predictions=1)
        elif isinstance(event, Matched):
            pair = event.pair
            self._update_pane(state, panes, pair.predicted_ms, add=self.cell(pair))
            state.recent.add(pair.doc_id, self.cell(pair), pair.matched_ms, self.config.last_n)
        elif isinstance(event, Corrected):
            old, new = event.old, event.new
            self._update_pane(state, panes, new.predicted_ms, remove=self.cell(old), add=self.cell(new))
            state.recent.correct(new.doc_id, self.cell(new))
        return state

    def next_timer_ms(self, state: WindowedState) -> int | None:
        """The event-time timer to register: when the next window is due."""
        return None if state.next_end_ms is None else state.next_end_ms + self.config.settle_ms

    def on_timer(self, state: WindowedState, panes: MutableMapping[int, Pane], timer_ms: int, now_ms: int) -> list[Outgoing]:
        """Report every window due by `timer_ms` (event time); drop panes no window needs any more.

        `now_ms` (wall clock) is written as reported_ms / raised_ms."""
        window, slide = self.config.window_ms, self.config.slide_ms
        outgoing: list[Outgoing] = []
        while state.next_end_ms is not None and state.next_end_ms + self.config.settle_ms <= timer_ms:
            end = state.next_end_ms
            predictions, confusion = self._window(panes, end)
            if predictions or confusion:
                outgoing.extend(self._due(state, end, predictions, confusion, now_ms))
            state.reported_until_ms = end
            needed = []  # panes a later window still covers
            for start in list(panes):
                if start < end + slide - window:
                    del panes[start]
                else:
                    needed.append(start)
            state.next_end_ms = max(end + slide, min(needed) + slide) if needed else None
        return outgoing

    def recent_span(self, state: WindowedState) -> dict:
        """The match times the last-N view spans (JSON-ready)."""
        times = state.recent.matched_ms()
        return {"first_matched_ms": min(times, default=None), "last_matched_ms": max(times, default=None)}

    def dashboard_common(self, state: WindowedState, now_ms: int) -> dict[str, str]:
        """The dashboard hash fields both trackers write: update time, latest report, counts, resolved coverage."""
        matched, unmatched = state.counts.get("Matched", 0), state.counts.get("Unmatched", 0)
        return {
            "updated_ms": str(now_ms),
            "window": json.dumps(state.latest_report) if state.latest_report else "",
            "counts": json.dumps(state.counts, sort_keys=True),
            "resolved_coverage": repr(matched / (matched + unmatched)) if matched + unmatched else "",
        }

    # --- internals ---------------------------------------------------------------------------

    def _update_pane(self, state: WindowedState, panes: MutableMapping[int, Pane], at_ms: int, predictions: int = 0,
                     remove: tuple[str, ...] | None = None, add: tuple[str, ...] | None = None) -> None:
        window, slide = self.config.window_ms, self.config.slide_ms
        start = at_ms - at_ms % slide
        if state.reported_until_ms is not None and start < state.reported_until_ms + slide - window:
            state.counts[LATE_FOR_WINDOWS] = state.counts.get(LATE_FOR_WINDOWS, 0) + 1
            return
        pane = panes.get(start) or Pane()
        pane.predictions += predictions
        if remove:
            _count(pane.confusion, remove, -1)
        if add:
            _count(pane.confusion, add, +1)
        panes[start] = pane  # written back: a MapState does not see changes made in place
        first_end = start + slide if state.reported_until_ms is None else max(start + slide, state.reported_until_ms + slide)
        state.next_end_ms = first_end if state.next_end_ms is None else min(state.next_end_ms, first_end)

    def _window(self, panes: Mapping[int, Pane], end_ms: int) -> tuple[int, Confusion]:
        predictions, confusion = 0, {}
        for start in range(end_ms - self.config.window_ms, end_ms, self.config.slide_ms):
            pane = panes.get(start)
            if pane is not None:
                predictions += pane.predictions
                for key, n in pane.confusion.items():
                    confusion[key] = confusion.get(key, 0) + n
        return predictions, confusion


class ShadowTracker(WindowedTracker):
    """Champion vs challenger on the same labelled documents, per kind and pair of versions (module docstring)."""

    def new_state(self, event: Event) -> ShadowMetrics:
        return ShadowMetrics(*shadow_metrics_key(event))

    def cell(self, pair: Pair) -> tuple[str, str, str]:
        return pair.actual, pair.champion_label, pair.challenger_label

    def _due(self, state: ShadowMetrics, end_ms: int, predictions: int, confusion: Confusion, now_ms: int) -> list[Outgoing]:
        report = self.report(state, end_ms, predictions, confusion, now_ms)
        state.latest_report = report
        return [Outgoing("metrics", state.kind, "shadow_report", report)]

    def report(self, state: ShadowMetrics, end_ms: int, shadow_pairs: int, confusion: Confusion, now_ms: int) -> dict:
        """A shadow_report record for the window ending at `end_ms`."""
        figs = paired_figures(confusion)
        return {
            **self._pair(state), "window_start_ms": end_ms - self.config.window_ms, "window_end_ms": end_ms, "reported_ms": now_ms,
            "shadow_pairs": shadow_pairs, "label_coverage": figs["count"] / shadow_pairs if shadow_pairs else 0.0, **figs,
        }

    def recent_summary(self, state: ShadowMetrics) -> dict:
        """Paired figures over the last N labelled shadow pairs, with the match times they span (JSON-ready)."""
        return {**self.recent_span(state), **paired_figures(state.recent.confusion)}

    def redis_key(self, state: ShadowMetrics) -> str:
        """One key per kind, champion version and challenger version."""
        return shadow_key(self.config.shadow_namespace, *self._pair(state).values())

    def redis_mapping(self, state: ShadowMetrics, now_ms: int) -> dict[str, str]:
        """The dashboard hash for `redis_key(state)`: the pair, the latest window report and the
        last-N figures as JSON, the shadow join's counts. The caller sets the key's TTL."""
        return {**self._pair(state), **self.dashboard_common(state, now_ms), "recent": json.dumps(self.recent_summary(state))}

    @staticmethod
    def _pair(state: ShadowMetrics) -> dict[str, str]:
        return {"kind": state.kind, "champion_model": state.champion_model, "champion_version": state.champion_version,
                "challenger_model": state.challenger_model, "challenger_version": state.challenger_version}


class AccuracyTracker(WindowedTracker):
    """The metrics of one model version and slot, and the alert rule (module docstring)."""

    def new_state(self, event: Event) -> ModelMetrics:
        return ModelMetrics(*metrics_key(event))

    def cell(self, pair: Pair) -> tuple[str, str]:
        return pair.actual, pair.predicted

    def _due(self, state: ModelMetrics, end_ms: int, predictions: int, confusion: Confusion, now_ms: int) -> list[Outgoing]:
        report = self.report(state, end_ms, predictions, confusion, now_ms)
        state.latest_report = report
        judged = self._judge(state, report, now_ms) if state.slot == CHAMPION else []
        return [Outgoing("metrics", state.model_name, "accuracy_report", report), *judged]

    def report(self, state: ModelMetrics, end_ms: int, predictions: int, confusion: Confusion, now_ms: int) -> dict:
        """An accuracy_report record for the window ending at `end_ms`."""
        figs = figures(confusion)
        return {
            "model_name": state.model_name, "model_version": state.model_version, "slot": state.slot,
            "window_start_ms": end_ms - self.config.window_ms, "window_end_ms": end_ms, "reported_ms": now_ms,
            "predictions": predictions, "label_coverage": figs["count"] / predictions if predictions else 0.0, **figs,
        }

    def recent_summary(self, state: ModelMetrics) -> dict:
        """Figures over the last-N view, with the match times it spans (JSON-ready)."""
        return {**self.recent_span(state), **figures(state.recent.confusion)}

    def redis_key(self, state: ModelMetrics) -> str:
        """One key per model version and slot (orphan truths: `<namespace>:unattributed`)."""
        return accuracy_key(self.config.redis_namespace, state.model_name, state.model_version, state.slot)

    def redis_mapping(self, state: ModelMetrics, now_ms: int) -> dict[str, str]:
        """The dashboard hash for `redis_key(state)`: latest window report and last-N figures as
        JSON, event counts, alert state. The caller sets the key's TTL."""
        return {"model_name": state.model_name, "model_version": state.model_version, "slot": state.slot,
                **self.dashboard_common(state, now_ms), "recent": json.dumps(self.recent_summary(state)),
                "alerting": "1" if state.alerting else "0"}

    def _judge(self, state: ModelMetrics, report: dict, now_ms: int) -> list[Outgoing]:
        """The alert rule, de-bounced: one alert per episode, re-armed on recovery."""
        config = self.config
        if report["count"] < config.min_support:
            return []
        thresholds = {"macro_f1": config.min_macro_f1, "accuracy": config.min_accuracy}
        breached = [metric for metric, threshold in thresholds.items() if report[metric] < threshold]
        if breached and not state.alerting:
            state.alerting = True
            return self._alert(report, breached[0], thresholds[breached[0]], now_ms)
        if state.alerting and all(report[metric] >= threshold + config.rearm_margin for metric, threshold in thresholds.items()):
            state.alerting = False
        return []

    def _alert(self, report: dict, metric: str, threshold: float, now_ms: int) -> list[Outgoing]:
        name, version, end = report["model_name"], report["model_version"], report["window_end_ms"]
        weakest = sorted((c for c in report["per_class"] if c["support"]), key=lambda c: (c["f1"], c["label"]))[:3]
        message = (
            f"{name} v{version}: {METRIC_NAMES[metric]} {report[metric]:.3f} is below {threshold:.3f} over {report['count']} labelled "
            f"of {report['predictions']} documents received {_utc(report['window_start_ms'])} to {_utc(end)} UTC "
            f"(accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}); weakest classes: "
            + ", ".join(f"{c['label']} (recall {c['recall']:.2f}, F1 {c['f1']:.2f})" for c in weakest)
        )
        window = {"window_start_ms": report["window_start_ms"], "window_end_ms": end}
        alert_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailroom:alert:{name}:{version}:{metric}:{end}"))  # same on a replay
        alert = {
            "alert_id": alert_id, "raised_ms": now_ms, "severity": "CRITICAL", "kind": f"{metric}_drop", "model_name": name,
            "model_version": version, "metric": metric, "value": report[metric], "threshold": threshold, **window, "message": message,
        }
        request = {
            "request_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailroom:retrain:{alert_id}")), "requested_ms": now_ms,
            "model_name": name, "model_version": version, "reason": f"{metric}_drop", "alert_id": alert_id, "metric": metric,
            "value": report[metric], "threshold": threshold, **window, "labelled_pairs": report["count"],
            "weakest_labels": [c["label"] for c in weakest], "message": message,
        }
        return [Outgoing("alerts", name, "alert", alert), Outgoing("retraining_requests", name, "retraining_request", request)]


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
