"""udfs/metrics.py: figures equal scikit-learn's on the same pairs (windows, last N, with
corrections), windows slide and forget, a planted degradation raises exactly one alert, slots
are tracked apart, and the champion/challenger figures equal scikit-learn's on the same documents."""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter
from dataclasses import replace

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from schemas.labels import DEPARTMENTS, LABELS
from schemas.units import HOUR_MS
from schemas import codec
from udfs.joining import Corrected, Joiner, Matched, ShadowJoiner
from udfs.metrics import (UNATTRIBUTED, AccuracyTracker, MetricsConfig, ShadowTracker, figures, metrics_key, paired_figures,
                          shadow_metrics_key)

T0 = 1_750_000_000_000 - 1_750_000_000_000 % HOUR_MS  # on the hour, so windows line up with hours
MINUTE = 60_000
MODEL = ("mailroom-text", "3", "champion")
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # sklearn, on one-label windows


def prediction(doc_id: str, label: str, received_ms: int, model=MODEL) -> dict:
    return {"doc_id": doc_id, "sender": "s@x.example", "content_type": "TEXT", "label": label, "probabilities": {label: 1.0},
            "model_name": model[0], "model_version": model[1], "feature_set_id": "sender-v1", "received_ms": received_ms, "features": {},
            "slot": model[2]}


def truth(doc_id: str, label: str, sent_ms: int, kind: str = "CONFIRM") -> dict:
    return {"doc_id": doc_id, "label": label, "department": DEPARTMENTS[label], "sent_ms": sent_ms, "kind": kind, "comment": None}


class PickledMap:
    """What a Flink MapState offers: get (a fresh copy), put, remove, iterate keys. No len, and
    changes made in place to a value are lost."""

    def __init__(self):
        self.data: dict[int, bytes] = {}

    def get(self, key):
        return pickle.loads(self.data[key]) if key in self.data else None

    def __setitem__(self, key, value):
        self.data[key] = pickle.dumps(value)

    def __delitem__(self, key):
        del self.data[key]

    def __iter__(self):
        return iter(list(self.data))


class Pipeline:
    """Joiner -> AccuracyTracker (or ShadowJoiner -> ShadowTracker with `shadow=True`), driven
    like the Flink job: metrics state per key, the tracker's timer fired (repeatedly, in order)
    when the watermark passes it. `prediction` takes a prediction, or a shadow pair."""

    def __init__(self, config: MetricsConfig, panes=dict, shadow: bool = False):
        self.make_panes = panes
        self.joiner, self.tracker = (ShadowJoiner(), ShadowTracker(config)) if shadow else (Joiner(), AccuracyTracker(config))
        self.key = shadow_metrics_key if shadow else metrics_key
        self.join_states: dict = {}
        self.states: dict = {}
        self.panes: dict = {}
        self.out: list = []
        self.events: list = []  # every join event, in order
        self.max_panes = 0

    def feed(self, events: list) -> None:
        self.events += events
        for event in events:
            key = self.key(event)
            if key is None:  # a truth that matched no shadow pair
                continue
            panes = self.panes.setdefault(key, self.make_panes())
            self.states[key] = self.tracker.apply(self.states.get(key), panes, event)
            self.max_panes = max(self.max_panes, len(list(panes)))

    def prediction(self, record: dict) -> None:
        state, events = self.joiner.on_prediction(self.join_states.get(record["doc_id"]), record, record["received_ms"])
        self.join_states[record["doc_id"]] = state
        self.feed(events)

    def truth(self, record: dict) -> None:
        state, events = self.joiner.on_truth(self.join_states.get(record["doc_id"]), record, record["sent_ms"])
        self.join_states[record["doc_id"]] = state
        self.feed(events)

    def advance(self, watermark: int) -> list:
        fired = []
        for key, state in self.states.items():
            while (timer := self.tracker.next_timer_ms(state)) is not None and timer <= watermark:
                fired += self.tracker.on_timer(state, self.panes[key], timer, now_ms=timer + 1)
        self.out += fired
        return fired

    def of(self, topic: str) -> list[dict]:
        return [o.record for o in self.out if o.topic == topic]


