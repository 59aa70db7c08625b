"""The scoring job on the real stack: documents end to end into department topics exactly
once; sender features in Flink and in Redis; a Redis outage mid-run; a model trained on
another feature set refused at start-up."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter

import pytest

from mailroom.kafkautil import producer, read_topic
from mailroom.produce import DocumentProducer
from mailroom.stack import Redis
from mailroom.submit import run_job, start_job, stop_job
from schemas.labels import DEPARTMENTS
from schemas.redis_keys import mirror_stats_key, sender_key
from schemas.topics import department_topic_key, topic_name
from models.generator import generate
from schemas import codec
from tests.poison import ocr_breaking_scan, poison_document, poison_text_model, routed_values, unreadable_scan
from tests.unit.badinputs import text_document
from tests.unit.test_codec import _apache_read
from models.features import FEATURE_SET_ID
from udfs.routing import Router, RouterConfig
from udfs.scoring import ScoringConfig


def _predictions(settings, count: int, timeout_s: float = 120) -> list[dict]:
    records = read_topic(settings, topic_name("predictions", settings.topic_prefix), min_count=count, timeout_s=timeout_s)
    return [codec.decode(r.value, expected="prediction").record for r in records]


def _department_records(settings) -> dict[str, list[dict]]:
    return {
        dept: [codec.decode(r.value).record for r in read_topic(settings, topic_name(department_topic_key(label), settings.topic_prefix), timeout_s=2)]
        for label, dept in DEPARTMENTS.items()
    }


def _send_routed(settings, docs: list[dict]) -> None:
    """Route documents with the router's own logic and put them, in order, on one partition."""
    router, prod = Router(RouterConfig()), producer(settings)
    for offset, doc in enumerate(docs):
        result = router.route(codec.encode("document", doc), "test", 0, offset, doc["received_ms"])
        assert result.destination.value == "routed_text", result.message
        prod.send(topic_name("routed_text", settings.topic_prefix), result.value, partition=0)
    prod.flush()
    prod.close()


def _transactional_ids(settings, prefix: str) -> list[str]:
    """Every transactional id the broker keeps that starts with `prefix` (it keeps each for 7 days)."""
    from mailroom.kafkautil import admin

    client = admin(settings)
    try:
        return [t.transactional_id for listings in client.list_transactions().values() for t in listings
                if t.transactional_id.startswith(prefix)]
    finally:
        client.close()


