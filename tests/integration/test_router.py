"""The router job on the real stack: every kind of bad input dead-lettered with its reason and
its original bytes; the books balance over thousands of mixed documents; a crash mid-stream
followed by a restart from the last checkpoint loses and duplicates nothing."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter

import pytest

from jobs.environment import latest_checkpoint
from mailroom.kafkautil import producer, read_topic
from mailroom.submit import run_job, start_job
from schemas import codec
from tests.unit.badinputs import bad_inputs, valid_scan_document, valid_text_document
from tests.unit.test_codec import _apache_read
from udfs.routing import RouterConfig


@pytest.fixture
def router_topics(topics):
    return {"input": topics("docs", 2), "text": topics("text", 2), "scans": topics("scans", 2), "dead": topics("dead")}


def _args(t: dict, group: str, *extra: str) -> list[str]:
    return ["--input", t["input"], "--text-topic", t["text"], "--scans-topic", t["scans"], "--dead-letter-topic", t["dead"], "--group-id", group, *extra]


def _send(settings, topic: str, values: list[bytes]) -> None:
    prod = producer(settings)
    for value in values:
        prod.send(topic, value).add_errback(lambda exc: pytest.fail(f"produce failed: {exc}"))
    prod.flush()
    prod.close()


def _ids(records) -> list[str]:
    return [codec.decode(r.value)[2]["doc_id"] for r in records]


def test_every_bad_input_is_dead_lettered_with_reason_and_original(stack, test_settings, router_topics):
    run = uuid.uuid4().hex[:6]
    corpus = bad_inputs(prefix=f"bad-{run}-", config=RouterConfig())
    assert len({b.kind for b in corpus}) >= 20
    good = [valid_text_document(f"good-text-{run}"), valid_scan_document(f"good-scan-{run}")]
    _send(test_settings, router_topics["input"], good + [m for b in corpus for m in b.before])
    _send(test_settings, router_topics["input"], [b.value for b in corpus])

    result = run_job(test_settings, "jobs.router", _args(router_topics, f"{test_settings.topic_prefix}router-{run}", "--bounded"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    dead = [codec.decode(r.value, expected="dead_letter")[2] for r in read_topic(test_settings, router_topics["dead"], min_count=len(corpus))]
    by_original = {d["original"]: d for d in dead}
    assert len(dead) == len(corpus)
    for bad in corpus:
        letter = by_original.get(bad.value)
        assert letter is not None, f"{bad.kind}: original bytes not found intact in the dead-letter topic"
        assert letter["reason"] == bad.reason.value, f"{bad.kind}: {letter['reason']} ({letter['message']})"
        assert letter["source_topic"] == router_topics["input"] and letter["source_offset"] >= 0
        assert letter["message"]
    routed = read_topic(test_settings, router_topics["text"]) + read_topic(test_settings, router_topics["scans"])
    duplicate_firsts = sum(len(b.before) for b in corpus)
    assert len(routed) == len(good) + duplicate_firsts  # in = out + dead-lettered


def _mixed_corpus(run: str, n: int, seed: int = 7) -> tuple[list[bytes], Counter]:
    """n documents: texts, scans, garbage and duplicates, with the fate each must meet."""
    rng = random.Random(seed)
    values, fate = [], Counter()
    for i in range(n):
        roll = rng.random()
        if roll < 0.75:
            values.append(valid_text_document(f"{run}-t{i}", text=f"Order {i}: please deliver {rng.randint(1, 99)} chairs."))
            fate["text"] += 1
        elif roll < 0.90:
            values.append(valid_scan_document(f"{run}-s{i}"))
            fate["scans"] += 1
        elif roll < 0.95:
            values.append(os.urandom(rng.randint(0, 200)))
            fate["dead"] += 1
        else:
            values.append(valid_text_document(f"{run}-t{max(i - 1, 0)}"))  # a re-send of an earlier id
            fate["dead" if f"{run}-t{max(i - 1, 0)}".encode() in b"".join(values[:-1]) else "text"] += 1
    return values, fate


def test_books_balance_over_thousands_of_mixed_documents(stack, test_settings, router_topics):
    run = uuid.uuid4().hex[:6]
    values, _ = _mixed_corpus(run, 3000)
    _send(test_settings, router_topics["input"], values)
    result = run_job(test_settings, "jobs.router", _args(router_topics, f"{test_settings.topic_prefix}router-{run}", "--bounded", "--parallelism", "2"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    text = read_topic(test_settings, router_topics["text"])
    scans = read_topic(test_settings, router_topics["scans"])
    dead = read_topic(test_settings, router_topics["dead"])
    assert len(text) + len(scans) + len(dead) == len(values)  # input = text + scans + dead letters
    routed_ids = _ids(text) + _ids(scans)
    assert len(routed_ids) == len(set(routed_ids))  # no id twice
    reasons = Counter(codec.decode(r.value)[2]["reason"] for r in dead)
    assert set(reasons) <= {"UNDECODABLE", "DUPLICATE_ID"} and reasons["DUPLICATE_ID"] > 0
    assert all(codec.decode(r.value)[2]["content_type"] == "IMAGE" for r in scans[:50])
    for message in text[:20] + scans[:5] + dead[:20]:  # the contract is not private: Apache Avro's reader agrees
        assert _apache_read(message.value) == codec.decode(message.value).record


def test_crash_and_restart_from_checkpoint_loses_and_duplicates_nothing(stack, test_settings, router_topics, tmp_path):
    run = uuid.uuid4().hex[:6]
    values = [valid_text_document(f"{run}-{i}", text=f"Document {i} about an invoice.") for i in range(4000)]
    group = f"{test_settings.topic_prefix}router-{run}"
    job = start_job(test_settings, "jobs.router", _args(router_topics, group), tmp_path / "first.log")
    try:
        _send(test_settings, router_topics["input"], values[:2000])
        deadline = time.monotonic() + 180  # wait for output and at least one completed checkpoint
        while not (latest_checkpoint(test_settings, "router") and read_topic(test_settings, router_topics["text"], timeout_s=1)):
            assert time.monotonic() < deadline and job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(1)
        _send(test_settings, router_topics["input"], values[2000:3000])
        time.sleep(1.5)  # mid-stream: some of these are routed, not all checkpointed
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # a crash, not a clean stop
        job.wait(30)
    checkpoint = latest_checkpoint(test_settings, "router")
    assert checkpoint is not None

    _send(test_settings, router_topics["input"], values[3000:])
    resumed = start_job(test_settings, "jobs.router", _args(router_topics, group, "--restore-from", str(checkpoint)), tmp_path / "second.log")
    try:
        records = read_topic(test_settings, router_topics["text"], min_count=len(values), timeout_s=240)
    finally:
        os.killpg(resumed.pid, signal.SIGKILL)
        resumed.wait(30)
    ids = _ids(records)
    assert len(ids) == len(values), f"{len(values) - len(set(ids))} lost"
    assert Counter(ids).most_common(1)[0][1] == 1  # nothing twice for a read_committed reader
    assert not read_topic(test_settings, router_topics["dead"], timeout_s=2)  # the restart re-read nothing as duplicate


def test_at_least_once_output_is_visible_before_any_checkpoint(stack, test_settings, router_topics, tmp_path):
    """--delivery at-least-once writes without transactions: a read_committed reader sees the output at once, long
    before the first checkpoint (10 minutes away here) that exactly-once output would wait for."""
    from jobs.environment import AT_LEAST_ONCE
    from mailroom.submit import stop_job

    run = uuid.uuid4().hex[:6]
    values = [valid_text_document(f"{run}-{i}", text=f"Document {i} about an invoice.") for i in range(200)]
    args = _args(router_topics, f"{test_settings.topic_prefix}router-{run}", "--delivery", AT_LEAST_ONCE, "--checkpoint-interval-ms", "600000")
    job = start_job(test_settings, "jobs.router", args, tmp_path / "router.log")
    try:
        _send(test_settings, router_topics["input"], values)
        records = read_topic(test_settings, router_topics["text"], min_count=len(values), timeout_s=180)
        # within 180 s, while the first checkpoint is 600 s away: transactional output would still be invisible
        assert sorted(_ids(records)) == sorted(f"{run}-{i}" for i in range(len(values))), (tmp_path / "router.log").read_text()[-2000:]
    finally:
        stop_job(job)