def assert_matches_sklearn(report: dict, y_true: list[str], y_pred: list[str]) -> None:
    labels = report["labels"]
    assert sorted(labels) == sorted(set(y_true) | set(y_pred))
    assert report["count"] == len(y_true)
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert [c["label"] for c in report["per_class"]] == labels
    assert [c["precision"] for c in report["per_class"]] == pytest.approx(list(precision))
    assert [c["recall"] for c in report["per_class"]] == pytest.approx(list(recall))
    assert [c["f1"] for c in report["per_class"]] == pytest.approx(list(f1))
    assert [c["support"] for c in report["per_class"]] == list(support)
    assert report["confusion"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()


# --- figures = scikit-learn ------------------------------------------------------------------


def random_truths(rng: random.Random) -> tuple[list[str], list[str]]:
    """A random label pool (a class we do not know included, sometimes) and 1-60 true labels from it."""
    pool = rng.sample([*LABELS, "brand_new_class"], rng.randint(1, 8))
    return pool, [rng.choice(pool) for _ in range(rng.randint(1, 60))]


def answers(rng: random.Random, pool: list[str], y_true: list[str], right: float) -> list[str]:
    """Predictions that are right with probability `right`, else a random label of the pool."""
    return [t if rng.random() < right else rng.choice(pool) for t in y_true]


def test_figures_equal_sklearn_on_random_pairs():
    rng = random.Random(1)
    for _ in range(100):
        pool, y_true = random_truths(rng)
        y_pred = answers(rng, pool, y_true, 0.6)
        assert_matches_sklearn(figures(Counter(zip(y_true, y_pred))), y_true, y_pred)


def test_figures_of_nothing_are_null():
    assert figures({}) == {"count": 0, "accuracy": None, "macro_f1": None, "labels": [], "per_class": [], "confusion": []}


def test_macro_f1_counts_a_class_that_was_predicted_but_never_true_with_f1_zero():
    report = figures({("invoice", "invoice"): 3, ("offer", "other"): 1, ("offer", "offer"): 1})
    assert report["labels"] == ["invoice", "offer", "other"]
    assert report["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


# --- windows and last N = scikit-learn on the same pairs, with corrections -------------------


def random_stream(rng: random.Random, docs: int, span_ms: int):
    """Predictions over `span_ms`; 80% get truth within 40 minutes, 10% of those a correction."""
    records, final = [], {}
    for i in range(docs):
        doc, received = f"d{i}", T0 + rng.randrange(span_ms)
        actual = rng.choice(LABELS)
        predicted = actual if rng.random() < 0.7 else rng.choice(LABELS)
        records.append(prediction(doc, predicted, received))
        final[doc] = {"received": received, "predicted": predicted, "actual": None}
        if rng.random() < 0.8:
            first = actual if rng.random() < 0.9 else rng.choice(LABELS)
            records.append(truth(doc, first, received + rng.randrange(40 * MINUTE), "CONFIRM"))
            final[doc]["actual"] = first
            if first != actual:
                records.append(truth(doc, actual, received + 40 * MINUTE + rng.randrange(10 * MINUTE), "CORRECT"))
                final[doc]["actual"] = actual
    records.sort(key=lambda r: r.get("sent_ms", r.get("received_ms")))
    return records, final


@pytest.mark.parametrize("panes", [dict, PickledMap], ids=["dict", "map-state"])
def test_every_window_report_equals_sklearn_on_its_pairs(panes):
    rng = random.Random(2)
    config = MetricsConfig(window_ms=HOUR_MS, slide_ms=15 * MINUTE, settle_ms=HOUR_MS)
    pipeline = Pipeline(config, panes)
    records, final = random_stream(rng, 1500, 6 * HOUR_MS)
    for record in records:
        pipeline.prediction(record) if "received_ms" in record else pipeline.truth(record)
        pipeline.advance(record.get("received_ms", record.get("sent_ms")) - 5 * MINUTE)  # watermark: 5 minutes behind
    pipeline.advance(2**63 - 1)
    reports = pipeline.of("metrics")
    assert len(reports) == 6 * 4 + 3  # every 15-minute slide over 6 hours, plus the windows overhanging the end
    for report in reports:
        in_window = [d for d in final.values() if report["window_start_ms"] <= d["received"] < report["window_end_ms"]]
        labelled = [d for d in in_window if d["actual"] is not None]
        assert report["predictions"] == len(in_window)
        assert report["label_coverage"] == pytest.approx(len(labelled) / len(in_window))
        assert_matches_sklearn(report, [d["actual"] for d in labelled], [d["predicted"] for d in labelled])
        assert codec.decode(codec.encode("accuracy_report", report), expected="accuracy_report").record == report
    assert pipeline.states[MODEL].counts.get("late_for_windows", 0) == 0  # truth within 50 min < settle


def test_the_last_n_view_equals_sklearn_on_the_last_n_matched_pairs():
    rng = random.Random(4)
    tracker, state, panes = AccuracyTracker(MetricsConfig(last_n=100)), None, {}
    joiner, matched = Joiner(), {}
    for i in range(400):
        doc, received = f"d{i}", T0 + i * MINUTE
        actual, predicted = rng.choice(LABELS), rng.choice(LABELS)
        join_state, events = joiner.on_prediction(None, prediction(doc, predicted, received), received)
        join_state, more = joiner.on_truth(join_state, truth(doc, rng.choice(LABELS), received + 1), received + 1)
        if i % 3 == 0:
            join_state, correction = joiner.on_truth(join_state, truth(doc, actual, received + 2, "CORRECT"), received + 2)
            more += correction
        for event in events + more:
            state = tracker.apply(state, panes, event)
            if isinstance(event, (Matched, Corrected)):
                pair = event.pair if isinstance(event, Matched) else event.new
                matched[doc] = (pair.actual, pair.predicted)  # a correction keeps the pair's place
    last = list(matched.values())[-100:]
    summary = tracker.recent_summary(state)
    assert_matches_sklearn(summary, [a for a, _ in last], [p for _, p in last])
    assert summary["first_matched_ms"] == T0 + 300 * MINUTE + 1 and summary["last_matched_ms"] == T0 + 399 * MINUTE + 1


def test_a_correction_retracts_the_old_pair_from_its_window():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0))
    pipeline.prediction(prediction("d1", "invoice", T0))
    pipeline.truth(truth("d1", "invoice", T0 + MINUTE))
    pipeline.truth(truth("d1", "offer", T0 + 2 * MINUTE, "CORRECT"))
    (report,) = pipeline.advance(T0 + HOUR_MS)
    assert report.record["confusion"] == [[0, 0], [1, 0]] and report.record["labels"] == ["invoice", "offer"]
    assert pipeline.states[MODEL].counts == {"Predicted": 1, "Matched": 1, "Corrected": 1}


