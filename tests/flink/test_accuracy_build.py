"""jobs.accuracy.build on a MiniCluster with bounded in-memory sources: no Kafka, no Redis."""

from __future__ import annotations

from sklearn.metrics import accuracy_score

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
        "received_ms": at_ms, "scored_ms": at_ms + 50, "latency_ms": 50, "features": {}})


def _truth(doc_id: str, label: str, sent_ms: int) -> bytes:
    return codec.encode("ground_truth", {"doc_id": doc_id, "label": label, "department": DEPARTMENTS[label], "sent_ms": sent_ms,
                                         "kind": "CONFIRM", "comment": None})


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
    out = collect(build(kafka_rows(env, predictions, "predictions"), kafka_rows(env, truths, "truths"), join, metrics,
                        out_of_orderness_ms=HOUR_MS, redis_ttl_s=60))

    examples = [codec.decode(v, expected="labelled_example").record for v in out["labelled_examples"]]
    answered = list(range(0, n, 2))
    assert sorted(e["doc_id"] for e in examples) == sorted(f"d{i}" for i in answered)  # every answered one, once
    reports = [codec.decode(v, expected="accuracy_report").record for v in out["metrics"]]
    final = max(reports, key=lambda r: (r["window_end_ms"], r["reported_ms"]))
    assert final["count"] == len(answered)
    assert final["accuracy"] == accuracy_score([actual[i] for i in answered], [predicted[i] for i in answered])
    letters = sorted((codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]), key=lambda r: r["source_topic"])
    assert [(r["reason"], r["source_topic"], r["job"]) for r in letters] == [("PROCESSING_ERROR", "predictions", "accuracy"),
                                                                           ("PROCESSING_ERROR", "truths", "accuracy")]
    assert letters[1]["original"] == b"\xc3\x01 not a ground truth" and letters[1]["source_offset"] == 3
    assert letters[0]["message"].startswith("WrongRecordType")
