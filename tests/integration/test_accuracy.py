"""The accuracy job on the real stack: predictions joined with delayed ground truth in either
order, late truth counted not matched, figures equal to scikit-learn's, a planted degradation
alerting, a crash + restart counting no pair twice, and champion vs challenger judged on the
same documents (shadow pairs joined with their truth)."""

from __future__ import annotations

import json
import random
import time
import urllib.request

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from config.flinkconf import embedded_ui_port
from jobs.environment import latest_checkpoint
from mailroom.kafkautil import producer, read_topic
from mailroom.submit import run_job, start_job, stop_job
from schemas.labels import DEPARTMENTS, LABELS
from schemas.redis_keys import ACCURACY_NAMESPACE, SHADOW_NAMESPACE, accuracy_key, shadow_key
from schemas.topics import topic_name
from schemas.units import HOUR_MS
from schemas import codec

BASE_MS = 1_790_000_000_000

ONE_WINDOW = ["--window-ms", str(24 * HOUR_MS), "--slide-ms", str(24 * HOUR_MS), "--settle-ms", "0"]


def _prediction(doc_id: str, label: str, at_ms: int, version: str = "1") -> dict:
    return {"doc_id": doc_id, "sender": "s@example", "content_type": "TEXT", "label": label,
            "probabilities": {label: 0.9}, "model_name": "mailroom-text", "model_version": version, "feature_set_id": "sender-v1",
            "department": DEPARTMENTS[label], "received_ms": at_ms, "scored_ms": at_ms + 50, "latency_ms": 50, "features": {}}


def _truth(doc_id: str, label: str, sent_ms: int, kind: str = "CONFIRM") -> dict:
    return {"doc_id": doc_id, "label": label, "department": DEPARTMENTS[label], "sent_ms": sent_ms, "kind": kind, "comment": None}


def _send(settings, key: str, record_type: str, records: list[dict]) -> None:
    prod = producer(settings)
    for record in records:
        prod.send(topic_name(key, settings.topic_prefix), codec.encode(record_type, record), key=record["doc_id"].encode())
    prod.flush()
    prod.close()


def _read(settings, key: str, min_count: int = 0, timeout_s: float = 60) -> list[dict]:
    return [codec.decode(r.value).record for r in read_topic(settings, topic_name(key, settings.topic_prefix), min_count, timeout_s)]


def _stream(n: int, wrong_on: str | None, seed: int, version: str = "1", prefix: str = "d"):
    """n predictions a minute apart, right 90% of the time (always wrong on `wrong_on`), + truths."""
    rng = random.Random(seed)
    predictions, truths = [], []
    for i in range(n):
        actual = LABELS[i % len(LABELS)]
        if actual == wrong_on:
            predicted = "offer" if actual != "offer" else "other"
        else:
            predicted = actual if rng.random() < 0.9 else rng.choice(LABELS)
        at = BASE_MS + i * 60_000
        predictions.append(_prediction(f"{prefix}{i}", predicted, at, version))
        truths.append(_truth(f"{prefix}{i}", actual, at + rng.randint(1_000, 3 * HOUR_MS)))
    return predictions, truths