# --- sliding, forgetting, lateness -----------------------------------------------------------


def test_windows_slide_and_old_panes_drop_out():
    config = MetricsConfig(window_ms=HOUR_MS, slide_ms=5 * MINUTE, settle_ms=30 * MINUTE)
    pipeline = Pipeline(config)
    for i in range(24 * 60):  # a day, one labelled prediction a minute; wrong in the first hour only
        received = T0 + i * MINUTE
        pipeline.prediction(prediction(f"d{i}", "invoice" if i >= 60 else "offer", received))
        pipeline.truth(truth(f"d{i}", "invoice", received + MINUTE))
        pipeline.advance(received)
    reports = pipeline.of("metrics")
    ends = [r["window_end_ms"] for r in reports]
    assert ends == list(range(T0 + 5 * MINUTE, ends[-1] + 1, 5 * MINUTE))  # one report per slide, in order
    by_end = {r["window_end_ms"]: r for r in reports}
    assert by_end[T0 + HOUR_MS]["accuracy"] == 0.0 and by_end[T0 + HOUR_MS]["predictions"] == 60
    assert by_end[T0 + HOUR_MS + 30 * MINUTE]["accuracy"] == 0.5
    assert by_end[T0 + 2 * HOUR_MS]["accuracy"] == 1.0  # the first hour has slid out
    assert pipeline.max_panes <= (config.window_ms + config.settle_ms) // config.slide_ms + 2
    assert min(pipeline.panes[MODEL]) >= T0 + 22 * HOUR_MS  # only recent panes are kept


def test_truth_for_a_window_already_reported_counts_as_late_and_enters_the_last_n():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0))
    pipeline.prediction(prediction("d1", "invoice", T0))
    pipeline.advance(T0 + HOUR_MS)
    pipeline.truth(truth("d1", "invoice", T0 + 2 * HOUR_MS))
    state = pipeline.states[MODEL]
    assert [r["count"] for r in pipeline.of("metrics")] == [0] and state.counts["late_for_windows"] == 1
    assert pipeline.tracker.recent_summary(state)["count"] == 1


