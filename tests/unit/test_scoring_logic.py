"""The scoring job's plain logic without Flink: MicroBatcher, IdleSenderRule, SenderFeatures,
BatchScorer (isolating the documents a model raises on), the failure budget and dead letters."""

from __future__ import annotations

import time

import pytest

from models.features import FEATURE_SET_ID, SENDER_FEATURES, SenderHistory
from schemas import codec
from schemas.labels import DEPARTMENTS
from tests.poison import poison_document, poison_text_model, routed_values, unreadable_scan
from udfs.batching import MicroBatcher
from udfs.dead_letters import MAX_MESSAGE_CHARS, FailureBudget, FailureStorm, SourceRecord, processing_error
from udfs.scoring import BatchScorer, IdleSenderRule, ScoringConfig, SenderFeatures
from models.generator import generate


# --- MicroBatcher ------------------------------------------------------------------------------


def test_micro_batcher_flushes_at_size_and_sets_one_timer_per_buffer():
    batcher = MicroBatcher(batch_size=4, max_delay_ms=100)
    steps = [batcher.added("a", now_ms=10 + i) for i in range(4)]
    assert [s.flush for s in steps] == [False, False, False, True]
    assert [s.timer_ms for s in steps] == [110, None, None, None]
    batcher.flushed("a")
    assert batcher.size("a") == 0 and batcher.wait_ms("a", 500) is None and not batcher.is_due("a", 500)
    assert batcher.added("a", now_ms=600).timer_ms == 700  # a new buffer, a new clock


def test_micro_batcher_keeps_buffers_apart_and_counts_down_from_the_oldest():
    batcher = MicroBatcher(batch_size=10, max_delay_ms=200)
    batcher.added(0, now_ms=1_000)
    batcher.added(1, now_ms=1_150)
    batcher.added(0, now_ms=1_190)
    assert (batcher.size(0), batcher.size(1)) == (2, 1)
    assert batcher.wait_ms(0, now_ms=1_190) == 10 and batcher.wait_ms(1, now_ms=1_190) == 160
    assert batcher.is_due(0, now_ms=1_200) and not batcher.is_due(1, now_ms=1_200)


def test_micro_batcher_recounts_a_restored_buffer_once():
    batcher, calls = MicroBatcher(batch_size=5, max_delay_ms=100), []

    def recount() -> int:
        calls.append(1)
        return 4  # three restored from a checkpoint + the new one

    first = batcher.added("s", now_ms=0, recount=recount)
    assert first.timer_ms == 100 and not first.flush and batcher.size("s") == 4
    assert batcher.added("s", now_ms=1, recount=recount).flush
    assert len(calls) == 1


@pytest.mark.parametrize("size, delay", [(0, 100), (10, -1)])
def test_micro_batcher_refuses_nonsense(size, delay):
    with pytest.raises(ValueError):
        MicroBatcher(batch_size=size, max_delay_ms=delay)


# --- IdleSenderRule ---------------------------------------------------------------------------


def test_idle_sender_rule_forgets_only_a_sender_silent_for_the_whole_idle_time():
    rule, touched, timers = IdleSenderRule(idle_ms=1_000), None, []
    for now in (0, 400, 900):  # three documents: one timer, set by the first
        timer = rule.timer_for_new_document(touched, now)
        timers += [timer] if timer is not None else []
        touched = now
    assert timers == [1_000]
    assert rule.on_timer(touched, 1_000) == 1_900  # the last document was 100 ms before: wait on
    assert rule.on_timer(touched, 1_900) is None  # silent for 1 s: forget
    assert rule.on_timer(None, 5_000) is None


# --- SenderFeatures ---------------------------------------------------------------------------


class FakeMirror:
    """Stands in for FeatureMirror: remembers what was put, serves what it was given."""

    def __init__(self, cached: dict | None = None):
        self.cached, self.puts = cached, []

    def fetch(self, sender):
        return self.cached

    def put(self, sender, mapping):
        self.puts.append((sender, mapping))


def _routed(n: int = 12, seed: int = 3) -> list[bytes]:
    docs = generate(n, seed=seed, scan_share=0.5)
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    return routed_values(docs)


def test_sender_features_observe_mirrors_the_features_and_keeps_the_source():
    mirror, history = FakeMirror(), SenderHistory()
    features = SenderFeatures(mirror)
    values = _routed()
    for offset, value in enumerate(values[:3]):
        record = codec.decode(value).record
        pending = features.observe(history, {**record, "sender": "one@x"}, SourceRecord(value, "t", 0, offset))
    assert pending.source == SourceRecord(values[2], "t", 0, 2)
    assert pending.features[SENDER_FEATURES.index("sender_docs_1h")] == 2.0 and history.docs == 3
    sender, mapping = mirror.puts[-1]
    assert sender == "one@x" and mapping["docs"] == "3" and float(mapping["sender_docs_1h"]) == 2.0
    assert (pending.text is None) == (pending.content_type == "IMAGE") == (pending.image_features is not None)


def test_a_scan_whose_features_raise_leaves_the_sender_history_untouched():
    features, history = SenderFeatures(None), SenderHistory()
    scan = next(v for v in _routed() if codec.decode(v).record["content_type"] == "IMAGE")
    bad = unreadable_scan(scan, "bad")
    with pytest.raises(Exception) as raised:
        features.observe(history, codec.decode(bad).record, SourceRecord(bad, "t", 0, 0))
    assert type(raised.value).__name__ == "UnidentifiedImageError"
    assert history.docs == 0 and not history.recent_ms