def test_join_in_either_order_late_truth_and_figures_match_sklearn(pipeline_settings):
    settings = pipeline_settings
    predictions, truths = _stream(300, wrong_on=None, seed=1)
    for i in range(0, 300, 2):  # every other truth comes first, in event time and on the wire
        truths[i]["sent_ms"] = predictions[i]["received_ms"] - 30_000
    late = [_truth(f"late{i}", "invoice", BASE_MS + i * 60_000 + 5 * HOUR_MS) for i in range(5)]  # after the wait
    late_predictions = [_prediction(f"late{i}", "invoice", BASE_MS + i * 60_000) for i in range(5)]
    orphans = [_truth(f"orphan{i}", "complaint", BASE_MS + i) for i in range(3)]
    _send(settings, "ground_truth", "ground_truth", [t for i, t in enumerate(truths) if i % 2 == 0])
    _send(settings, "predictions", "prediction", predictions + late_predictions)
    _send(settings, "ground_truth", "ground_truth", [t for i, t in enumerate(truths) if i % 2] + late + orphans)
    prod = producer(settings)  # a department tool writing garbage: dead-lettered, the join goes on
    prod.send(topic_name("ground_truth", settings.topic_prefix), b"not a ground truth record", partition=0).get(10)
    prod.close()

    # Truths here come up to 3 h out of order, close to the 3.5 h wait, and each topic is read a
    # partition at a time: a bounded run ends no wait before all of its input is read.
    result = run_job(settings, "jobs.accuracy", ["--bounded", "--group-id", f"{settings.topic_prefix}accuracy", "--truth-wait-ms",
                                                 str(2 * HOUR_MS + 3 * HOUR_MS // 2), *ONE_WINDOW],
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    examples = _read(settings, "labelled_examples", min_count=300)
    assert sorted(e["doc_id"] for e in examples) == sorted(p["doc_id"] for p in predictions)  # each matched once, late ones never
    reports = [r for r in _read(settings, "metrics", min_count=1) if r["model_name"] == "mailroom-text"]
    assert len(reports) == 1
    report = reports[0]
    y_true, y_pred = [e["true_label"] for e in examples], [e["predicted_label"] for e in examples]
    assert report["count"] == 300 and report["predictions"] == 305
    assert report["label_coverage"] == pytest.approx(300 / 305)
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    per_class = {c["label"]: c for c in report["per_class"]}
    for label in set(y_true):
        assert per_class[label]["recall"] == pytest.approx(recall_score(y_true, y_pred, labels=[label], average="macro", zero_division=0))

    dashboard = settings.redis_client().hgetall(accuracy_key(ACCURACY_NAMESPACE, "mailroom-text", "1"))
    counts = json.loads(dashboard[b"counts"])
    assert counts["LateTruth"] == 5 and counts["Matched"] == 300 and counts["Unmatched"] == 5
    orphaned = json.loads(settings.redis_client().hget(accuracy_key(ACCURACY_NAMESPACE, "", ""), "counts"))
    assert orphaned["OrphanTruth"] == 3
    [letter] = _read(settings, "dead_letters", min_count=1)
    assert (letter["reason"], letter["job"], letter["original"]) == ("PROCESSING_ERROR", "accuracy", b"not a ground truth record")
    assert letter["source_topic"] == topic_name("ground_truth", settings.topic_prefix)


def test_planted_degradation_alerts_and_a_healthy_model_does_not(pipeline_settings):
    settings = pipeline_settings
    healthy, healthy_truth = _stream(350, wrong_on=None, seed=2, version="1", prefix="h")
    broken, broken_truth = _stream(350, wrong_on="invoice", seed=3, version="2", prefix="b")
    _send(settings, "predictions", "prediction", healthy + broken)
    _send(settings, "ground_truth", "ground_truth", healthy_truth + broken_truth)
    result = run_job(settings, "jobs.accuracy", ["--bounded", "--group-id", f"{settings.topic_prefix}accuracy", *ONE_WINDOW, "--min-support", "100", "--min-macro-f1", "0.85"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    reports = {r["model_version"]: r for r in _read(settings, "metrics", min_count=2)}
    recall = {v: {c["label"]: c["recall"] for c in r["per_class"]} for v, r in reports.items()}
    assert recall["2"]["invoice"] == 0 and recall["1"]["invoice"] > 0.7
    assert reports["2"]["macro_f1"] < 0.85 <= reports["1"]["macro_f1"]
    alerts = _read(settings, "alerts", min_count=1)
    assert [(a["model_version"], a["metric"]) for a in alerts] == [("2", "macro_f1")]
    requests = _read(settings, "retraining_requests", min_count=1)
    assert [r["model_version"] for r in requests] == ["2"]


def test_crash_and_restart_counts_no_pair_twice(pipeline_settings, tmp_path):
    """The job (its waits in RocksDB) killed after a checkpoint and resumed from it: every pair once."""
    settings = pipeline_settings
    predictions, truths = _stream(400, wrong_on=None, seed=4)
    group = f"{settings.topic_prefix}accuracy"
    args = ["--group-id", group, *ONE_WINDOW, "--out-of-orderness-ms", str(4 * HOUR_MS)]  # truths come up to 3 h out of order
    job = start_job(settings, "jobs.accuracy", args, tmp_path / "first.log")
    try:
        _send(settings, "predictions", "prediction", predictions[:200])
        _send(settings, "ground_truth", "ground_truth", truths[:200])
        deadline = time.monotonic() + 180
        while not (latest_checkpoint(settings, "accuracy") and len(_read(settings, "labelled_examples", timeout_s=1)) >= 100):
            assert time.monotonic() < deadline and job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(1)
        base = f"http://{settings.host}:{embedded_ui_port(settings, 'accuracy')}"
        job_id = json.load(urllib.request.urlopen(f"{base}/jobs/overview", timeout=5))["jobs"][0]["jid"]
        config = json.load(urllib.request.urlopen(f"{base}/jobs/{job_id}/checkpoints/config", timeout=5))
        assert config["state_backend"] == "EmbeddedRocksDBStateBackend", config  # the waits live on disk (jobs.environment)
        _send(settings, "predictions", "prediction", predictions[200:300])
        _send(settings, "ground_truth", "ground_truth", truths[200:300])
    finally:
        stop_job(job)
    checkpoint = latest_checkpoint(settings, "accuracy")
    _send(settings, "predictions", "prediction", predictions[300:])
    _send(settings, "ground_truth", "ground_truth", truths[300:])
    resumed = start_job(settings, "jobs.accuracy", [*args, "--restore-from", str(checkpoint)], tmp_path / "second.log")
    try:
        examples = _read(settings, "labelled_examples", min_count=400, timeout_s=180)
    finally:
        stop_job(resumed)
    ids = [e["doc_id"] for e in examples]
    assert len(ids) == len(set(ids)) == 400


def test_shadow_pairs_are_judged_against_their_truth_and_the_paired_counts_match_sklearn(pipeline_settings):
    settings = pipeline_settings
    rng = random.Random(5)
    challenger_version = settings.topic_prefix.rstrip(".")  # Redis is shared by every test: a key of this test's own
    shadows, truths, final = [], [], {}
    for i in range(240):
        actual, at = LABELS[i % len(LABELS)], BASE_MS + i * 60_000
        champion = actual if rng.random() < 0.85 else rng.choice(LABELS)
        challenger = actual if rng.random() < 0.7 else rng.choice(LABELS)
        shadows.append({"doc_id": f"s{i}", "kind": "text", "received_ms": at, "scored_ms": at + 40, "champion_model": "mailroom-text",
                        "champion_version": "1", "champion_label": champion, "champion_probabilities": {champion: 0.9},
                        "champion_latency_ms": 2.5, "challenger_model": "mailroom-text", "challenger_version": challenger_version,
                        "challenger_label": challenger, "challenger_probabilities": {challenger: 0.8}, "challenger_latency_ms": 3.5})
        if i % 5 == 4:
            continue  # no ground truth (yet): lowers label coverage
        first = actual if i % 9 else "other"  # a clerk's wrong verdict, corrected by a reviewer
        truths.append(_truth(f"s{i}", first, at + rng.randint(-20_000, HOUR_MS)))
        if first != actual:
            truths.append(_truth(f"s{i}", actual, truths[-1]["sent_ms"] + 60_000, "CORRECT"))
        final[f"s{i}"] = (actual, champion, challenger)
    truths += [_truth(f"unsampled{i}", "invoice", BASE_MS + i * 60_000) for i in range(30)]  # documents outside the sample
    _send(settings, "shadow_predictions", "shadow_prediction", shadows[:120])
    _send(settings, "ground_truth", "ground_truth", sorted(truths, key=lambda t: t["sent_ms"]))
    _send(settings, "shadow_predictions", "shadow_prediction", shadows[120:])  # the rest of the pairs after their truth

    result = run_job(settings, "jobs.accuracy", ["--bounded", "--group-id", f"{settings.topic_prefix}accuracy", *ONE_WINDOW],
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    decoded = [codec.decode(r.value) for r in read_topic(settings, topic_name("metrics", settings.topic_prefix), 1, 60)]
    (report,) = [d.record for d in decoded if d.record_type == "shadow_report"]
    y_true, y_champion, y_challenger = (list(column) for column in zip(*final.values()))
    champion_right = [c == t for t, c in zip(y_true, y_champion)]
    challenger_right = [c == t for t, c in zip(y_true, y_challenger)]
    (both, only_champion), (only_challenger, neither) = confusion_matrix(champion_right, challenger_right, labels=[True, False]).tolist()
    assert (report["both_right"], report["only_champion_right"], report["only_challenger_right"], report["both_wrong"]) == (
        both, only_champion, only_challenger, neither)
    assert (report["shadow_pairs"], report["count"]) == (240, len(final)) and report["label_coverage"] == pytest.approx(len(final) / 240)
    for side, y_pred in (("champion", y_champion), ("challenger", y_challenger)):
        assert report[side]["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert report[side]["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))

    client = settings.redis_client()
    key = shadow_key(SHADOW_NAMESPACE, "text", "mailroom-text", "1", "mailroom-text", challenger_version)
    counts = json.loads(client.hget(key, "counts"))
    assert (counts["Predicted"], counts["Matched"], counts["Unmatched"], counts["Corrected"]) == (240, len(final), 240 - len(final),
                                                                                               len(truths) - 30 - len(final))
    assert json.loads(client.hget(key, "recent"))["count"] == len(final) and 0 < client.ttl(key) <= 7 * 24 * 3600