def test_an_idle_model_reports_nothing_and_needs_no_timer():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0))
    pipeline.prediction(prediction("d1", "invoice", T0))
    pipeline.prediction(prediction("d2", "invoice", T0 + 30 * 24 * HOUR_MS))
    pipeline.advance(2**63 - 1)
    assert [r["window_start_ms"] for r in pipeline.of("metrics")] == [T0, T0 + 30 * 24 * HOUR_MS]
    assert pipeline.tracker.next_timer_ms(pipeline.states[MODEL]) is None and pipeline.panes[MODEL] == {}


# --- alerts ----------------------------------------------------------------------------------

ALERTING = MetricsConfig(window_ms=HOUR_MS, slide_ms=5 * MINUTE, settle_ms=HOUR_MS, min_support=100, min_macro_f1=0.8, min_accuracy=0.8)


def run_model(seed: int, hours: int, wrong_on: dict[int, str]) -> Pipeline:
    """A document every 20 s, truth within 30 minutes; in the hours listed in `wrong_on` the model
    calls every document of that class an offer (otherwise it is right 92% of the time)."""
    rng, pipeline = random.Random(seed), Pipeline(ALERTING)
    for i in range(hours * 180):
        received = T0 + i * 20_000
        actual = rng.choice(LABELS)
        if wrong_on.get(i // 180) == actual:
            predicted = "offer"
        else:
            predicted = actual if rng.random() < 0.92 else rng.choice([label for label in LABELS if label != actual])
        pipeline.prediction(prediction(f"d{i}", predicted, received))
        pipeline.truth(truth(f"d{i}", actual, received + rng.randrange(30 * MINUTE)))
        pipeline.advance(received)
    pipeline.advance(2**63 - 1)
    return pipeline


def recall(report: dict, label: str) -> float:
    return next(c["recall"] for c in report["per_class"] if c["label"] == label)


def test_a_healthy_model_raises_no_alert():
    pipeline = run_model(seed=5, hours=10, wrong_on={})
    assert pipeline.of("alerts") == [] and pipeline.of("retraining_requests") == []
    assert min(r["macro_f1"] for r in pipeline.of("metrics") if r["count"] >= 100) > 0.85


def test_a_model_wrong_on_one_class_raises_exactly_one_alert_and_one_retraining_request():
    pipeline = run_model(seed=5, hours=10, wrong_on={h: "invoice" for h in range(4, 10)})
    reports = {r["window_end_ms"]: r for r in pipeline.of("metrics")}
    healthy, degraded = reports[T0 + 3 * HOUR_MS], reports[T0 + 8 * HOUR_MS]
    assert recall(healthy, "invoice") > 0.85 and recall(degraded, "invoice") == 0.0
    assert healthy["macro_f1"] > 0.85 > 0.8 > degraded["macro_f1"]

    (alert,) = pipeline.of("alerts")
    (request,) = pipeline.of("retraining_requests")
    assert (alert["kind"], alert["metric"], alert["severity"], alert["model_version"]) == ("macro_f1_drop", "macro_f1", "CRITICAL", "3")
    assert T0 + 4 * HOUR_MS < alert["window_end_ms"] <= T0 + 5 * HOUR_MS and alert["value"] < 0.8 == alert["threshold"]
    assert request["alert_id"] == alert["alert_id"] and request["weakest_labels"][0] == "invoice"
    assert request["labelled_pairs"] >= 100 and "invoice (recall" in alert["message"]
    assert codec.decode(codec.encode("alert", alert), expected="alert").record == alert
    assert codec.decode(codec.encode("retraining_request", request), expected="retraining_request").record == request


def test_the_alert_re_arms_after_recovery():
    pipeline = run_model(seed=6, hours=12, wrong_on={**{h: "invoice" for h in range(2, 4)}, **{h: "complaint" for h in range(8, 10)}})
    alerts = pipeline.of("alerts")
    assert len(alerts) == 2 and alerts[0]["alert_id"] != alerts[1]["alert_id"]
    assert alerts[0]["window_end_ms"] < T0 + 5 * HOUR_MS < T0 + 8 * HOUR_MS < alerts[1]["window_end_ms"]


def test_too_little_support_never_alerts():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0, min_support=50))
    for i in range(49):
        pipeline.prediction(prediction(f"d{i}", "offer", T0 + i))
        pipeline.truth(truth(f"d{i}", "invoice", T0 + i + 1))
    pipeline.advance(2**63 - 1)
    assert pipeline.of("metrics")[0]["accuracy"] == 0.0 and pipeline.of("alerts") == []