def test_documents_end_to_end_into_department_topics_exactly_once(pipeline_settings):
    settings = pipeline_settings
    docs = list(generate(400, seed=23))
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    truth = {d["doc_id"]: d["label"] for d in docs}
    with DocumentProducer(settings) as prod:
        assert prod.send_many(docs, progress=False).sent == len(docs)

    for job, group in (("jobs.router", "router"), ("jobs.scoring", "scoring")):
        result = run_job(settings, job, ["--bounded", "--group-id", f"{settings.topic_prefix}{group}"], timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    predictions = _predictions(settings, len(docs))
    assert sorted(p["doc_id"] for p in predictions) == sorted(truth)  # the log has every document, once
    departments = _department_records(settings)
    delivered = Counter(r["doc_id"] for records in departments.values() for r in records)
    assert set(delivered) == set(truth) and max(delivered.values()) == 1  # each in exactly one department topic

    config = ScoringConfig.from_registry(settings.registry_dir)
    champion_versions = {"mailroom-text": config.text_model.version, "mailroom-scan": config.scan_model.version,
                         "mailroom-image": config.image_model.version}
    logged = {p["doc_id"]: p for p in predictions}
    right = 0
    for dept, records in departments.items():
        for record in records:
            d, p = record["decision"], logged[record["doc_id"]]
            assert d["model_version"] == str(champion_versions[d["model_name"]]) and p["feature_set_id"] == FEATURE_SET_ID
            assert (d["label"], d["model_name"], d["probabilities"], record["department"]) == (p["label"], p["model_name"], p["probabilities"], dept)
            confident = d["confidence"] >= config.threshold("text" if d["model_name"] == "mailroom-text" else "scan")
            assert dept == (DEPARTMENTS[d["label"]] if confident else DEPARTMENTS["other"])
            if d["label"] == truth[record["doc_id"]] and confident:
                assert dept == DEPARTMENTS[truth[record["doc_id"]]]  # right model -> right department
                right += 1
    assert right > len(docs) * 0.6, f"only {right} of {len(docs)} routed to the right department"
    assert all(p["latency_ms"] >= 0 for p in predictions)
    raw = read_topic(settings, topic_name(department_topic_key("invoice"), settings.topic_prefix), timeout_s=2)[:20]
    assert raw and all(_apache_read(m.value) == codec.decode(m.value).record for m in raw)  # a reader that is not ours

    # each sink's subtask reused a few transactional ids over the run's checkpoints (every 500 ms), not one per checkpoint
    for group, sinks in (("router", 3), ("scoring", 11)):
        ids = _transactional_ids(settings, f"{settings.topic_prefix}{group}-")
        offsets = [int(name.rsplit("-", 1)[1]) for name in ids]
        assert ids and len(ids) <= 4 * sinks and max(offsets) < 4, sorted(ids)


def test_sender_features_in_flink_state_and_in_redis(pipeline_settings):
    settings = pipeline_settings
    sender = f"features@{settings.topic_prefix}example"
    start = int(time.time() * 1000) - 3 * 3_600_000
    gaps_s = [0, 60, 600, 2 * 3600]  # receipt times: start, +1 min, +11 min, +2 h 11 min
    times = [start + sum(gaps_s[: i + 1]) * 1000 for i in range(len(gaps_s))]
    docs = [text_document(f"{settings.topic_prefix}f{i}", text=f"Invoice {i} for 40 chairs, due in 30 days.", sender=sender, received_ms=t)
            for i, t in enumerate(times)]
    _send_routed(settings, docs)
    result = run_job(settings, "jobs.scoring", ["--bounded", "--group-id", f"{settings.topic_prefix}scoring"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    features = {p["doc_id"]: p["features"] for p in _predictions(settings, len(docs))}
    got = [features[d["doc_id"]] for d in docs]
    assert [f["sender_docs_1h"] for f in got] == [0, 1, 2, 0]  # the 4th comes 2 h after the 3rd
    assert [f["sender_docs_24h"] for f in got] == [0, 1, 2, 3]
    assert [f["sender_seen_log"] for f in got] == pytest.approx([math.log1p(n) for n in range(4)])
    assert [f["sender_gap_log_s"] for f in got] == pytest.approx([0, math.log1p(60), math.log1p(600), math.log1p(7200)])
    assert all(f["sender_scan_share"] == 0 for f in got)

    client = settings.redis_client()
    key = sender_key(ScoringConfig.redis_namespace, sender)
    cached = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    assert cached["feature_set_id"] == FEATURE_SET_ID and cached["docs"] == "4"
    assert float(cached["sender_gap_log_s"]) == pytest.approx(math.log1p(7200))  # the latest document's features
    assert 0 < client.ttl(key) <= ScoringConfig.redis_ttl_s


def test_redis_outage_mid_run_loses_nothing_and_mirroring_resumes(pipeline_settings, tmp_path):
    settings = pipeline_settings
    redis = Redis(settings)
    log = tmp_path / "scoring.log"
    batches = [[text_document(f"{settings.topic_prefix}{b}-{i}", text=f"Complaint {i}: the delivery was late again.",
                              sender=f"s{b}-{i % 7}@{settings.topic_prefix}example", received_ms=int(time.time() * 1000))
                for i in range(60)] for b in "abc"]
    job = start_job(settings, "jobs.scoring", ["--group-id", f"{settings.topic_prefix}scoring"], log, log_dir=tmp_path / "flink")
    try:
        _send_routed(settings, batches[0])
        assert len(_predictions(settings, 60, timeout_s=180)) == 60, log.read_text()[-3000:]
        redis.stop()
        _send_routed(settings, batches[1])
        assert len(_predictions(settings, 120, timeout_s=120)) == 120  # scoring goes on from Flink state
        redis.start()
        time.sleep(2)  # the mirror retries every second
        _send_routed(settings, batches[2])
        predictions = _predictions(settings, 180, timeout_s=120)
        client = settings.redis_client()
        deadline = time.monotonic() + 30
        while not client.exists(sender_key(ScoringConfig.redis_namespace, f"sc-0@{settings.topic_prefix}example")) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop_job(job)
    ids = [p["doc_id"] for p in predictions]
    assert len(ids) == len(set(ids)) == 180  # nothing lost, nothing twice
    assert client.exists(sender_key(ScoringConfig.redis_namespace, f"sc-0@{settings.topic_prefix}example"))  # mirroring resumed
    assert int(client.hget(mirror_stats_key(ScoringConfig.redis_namespace), "outages")) >= 1  # the outage is on record
    flink_log = "".join(p.read_text() for p in (tmp_path / "flink").glob("flink-*-python-*.log"))
    assert flink_log.count("Redis feature cache unavailable") == 1  # and logged once
    assert "Redis feature cache is back" in flink_log


def test_model_with_another_feature_set_is_refused_at_start(pipeline_settings, tmp_path):
    registry = tmp_path / "registry"
    shutil.copytree(pipeline_settings.registry_dir, registry)
    champion = ScoringConfig.from_registry(registry).text_model
    card_path = champion.onnx_path.parent / "card.json"
    card = json.loads(card_path.read_text())
    card["feature_set_id"] = "sender-v0"
    card_path.write_text(json.dumps(card))

    result = run_job(pipeline_settings, "jobs.scoring", ["--bounded", "--registry", str(registry)], timeout=300)
    assert result.returncode != 0
    assert "Refusing to start" in result.stderr and "'sender-v0'" in result.stderr and f"'{FEATURE_SET_ID}'" in result.stderr


def test_poison_records_are_dead_lettered_and_the_documents_around_them_scored(pipeline_settings, tmp_path):
    """A scan whose bytes are no image (its features raise) and a text the model raises on,
    sent among good documents through the real broker: both end in dead letters with their
    original bytes and coordinates, every other document is scored once, the books balance.
    A scan whose second page makes OCR raise is scored once by its layout, its reading FAILED."""
    settings = pipeline_settings
    docs = list(generate(40, seed=29, scan_share=0.4))
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    text_doc = next(d for d in docs if d["content_type"] == "text")
    routed = routed_values(docs[:10]) + routed_values([poison_document(text_doc, "poison-text")]) + routed_values(docs[10:])
    scan = next(v for v in routed if codec.decode(v).record["content_type"] == "IMAGE")
    routed.insert(20, unreadable_scan(scan, "poison-scan"))
    routed.insert(30, ocr_breaking_scan(scan, "poison-ocr"))
    prod, sent = producer(settings), {}
    for value in routed:
        record = codec.decode(value).record
        key = "routed_scans" if record["content_type"] == "IMAGE" else "routed_text"
        sent[record["doc_id"]] = (value, prod.send(topic_name(key, settings.topic_prefix), value, partition=0))
    prod.flush()
    where = {doc_id: (value, future.get(10)) for doc_id, (value, future) in sent.items()}
    prod.close()

    registry = poison_text_model(settings.registry_dir, tmp_path / "registry")
    result = run_job(settings, "jobs.scoring", ["--bounded", "--registry", str(registry)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    predictions = _predictions(settings, len(docs) + 1)
    assert sorted(p["doc_id"] for p in predictions) == sorted([d["doc_id"] for d in docs] + ["poison-ocr"])  # every good one, once
    [ocr_broken] = [p for p in predictions if p["doc_id"] == "poison-ocr"]
    assert ocr_broken["ocr_status"] == "FAILED" and ocr_broken["model_name"] != "mailroom-scan", ocr_broken
    letters = {r["doc_id"]: r for r in (codec.decode(m.value, expected="dead_letter").record
                                        for m in read_topic(settings, topic_name("dead_letters", settings.topic_prefix), min_count=2))}
    assert sorted(letters) == ["poison-scan", "poison-text"]
    for doc_id, letter in letters.items():
        value, metadata = where[doc_id]
        assert letter["reason"] == "PROCESSING_ERROR" and letter["job"] == "scoring"
        assert (letter["original"], letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
            value, metadata.topic, metadata.partition, metadata.offset)
    assert letters["poison-scan"]["message"].startswith("UnidentifiedImageError")
    assert "Gather" in letters["poison-text"]["message"]
    assert len(predictions) + len(letters) == len(routed)  # in = out + dead-lettered