def test_warm_start_takes_a_cached_history_of_this_feature_set_only():
    cached = SenderHistory(docs=5, scans=2, last_ms=1_000).to_redis_mapping()
    assert SenderFeatures(FakeMirror(cached)).warm_start("s").docs == 5
    assert SenderFeatures(FakeMirror({**cached, "feature_set_id": "old"})).warm_start("s").docs == 0
    assert SenderFeatures(None).warm_start("s").docs == 0 and cached["feature_set_id"] == FEATURE_SET_ID


# --- BatchScorer ------------------------------------------------------------------------------


def _pending(values: list[bytes], reader=None) -> list:
    """The documents as the scorer receives them; scans read by `reader` (None: not read)."""
    features, history, out = SenderFeatures(None), SenderHistory(), []
    for i, v in enumerate(values):
        routed = codec.decode(v).record
        scan = reader.read(routed, routed["routed_ms"]) if reader is not None and routed["content_type"] == "IMAGE" else None
        out.append(features.observe(history, routed, SourceRecord(v, "t", 0, i), scan))
    return out


def test_batch_scorer_answers_in_batch_order_and_sends_unsure_documents_to_triage(registry):
    from models.ocr import OcrConfig
    from udfs.reading import ScanReader

    batch = _pending(_routed(16, seed=5), ScanReader(OcrConfig()))
    scored = BatchScorer(ScoringConfig.from_registry(registry)).score(batch, now_ms=123).predictions
    records = [codec.decode(value, expected="prediction").record for _, _, value in scored]
    assert [r["doc_id"] for r in records] == [doc.doc_id for doc in batch]
    assert {r["content_type"] for r in records} == {"TEXT", "IMAGE"}
    assert all(r["model_name"] == f"mailroom-{doc.kind}" and r["slot"] == "champion" for r, doc in zip(records, batch))
    assert any(r["model_name"] == "mailroom-scan" for r in records)  # scans that were read are decided by what they say
    for r in records:  # a scan the layout model decided says why; nothing else has a fallback reason
        assert (r["fallback_reason"] or "").startswith("OCR ") == (r["model_name"] == "mailroom-image")
        assert (r["model_text"] is None) == (r["model_name"] == "mailroom-image") and bool(r["image_features"]) == (r["content_type"] == "IMAGE")
    deliveries = [codec.decode(delivery, expected="department_document").record for _, delivery, _ in scored]
    assert [(d["doc_id"], d["department"], d["decision"]["label"]) for d in deliveries] == [(r["doc_id"], r["department"], r["label"]) for r in records]
    everything_to_triage = BatchScorer(ScoringConfig.from_registry(registry, triage_threshold=1.01, text_triage_threshold=1.01)).score(
        batch, now_ms=123).predictions
    assert {department for department, _, _ in everything_to_triage} == {"triage"}
    # each kind has its threshold: the text model's sends only the text documents to triage, the other only the scans
    for overrides, sent in (({"text_triage_threshold": 1.01, "triage_threshold": 0.0}, "text"), ({"triage_threshold": 1.01, "text_triage_threshold": 0.0}, "scans")):
        decided = BatchScorer(ScoringConfig.from_registry(registry, **overrides)).score(batch, now_ms=123).predictions
        for doc, (department, _, value) in zip(batch, decided):
            label = codec.decode(value, expected="prediction").record["label"]
            to_triage = (doc.kind == "text") == (sent == "text")
            assert department == ("triage" if to_triage else DEPARTMENTS[label]), (doc.kind, overrides)


def test_score_isolating_finds_exactly_the_documents_the_model_raises_on(registry, tmp_path):
    docs = generate(14, seed=9, scan_share=0.3)
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    template = next(d for d in docs if d["content_type"] == "text")
    mixed = docs[:3] + [poison_document(template, "p1")] + docs[3:9] + [poison_document(template, "p2")] + docs[9:]
    scorer = BatchScorer(ScoringConfig.from_registry(poison_text_model(registry, tmp_path / "registry")))
    batch = _pending(routed_values(mixed))
    with pytest.raises(Exception):
        scorer.score(batch, now)
    result = scorer.score_isolating(batch, now)
    scored, failed = result.predictions, result.failed
    assert sorted(doc.doc_id for doc, _ in failed) == ["p1", "p2"]
    assert all("Gather" in str(exc) for _, exc in failed)
    assert [codec.decode(v).record["doc_id"] for _, _, v in scored] == [d["doc_id"] for d in docs]  # the others, in order
    assert scorer.score_isolating([batch[3]], now).predictions == []


# --- the failure budget and the dead letter ---------------------------------------------------


def test_failure_budget_allows_bad_records_but_fails_a_storm():
    budget = FailureBudget(max_per_minute=3)
    for i in range(30):  # one every 30 s never exhausts it
        budget.spend(i * 30_000, ValueError("x"))
    with pytest.raises(FailureStorm, match="within a minute"):
        for i in range(4):
            budget.spend(2_000_000 + i, RuntimeError("bug"))
    assert budget.spent == 34


def test_processing_error_names_the_exception_and_keeps_the_bytes_and_coordinates():
    value = codec.encode("ground_truth", {"doc_id": "d", "label": "invoice", "department": "finance", "sent_ms": 1, "kind": "CONFIRM"})
    letter = codec.decode(processing_error(SourceRecord(value, "topic-a", 3, 99), KeyError("x" * 1000), "accuracy", "1.0.0", 5, "d"),
                          expected="dead_letter").record
    assert (letter["original"], letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (value, "topic-a", 3, 99)
    assert letter["writer_schema"] == "ground_truth.v1" and letter["fingerprint"] == value[2:10].hex()
    assert letter["message"].startswith("KeyError: 'xxx") and len(letter["message"]) <= len("KeyError: ") + MAX_MESSAGE_CHARS
    assert (letter["job"], letter["job_version"], letter["dead_lettered_ms"], letter["doc_id"]) == ("accuracy", "1.0.0", 5, "d")