# --- keys, Redis, state ----------------------------------------------------------------------


def test_redis_mapping_is_one_bounded_hash_per_model_version_and_orphans_have_their_own():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0))
    for i in range(3000):
        pipeline.prediction(prediction(f"d{i}", "invoice", T0 + i * MINUTE))
        pipeline.truth(truth(f"d{i}", "invoice", T0 + i * MINUTE + 1))
    pipeline.truth(truth("ghost", "offer", T0))
    pipeline.advance(T0 + 3000 * MINUTE)
    for i in range(3000):
        pipeline.join_states[f"d{i}"], events = pipeline.joiner.on_timer(pipeline.join_states[f"d{i}"], T0 + 30 * 24 * HOUR_MS)
        pipeline.feed(events)
    pipeline.join_states["ghost"], events = pipeline.joiner.on_timer(pipeline.join_states["ghost"], T0 + HOUR_MS)
    pipeline.feed(events)
    tracker, state = pipeline.tracker, pipeline.states[MODEL]
    assert tracker.redis_key(state) == "mailroom:accuracy:mailroom-text:3"
    assert tracker.redis_key(pipeline.states[UNATTRIBUTED]) == "mailroom:accuracy:unattributed"
    mapping = tracker.redis_mapping(state, now_ms=123)
    assert set(mapping) == {"model_name", "model_version", "slot", "updated_ms", "window", "recent", "counts", "resolved_coverage",
                            "alerting"}
    assert all(isinstance(v, str) for v in mapping.values()) and len(mapping["recent"]) < 2000
    assert json.loads(mapping["window"])["window_end_ms"] == T0 + 50 * HOUR_MS and json.loads(mapping["recent"])["count"] == 1000
    assert json.loads(mapping["counts"]) == {"Predicted": 3000, "Matched": 3000} and mapping["resolved_coverage"] == "1.0"
    assert json.loads(tracker.redis_mapping(pipeline.states[UNATTRIBUTED], 0)["counts"]) == {"OrphanTruth": 1}


def test_state_is_picklable_and_config_is_checked():
    pipeline = Pipeline(MetricsConfig())
    pipeline.prediction(prediction("d1", "invoice", T0))
    pipeline.truth(truth("d1", "invoice", T0 + 1))
    state = pipeline.states[MODEL]
    assert pickle.loads(pickle.dumps(state)) == state and pickle.loads(pickle.dumps(pipeline.panes)) == pipeline.panes
    with pytest.raises(ValueError):
        MetricsConfig(window_ms=HOUR_MS, slide_ms=7 * MINUTE)


# --- slots -----------------------------------------------------------------------------------


def test_each_slot_of_a_model_version_has_its_own_figures_and_only_the_champion_is_judged():
    config = MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0, min_support=10)
    pipeline = Pipeline(config)
    prior = ("mailroom-text", "3", "prior")
    for i in range(60):  # the champion is right; when it missed its deadline the label prior said "other": always wrong here
        slot = prior if i % 3 == 0 else MODEL
        pipeline.prediction(prediction(f"d{i}", "other" if slot == prior else "invoice", T0 + i * MINUTE, slot))
        pipeline.truth(truth(f"d{i}", "invoice", T0 + i * MINUTE + 1))
    pipeline.advance(T0 + HOUR_MS)
    reports = {r["slot"]: r for r in pipeline.of("metrics")}
    assert (reports["champion"]["count"], reports["champion"]["accuracy"]) == (40, 1.0)
    assert (reports["prior"]["count"], reports["prior"]["accuracy"], reports["prior"]["model_version"]) == (20, 0.0, "3")
    assert pipeline.of("alerts") == [] and pipeline.of("retraining_requests") == []  # the prior's answers blame no model
    assert codec.decode(codec.encode("accuracy_report", reports["prior"]), expected="accuracy_report").record == reports["prior"]
    tracker = pipeline.tracker
    assert tracker.redis_key(pipeline.states[MODEL]) == "mailroom:accuracy:mailroom-text:3"
    assert tracker.redis_key(pipeline.states[prior]) == "mailroom:accuracy:mailroom-text:3:prior"
    assert tracker.redis_mapping(pipeline.states[prior], 0)["slot"] == "prior"


