"""jobs.accuracy.build on a MiniCluster with bounded in-memory sources: no Kafka, no Redis."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, f1_score

from jobs.accuracy import build
from jobs.environment import make_env
from schemas import codec
from schemas.labels import DEPARTMENTS, LABELS
from schemas.units import HOUR_MS, MINUTE_MS
from tests.flink.harness import collect, kafka_rows
from udfs.joining import JoinConfig
from udfs.metrics import MetricsConfig

BASE_MS = 1_750_000_000_000


def _prediction(doc_id: str, label: str, at_ms: int) -> bytes:
    return codec.encode("prediction", {
        "doc_id": doc_id, "sender": "s@example", "content_type": "TEXT", "label": label, "probabilities": {label: 0.9},
        "model_name": "mailroom-text", "model_version": "1", "feature_set_id": "sender-v1", "department": DEPARTMENTS[label],
        "received_ms": at_ms, "scored_ms": at_ms + 50, "latency_ms": 50, "features": {}, "model_text": f"text of {doc_id}"})


def _truth(doc_id: str, label: str, sent_ms: int) -> bytes:
    return codec.encode("ground_truth", {"doc_id": doc_id, "label": label, "department": DEPARTMENTS[label], "sent_ms": sent_ms,
                                         "kind": "CONFIRM", "comment": None})


def _shadow(doc_id: str, champion: str, challenger: str, at_ms: int) -> bytes:
    return codec.encode("shadow_prediction", {
        "doc_id": doc_id, "kind": "text", "received_ms": at_ms, "scored_ms": at_ms + 50, "champion_model": "mailroom-text",
        "champion_version": "1", "champion_label": champion, "champion_probabilities": {champion: 0.9}, "champion_latency_ms": 2.0,
        "challenger_model": "mailroom-text", "challenger_version": "2", "challenger_label": challenger,
        "challenger_probabilities": {challenger: 0.8}, "challenger_latency_ms": 3.0})


def test_accuracy_build_joins_reports_and_dead_letters_what_it_cannot_read(test_settings):
    n = 40
    actual = [LABELS[i % len(LABELS)] for i in range(n)]
    predicted = [label if i % 4 else "other" for i, label in enumerate(actual)]  # wrong on every 4th
    predictions = [_prediction(f"d{i}", predicted[i], BASE_MS + i * MINUTE_MS) for i in range(n)]
    truths = [_truth(f"d{i}", actual[i], BASE_MS + i * MINUTE_MS + 10 * MINUTE_MS) for i in range(0, n, 2)]  # half answered
    truths.insert(3, b"\xc3\x01 not a ground truth")
    predictions.append(truths[0])  # a ground truth where a prediction belongs

    env = make_env(test_settings, "accuracy", parallelism=1)
    join = JoinConfig(truth_wait_ms=2 * HOUR_MS)
    metrics = MetricsConfig(window_ms=24 * HOUR_MS, slide_ms=24 * HOUR_MS, settle_ms=0, min_support=5)
    out = collect(build(kafka_rows(env, predictions, "predictions"), kafka_rows(env, truths, "truths"), kafka_rows(env, [], "shadows"),
                        join, metrics, out_of_orderness_ms=HOUR_MS, redis_ttl_s=60))

    examples = [codec.decode(v, expected="labelled_example").record for v in out["labelled_examples"]]
    answered = list(range(0, n, 2))
    assert sorted(e["doc_id"] for e in examples) == sorted(f"d{i}" for i in answered)  # every answered one, once
    assert all((e["model_kind"], e["model_text"]) == ("text", f"text of {e['doc_id']}") for e in examples)  # the model inputs, to train
    reports = [codec.decode(v, expected="accuracy_report").record for v in out["metrics"]]
    final = max(reports, key=lambda r: (r["window_end_ms"], r["reported_ms"]))
    assert final["count"] == len(answered) and final["slot"] == "champion"
    assert final["accuracy"] == accuracy_score([actual[i] for i in answered], [predicted[i] for i in answered])
    letters = sorted((codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]), key=lambda r: r["source_topic"])
    assert [(r["reason"], r["source_topic"], r["job"]) for r in letters] == [("PROCESSING_ERROR", "predictions", "accuracy"),
                                                                           ("PROCESSING_ERROR", "truths", "accuracy")]
    assert letters[1]["original"] == b"\xc3\x01 not a ground truth" and letters[1]["source_offset"] == 3
    assert letters[0]["message"].startswith("WrongRecordType")


def test_accuracy_build_reports_each_slot_and_the_shadow_pairs_against_their_truth(test_settings):
    n = 60
    actual = [LABELS[i % len(LABELS)] for i in range(n)]
    champion = [label if i % 5 else "other" for i, label in enumerate(actual)]  # wrong on every 5th
    challenger = [label if i % 3 else "offer" for i, label in enumerate(actual)]  # wrong on every 3rd (unless truly an offer)
    at = [BASE_MS + i * MINUTE_MS for i in range(n)]
    predictions = [_prediction(f"d{i}", champion[i], at[i]) for i in range(n)]
    prior = {**codec.decode(_prediction("p0", "other", at[0]), expected="prediction").record, "slot": "prior",
             "fallback_reason": "mailroom-text v1 missed the 500 ms deadline"}
    predictions.append(codec.encode("prediction", prior))
    sampled = [i for i in range(n) if i % 4]  # the challenger's shadow sample
    # one "partition" after the other, as a bounded run reads a backlog: event time goes back by an hour
    shadows = [_shadow(f"d{i}", champion[i], challenger[i], at[i]) for i in sorted(sampled, key=lambda i: i % 2)]
    shadows.insert(5, b"\xc3\x01 not a shadow pair")
    answered = [i for i in range(n) if i % 6]  # some shadow pairs get no truth
    truths = [_truth(f"d{i}", actual[i], at[i] + 10 * MINUTE_MS) for i in answered] + [_truth("p0", "invoice", at[0] + MINUTE_MS)]
    truths.sort(key=lambda v: codec.decode(v).record["sent_ms"])

    env = make_env(test_settings, "accuracy", parallelism=1)
    join = JoinConfig(truth_wait_ms=2 * HOUR_MS)
    metrics = MetricsConfig(window_ms=24 * HOUR_MS, slide_ms=24 * HOUR_MS, settle_ms=0, min_support=5)
    out = collect(build(kafka_rows(env, predictions, "predictions"), kafka_rows(env, truths, "truths"), kafka_rows(env, shadows, "shadows"),
                        join, metrics, out_of_orderness_ms=None, redis_ttl_s=60))

    decoded = [codec.decode(v) for v in out["metrics"]]
    reports = {r.record["slot"]: r.record for r in decoded if r.record_type == "accuracy_report"}
    assert set(reports) == {"champion", "prior"} and (reports["prior"]["count"], reports["prior"]["accuracy"]) == (1, 0.0)
    assert reports["champion"]["count"] == len(answered)
    (shadow_report,) = [r.record for r in decoded if r.record_type == "shadow_report"]
    labelled = [i for i in sampled if i in answered]
    y_true, y_champion, y_challenger = ([ys[i] for i in labelled] for ys in (actual, champion, challenger))
    right = [(c == t, h == t) for t, c, h in zip(y_true, y_champion, y_challenger)]
    assert (shadow_report["both_right"], shadow_report["only_champion_right"], shadow_report["only_challenger_right"],
            shadow_report["both_wrong"]) == (right.count((True, True)), right.count((True, False)), right.count((False, True)),
                                             right.count((False, False)))
    assert (shadow_report["shadow_pairs"], shadow_report["count"]) == (len(sampled), len(labelled))
    assert (shadow_report["champion_version"], shadow_report["challenger_version"], shadow_report["kind"]) == ("1", "2", "text")
    for side, y_pred in (("champion", y_champion), ("challenger", y_challenger)):
        assert shadow_report[side]["accuracy"] == accuracy_score(y_true, y_pred)
        assert abs(shadow_report[side]["macro_f1"] - f1_score(y_true, y_pred, average="macro", zero_division=0)) < 1e-12
    (letter,) = [codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]]
    assert (letter["reason"], letter["source_topic"], letter["source_offset"]) == ("PROCESSING_ERROR", "shadows", 5)
    assert len(out["labelled_examples"]) == len(answered) + 1  # from the predictions only
    pairs = sorted((codec.decode(v, expected="labelled_shadow_pair").record for v in out["labelled_shadow_pairs"]), key=lambda r: r["doc_id"])
    assert [p["doc_id"] for p in pairs] == sorted(f"d{i}" for i in labelled)  # one per labelled shadow pair, for the judge
    for p in pairs:
        i = int(p["doc_id"][1:])
        assert (p["true_label"], p["champion_label"], p["challenger_label"]) == (actual[i], champion[i], challenger[i])
        assert (p["champion_latency_ms"], p["challenger_latency_ms"], p["revision"], p["kind"]) == (2.0, 3.0, 0, "text")
