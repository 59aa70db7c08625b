"""`mailroom inbox` on the real broker: it lists what arrived on its department's topic only, marks what was
confirmed or corrected, shows a document with its scan pages, writes CONFIRM and CORRECT ground truth that
the accuracy job joins with the documents' predictions, refuses a document of another department, and
--follow lists new arrivals until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import pytest

from mailroom import cli
from mailroom.kafkautil import admin, producer, read_topic
from mailroom.submit import run_job
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.topics import topic_name
from schemas.units import HOUR_MS, MINUTE_MS, now_ms
from tests.unit.test_inbox import scan_doc, text_doc


@pytest.fixture
def settings(stack, test_settings):
    """Every declared topic under a prefix of this test's own (no model registry needed)."""
    from mailroom.stack import Kafka

    fresh = replace(test_settings, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    Kafka(fresh).create_topics()
    yield fresh
    client = admin(fresh)
    try:
        client.delete_topics([t for t in client.list_topics() if t.startswith(fresh.topic_prefix)])
    finally:
        client.close()


def _documents(now: int) -> dict[str, dict]:
    f1 = text_doc("fin-1", subject="Invoice 2024-117", received=now - 5 * MINUTE_MS)
    f2 = scan_doc("fin-2", received_ms=now - 4 * MINUTE_MS)
    f2["decision"]["scored_ms"] = now - 4 * MINUTE_MS + 900
    f3 = scan_doc("fin-3", ocr_text="", status="OVER_BUDGET", received_ms=now - 3 * MINUTE_MS)
    f3["decision"]["scored_ms"] = now - 3 * MINUTE_MS + 900
    s1 = text_doc("sal-1", subject="Our offer", label="offer", department="sales", received=now - 2 * MINUTE_MS)
    return {d["doc_id"]: d for d in (f1, f2, f3, s1)}


def _send(settings, key: str, record_type: str, records) -> None:
    prod = producer(settings)
    for record in records:
        prod.send(topic_name(key, settings.topic_prefix), codec.encode(record_type, record, validate=True), key=record["doc_id"].encode())
    prod.flush()
    prod.close()


def _deliver(settings, documents) -> None:
    for document in documents:
        _send(settings, f"dept_{document['department']}", "department_document", [document])


def _inbox(settings, capsys, *argv: str) -> tuple[int, str, str]:
    """Run `mailroom inbox ARGV` in this process; (exit status, stdout, stderr), whitespace collapsed."""
    capsys.readouterr()
    args = cli.parse_args(["inbox", *argv])
    status = args.func(args, settings)
    out, err = capsys.readouterr()
    return status, " ".join(out.split()), " ".join(err.split())


def _env(settings) -> dict[str, str]:
    return {**os.environ, **settings.as_env(), "PYTHONIOENCODING": "utf-8", "PYTHONPATH": os.getcwd()}


def _prediction(document: dict) -> dict:
    decision = document["decision"]
    return {"doc_id": document["doc_id"], "sender": document["sender"], "content_type": document["content_type"],
            "label": decision["label"], "probabilities": decision["probabilities"], "model_name": decision["model_name"],
            "model_version": decision["model_version"], "feature_set_id": "sender-v1", "department": DEPARTMENTS[decision["label"]],
            "received_ms": document["received_ms"], "scored_ms": decision["scored_ms"], "latency_ms": decision["latency_ms"],
            "features": {}, "slot": decision["slot"], "fallback_reason": None}


def test_list_show_confirm_correct_and_refuse(settings, capsys, tmp_path):
    documents = _documents(now_ms())
    _deliver(settings, documents.values())

    # the list, as a person runs it (a process of its own): this department's documents only, newest last
    done = subprocess.run([sys.executable, "-m", "mailroom.cli", "inbox", "finance"], env=_env(settings), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listing = done.stdout
    assert listing.index("fin-1") < listing.index("fin-2") < listing.index("fin-3") and "sal-1" not in listing
    assert "Invoice 2024-117" in listing and "RECHNUNG Nr. 77" in listing and "(scan, not read: OVER_BUDGET)" in listing
    assert "5 min" in listing and "0.93" in listing and "confirmed" not in listing

    # verdicts
    status, out, _ = _inbox(settings, capsys, "finance", "--confirm", "fin-1", "--comment", "paid")
    assert status == 0 and "confirmed: fin-1" in out and '"kind": "CONFIRM"' in out
    status, out, _ = _inbox(settings, capsys, "finance", "--correct", "fin-2", "Purchase_Order")
    assert status == 0 and "corrected invoice -> purchase_order: fin-2" in out

    # refused: a document of another department, an unknown label, a label that is the prediction; nothing sent
    status, _, err = _inbox(settings, capsys, "finance", "--confirm", "sal-1")
    assert status == 2 and "no document 'sal-1' arrived for finance" in err
    status, _, err = _inbox(settings, capsys, "finance", "--correct", "fin-3", "invoce")
    assert status == 2 and "unknown label 'invoce'; did you mean 'invoice'?" in err
    status, _, err = _inbox(settings, capsys, "finance", "--correct", "fin-3", "invoice")
    assert status == 2 and "use --confirm" in err
    done = subprocess.run([sys.executable, "-m", "mailroom.cli", "inbox", "finance", "--confirm", "nope"], env=_env(settings),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no document 'nope' arrived for finance" in done.stderr and "Traceback" not in done.stderr

    truths = [codec.decode(m.value, expected="ground_truth").record
              for m in read_topic(settings, topic_name("ground_truth", settings.topic_prefix), min_count=2, timeout_s=30)]
    truths.sort(key=lambda t: t["doc_id"])  # two partitions
    assert [{k: v for k, v in t.items() if k != "sent_ms"} for t in truths] == [
        {"doc_id": "fin-1", "label": "invoice", "department": "finance", "kind": "CONFIRM", "comment": "paid"},
        {"doc_id": "fin-2", "label": "purchase_order", "department": "finance", "kind": "CORRECT", "comment": None},
    ]
    assert all(abs(t["sent_ms"] - now_ms()) < 2 * MINUTE_MS for t in truths)
    messages = read_topic(settings, topic_name("ground_truth", settings.topic_prefix), timeout_s=5)
    assert sorted(m.key for m in messages) == [b"fin-1", b"fin-2"]

    # the list marks them now; --last
    status, out, _ = _inbox(settings, capsys, "finance")
    assert status == 0 and "✓ confirmed" in out and "✎ corrected: purchase_order" in out
    status, out, _ = _inbox(settings, capsys, "finance", "--last", "1")
    assert status == 0 and "fin-3" in out and "fin-1" not in out and "fin-2" not in out

    # show: the OCR per page, the pages written, the decision
    status, out, _ = _inbox(settings, capsys, "finance", "--show", "fin-2", "--save-images", str(tmp_path / "pages"))
    assert status == 0 and "page 1 (OCR)" in out and "RECHNUNG Nr. 77" in out and "page two" in out
    pages = sorted((tmp_path / "pages").iterdir())
    assert [p.read_bytes() for p in pages] == [b"\x89PNG one", b"\x89PNG two"] and all(str(p) in out for p in pages)
    assert "mailroom-scan v3" in out and "corrected: purchase_order by finance" in out

    # an empty inbox says what to do
    status, out, _ = _inbox(settings, capsys, "hr")
    assert status == 0 and "nothing has arrived for hr yet" in out and "mailroom run" in out
    status, _, err = _inbox(replace(settings, topic_prefix="no-such-prefix."), capsys, "hr")
    # a topic the principal has no right on, existing or not, is refused: the broker does not tell it which
    assert status == 1 and "principal dept-hr may not Read topic no-such-prefix.dept.hr" in err

    # the accuracy job joins the verdicts with the documents' predictions
    _send(settings, "predictions", "prediction", [_prediction(documents[d]) for d in ("fin-1", "fin-2", "fin-3", "sal-1")])
    window = ["--window-ms", str(24 * HOUR_MS), "--slide-ms", str(24 * HOUR_MS), "--settle-ms", "0"]
    result = run_job(settings, "jobs.accuracy", ["--bounded", "--group-id", f"{settings.topic_prefix}accuracy", *window], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    examples = [codec.decode(m.value).record
                for m in read_topic(settings, topic_name("labelled_examples", settings.topic_prefix), min_count=2, timeout_s=60)]
    assert sorted((e["doc_id"], e["predicted_label"], e["true_label"]) for e in examples) == [
        ("fin-1", "invoice", "invoice"), ("fin-2", "invoice", "purchase_order")]


def test_follow_lists_new_arrivals_until_ctrl_c(settings, tmp_path):
    documents = _documents(now_ms())
    _deliver(settings, [documents["fin-1"]])
    log = tmp_path / "follow.out"
    with open(log, "wb") as out:
        follower = subprocess.Popen([sys.executable, "-m", "mailroom.cli", "inbox", "finance", "--follow"], env=_env(settings),
                                    stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "following" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "following" in log.read_text() and "fin-1" in log.read_text()
        _deliver(settings, [documents["fin-2"], documents["sal-1"]])
        while "RECHNUNG" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(30) == 0, log.read_text()
    finally:
        if follower.poll() is None:
            follower.kill()
    shown = log.read_text()
    assert "new at" in shown and "fin-2" in shown and "RECHNUNG Nr. 77" in shown and "sal-1" not in shown and "Traceback" not in shown