def test_a_v1_accuracy_report_reads_as_the_champion():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0))
    pipeline.prediction(prediction("d1", "invoice", T0))
    (report,) = [o.record for o in pipeline.advance(T0 + HOUR_MS)]
    old = codec.encode("accuracy_report", {k: v for k, v in report.items() if k != "slot"}, version=1)
    assert codec.decode(old, expected="accuracy_report").record == report


# --- champion vs challenger = scikit-learn on the same documents -----------------------------

PAIR = ("text", "mailroom-text", "3", "mailroom-text", "4")


def shadow(doc_id: str, champion: str, challenger: str, received_ms: int) -> dict:
    return {"doc_id": doc_id, "kind": "text", "received_ms": received_ms, "scored_ms": received_ms + 50, "champion_model": "mailroom-text",
            "champion_version": "3", "champion_label": champion, "champion_probabilities": {}, "champion_latency_ms": 1.0,
            "challenger_model": "mailroom-text", "challenger_version": "4", "challenger_label": challenger,
            "challenger_probabilities": {}, "challenger_latency_ms": 1.0}


def assert_paired_matches_sklearn(report: dict, y_true: list[str], champion: list[str], challenger: list[str]) -> None:
    """The paired counts, and each side's figures, from scikit-learn on exactly the same documents."""
    assert report["count"] == len(y_true)
    right = [(a == t, b == t) for t, a, b in zip(y_true, champion, challenger)]
    assert (report["both_right"], report["only_champion_right"], report["only_challenger_right"], report["both_wrong"]) == (
        right.count((True, True)), right.count((True, False)), right.count((False, True)), right.count((False, False)))
    for side, y_pred in (("champion", champion), ("challenger", challenger)):
        figs = report[side]
        assert figs["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert figs["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
        labels = [c["label"] for c in figs["per_class"]]
        assert sorted(labels) == sorted(set(y_true) | set(y_pred))
        per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        assert [c["f1"] for c in figs["per_class"]] == pytest.approx(list(per_class))


def test_paired_figures_equal_sklearn_on_random_documents():
    rng = random.Random(8)
    for _ in range(100):
        pool, y_true = random_truths(rng)
        champion, challenger = answers(rng, pool, y_true, 0.8), answers(rng, pool, y_true, 0.6)
        assert_paired_matches_sklearn(paired_figures(Counter(zip(y_true, champion, challenger))), y_true, champion, challenger)
    assert paired_figures({}) == {"count": 0, "both_right": 0, "only_champion_right": 0, "only_challenger_right": 0, "both_wrong": 0,
                                  "champion": {"accuracy": None, "macro_f1": None, "per_class": []},
                                  "challenger": {"accuracy": None, "macro_f1": None, "per_class": []}}


def random_shadow_stream(rng: random.Random, docs: int, span_ms: int):
    """Shadow pairs over `span_ms`; 70% get truth within 40 minutes (10% of those corrected), 5%
    only after the wait; plus truths for documents outside the sample. Sorted by event time."""
    records, final = [], {}
    for i in range(docs):
        doc, received, actual = f"s{i}", T0 + rng.randrange(span_ms), rng.choice(LABELS)
        champion = actual if rng.random() < 0.8 else rng.choice(LABELS)
        challenger = actual if rng.random() < 0.7 else rng.choice(LABELS)
        records.append(shadow(doc, champion, challenger, received))
        final[doc] = {"received": received, "champion": champion, "challenger": challenger, "actual": None}
        draw = rng.random()
        if draw < 0.7:
            first = actual if rng.random() < 0.9 else rng.choice(LABELS)
            records.append(truth(doc, first, received + rng.randrange(40 * MINUTE), "CONFIRM"))
            final[doc]["actual"] = first
            if first != actual:
                records.append(truth(doc, actual, received + 40 * MINUTE + rng.randrange(10 * MINUTE), "CORRECT"))
                final[doc]["actual"] = actual
        elif draw < 0.75:
            records.append(truth(doc, actual, received + 3 * HOUR_MS))  # after the 2 h wait: late, never counted
    records += [truth(f"unsampled{i}", rng.choice(LABELS), T0 + rng.randrange(span_ms)) for i in range(docs // 2)]
    records.sort(key=lambda r: r.get("sent_ms", r.get("received_ms")))
    return records, final


@pytest.mark.parametrize("panes", [dict, PickledMap], ids=["dict", "map-state"])
def test_every_shadow_window_and_the_last_n_equal_sklearn_on_the_same_documents(panes):
    rng = random.Random(9)
    config = MetricsConfig(window_ms=HOUR_MS, slide_ms=15 * MINUTE, settle_ms=HOUR_MS, last_n=200)
    pipeline = Pipeline(config, panes, shadow=True)
    pipeline.joiner = ShadowJoiner(replace(pipeline.joiner.config, truth_wait_ms=2 * HOUR_MS))
    records, final = random_shadow_stream(rng, 1200, 6 * HOUR_MS)
    matched = {}
    for record in records:
        if "challenger_label" in record:
            pipeline.prediction(record)
        else:
            before = len(pipeline.events)
            pipeline.truth(record)
            for event in pipeline.events[before:]:
                if isinstance(event, (Matched, Corrected)):
                    pair = event.pair if isinstance(event, Matched) else event.new
                    matched[pair.doc_id] = (pair.actual, pair.champion_label, pair.challenger_label)  # a correction keeps its place
        pipeline.advance(record.get("received_ms", record.get("sent_ms")) - 5 * MINUTE)
    for doc_id, join_state in list(pipeline.join_states.items()):
        pipeline.join_states[doc_id], events = pipeline.joiner.on_timer(join_state, 2**63 - 1)
        pipeline.feed(events)
    pipeline.advance(2**63 - 1)
    reports = pipeline.of("metrics")
    assert len(reports) == 6 * 4 + 3 and set(pipeline.states) == {PAIR}
    for report in reports:
        in_window = [d for d in final.values() if report["window_start_ms"] <= d["received"] < report["window_end_ms"]]
        labelled = [d for d in in_window if d["actual"] is not None]
        assert report["shadow_pairs"] == len(in_window)
        assert report["label_coverage"] == pytest.approx(len(labelled) / len(in_window))
        assert_paired_matches_sklearn(report, *([d[k] for d in labelled] for k in ("actual", "champion", "challenger")))
        assert codec.decode(codec.encode("shadow_report", report), expected="shadow_report").record == report
    state = pipeline.states[PAIR]
    assert state.counts["LateTruth"] > 0 and "OrphanTruth" not in state.counts  # truths outside the sample are not counted
    last = list(matched.values())[-200:]
    summary = pipeline.tracker.recent_summary(state)
    assert_paired_matches_sklearn(summary, *([row[i] for row in last] for i in range(3)))


def test_a_shadow_pair_has_one_bounded_dashboard_hash():
    pipeline = Pipeline(MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS, settle_ms=0, last_n=100), shadow=True)
    for i in range(300):
        pipeline.prediction(shadow(f"s{i}", "invoice", "offer" if i % 2 else "invoice", T0 + i * MINUTE))
        pipeline.truth(truth(f"s{i}", "invoice", T0 + i * MINUTE + 1))
    pipeline.advance(T0 + 300 * MINUTE)
    tracker, state = pipeline.tracker, pipeline.states[PAIR]
    assert tracker.redis_key(state) == "mailroom:shadow:text:mailroom-text:3:mailroom-text:4"
    mapping = tracker.redis_mapping(state, now_ms=123)
    assert set(mapping) == {"kind", "champion_model", "champion_version", "challenger_model", "challenger_version", "updated_ms", "window",
                            "recent", "counts", "resolved_coverage"}
    recent, window = json.loads(mapping["recent"]), json.loads(mapping["window"])
    assert (recent["count"], recent["both_right"], recent["only_champion_right"]) == (100, 50, 50)
    assert recent["champion"]["accuracy"] == 1.0 and recent["challenger"]["accuracy"] == 0.5
    assert window["window_end_ms"] == T0 + 5 * HOUR_MS and window["count"] == 60
    assert json.loads(mapping["counts"]) == {"Predicted": 300, "Matched": 300}
    assert pickle.loads(pickle.dumps(state)) == state
