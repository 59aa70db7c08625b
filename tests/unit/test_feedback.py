"""mailroom/feedback.py without Kafka: validation, files, the feedback simulator (also through
the join and the metrics), drift, and the CLI sending through a fake producer."""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import Counter

import pytest
from kafka.future import Future

from mailroom import feedback
from mailroom.feedback import FeedbackProfile, check_label, ground_truth, read_feedback_file, simulate_feedback, with_predictions
from config.settings import Settings
from schemas.labels import DEPARTMENTS, LABELS
from schemas.units import DAY_MS, HOUR_MS
from schemas import codec
from udfs.joining import Joiner
from udfs.metrics import figures

NOW_MS = 1_750_000_000_000
MINUTE = 60_000


def documents(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"doc_id": f"gen-{i:06d}", "label": rng.choice(LABELS), "received_ms": NOW_MS + i * 2 * MINUTE} for i in range(n)]


class FakeKafka:
    """Records what is sent; acknowledges everything on flush."""

    def __init__(self):
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.futures: list[Future] = []
        self.closed = False

    def send(self, topic, value, key):
        self.sent.append((topic, key, value))
        self.futures.append(Future())
        return self.futures[-1]

    def flush(self):
        for future in self.futures:
            if not future.is_done:
                future.success(None)

    def close(self):
        self.closed = True


# --- validation and files --------------------------------------------------------------------


def test_labels_are_checked_with_a_suggestion():
    assert check_label(" Invoice ") == "invoice"
    with pytest.raises(ValueError, match=r"unknown label 'invoce'; did you mean 'invoice'\? \(labels: invoice, offer"):
        check_label("invoce")
    with pytest.raises(ValueError, match="unknown label 'spam' \\(labels:"):
        check_label("spam")


def test_a_verdict_gets_defaults_and_encodes():
    record = ground_truth({"doc_id": "d1", "label": "OFFER", "kind": "correct", "comment": ""}, NOW_MS)
    assert record == {"doc_id": "d1", "label": "offer", "department": "sales", "sent_ms": NOW_MS, "kind": "CORRECT", "comment": None}
    assert codec.decode(codec.encode("ground_truth", record, validate=True)).record == record


@pytest.mark.parametrize("raw, message", [
    ({"label": "invoice"}, "doc_id is missing"),
    ({"doc_id": "a b", "label": "invoice"}, "not a document id"),
    ({"doc_id": "d1"}, "label is missing"),
    ({"doc_id": "d1", "label": "invoice", "kind": "MAYBE"}, "neither CONFIRM nor CORRECT"),
    ({"doc_id": "d1", "label": "invoice", "sent_ms": "yesterday"}, "not epoch milliseconds"),
    ({"doc_id": "d1", "label": "invoice", "lable": "x"}, "unknown field"),
])
def test_invalid_verdicts_say_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message):
        ground_truth(raw, NOW_MS)


def test_jsonl_and_csv_files_with_and_without_header(tmp_path):
    jsonl = tmp_path / "truth.jsonl"
    jsonl.write_text('{"doc_id": "d1", "label": "invoice"}\n\n{"doc_id": "d2", "label": "offer", "kind": "CORRECT", "sent_ms": 5}\n')
    with_header = tmp_path / "with_header.csv"
    with_header.write_text("doc_id,label,kind,comment\nd1,invoice,,\nd2,offer,CORRECT,\"wrong, really\"\n")
    without_header = tmp_path / "without_header.csv"
    without_header.write_text("d1,invoice\nd2,offer,CORRECT,\"wrong, really\"\n")
    records, errors = read_feedback_file(jsonl, NOW_MS)
    assert errors == [] and [(r["doc_id"], r["kind"], r["sent_ms"]) for r in records] == [("d1", "CONFIRM", NOW_MS), ("d2", "CORRECT", 5)]
    for path in (with_header, without_header):
        records, errors = read_feedback_file(path, NOW_MS)
        assert errors == [] and [(r["label"], r["kind"], r["comment"]) for r in records] == [
            ("invoice", "CONFIRM", None), ("offer", "CORRECT", "wrong, really")]


def test_invalid_lines_are_reported_by_line_number(tmp_path):
    path = tmp_path / "truth.jsonl"
    path.write_text('{"doc_id": "d1", "label": "invoice"}\nnot json\n[1]\n{"doc_id": "d4", "label": "invoise"}\n')
    records, errors = read_feedback_file(path, NOW_MS)
    assert len(records) == 1
    assert [e.split(": ")[0] for e in errors] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "did you mean 'invoice'" in errors[2]


# --- the simulator ---------------------------------------------------------------------------


def test_simulated_feedback_is_realistic_and_deterministic():
    docs = documents(4000)
    records = simulate_feedback(docs, seed=1)
    assert records == simulate_feedback(docs, seed=1) != simulate_feedback(docs, seed=2)
    assert [r["sent_ms"] for r in records] == sorted(r["sent_ms"] for r in records)
    for record in records:
        assert codec.decode(codec.encode("ground_truth", record, validate=True)).record == record
    received = {d["doc_id"]: d["received_ms"] for d in docs}
    known = [r for r in records if r["doc_id"] in received]
    answered = {r["doc_id"] for r in known}
    assert 0.13 < 1 - len(answered) / len(docs) < 0.17  # unanswered
    orphans = [r for r in records if r["doc_id"] not in received]
    assert 0.01 < len(orphans) / len(docs) < 0.03 and all(r["doc_id"].startswith("unseen-") for r in orphans)
    delays = [r["sent_ms"] - received[r["doc_id"]] for r in known]
    assert all(d > 0 for d in delays)
    assert 15 * MINUTE < statistics.median(delays) < 60 * MINUTE  # most within hours, some within seconds
    assert min(delays) < MINUTE and 0.005 < sum(d > 7 * DAY_MS for d in delays) / len(delays) < 0.02
    per_doc = Counter(r["doc_id"] for r in known)
    duplicates = [doc for doc, n in per_doc.items() if n == 2 and len({json.dumps(r) for r in known if r["doc_id"] == doc}) == 1]
    corrected = [doc for doc, n in per_doc.items() if any(r["doc_id"] == doc and r["comment"] for r in known)]
    assert len(duplicates) > 50 and len(corrected) > 100


def test_a_correction_is_a_wrong_confirm_then_a_later_correct_when_the_model_was_wrong():
    docs = with_predictions(documents(3000), [{"doc_id": f"gen-{i:06d}", "label": "other", "department": "triage"} for i in range(3000)])
    records = simulate_feedback(docs, seed=3, profile=FeedbackProfile(correction_share=0.5, duplicate_share=0))
    truth = {d["doc_id"]: d["label"] for d in docs}
    by_doc: dict[str, list[dict]] = {}
    for record in records:
        by_doc.setdefault(record["doc_id"], []).append(record)
    pairs = [rs for doc, rs in by_doc.items() if len(rs) == 2 and truth[doc] != "other"]
    assert len(pairs) > 500
    for first, second in pairs:
        assert (first["kind"], first["label"], second["kind"], second["label"]) == ("CONFIRM", "other", "CORRECT", truth[first["doc_id"]])
        assert first["sent_ms"] <= second["sent_ms"] and first["department"] == second["department"] == "triage"


def test_simulated_feedback_through_the_join_gives_the_shares_it_was_made_with():
    docs = documents(3000, seed=4)
    records = simulate_feedback(docs, seed=4)
    joiner, states, events = Joiner(), {}, []
    inputs = [("p", d["doc_id"], d["received_ms"], {**d, "sender": "s", "content_type": "TEXT", "probabilities": {}, "model_name": "m",
                                                        "model_version": "1", "feature_set_id": "fs", "features": {}}) for d in docs]
    inputs += [("t", r["doc_id"], r["sent_ms"], r) for r in records]
    for side, doc_id, at_ms, record in sorted(inputs, key=lambda i: i[2]):
        handle = joiner.on_prediction if side == "p" else joiner.on_truth
        states[doc_id], new = handle(states.get(doc_id), record, at_ms)
        events += new
    for doc_id, state in states.items():
        states[doc_id], new = joiner.on_timer(state, NOW_MS + 365 * DAY_MS)
        events += new
    count = Counter(type(e).__name__ for e in events)
    assert count["Predicted"] == 3000
    assert 0.80 < count["Matched"] / 3000 < 0.86 and count["Matched"] + count["Unmatched"] == 3000
    assert 0.03 < count["Corrected"] / count["Matched"] < 0.07 and count["DuplicateTruth"] > 40
    assert count["OrphanTruth"] > 30 and count["LateTruth"] > 10
    final = {}
    for e in events:
        if type(e).__name__ in ("Matched", "Corrected"):
            pair = e.pair if type(e).__name__ == "Matched" else e.new
            final[pair.doc_id] = (pair.actual, pair.predicted)
    assert all(actual == predicted for actual, predicted in final.values())  # the model was right; corrections undo wrong verdicts


def test_drift_relabels_one_class_from_a_moment_on_and_the_metrics_see_it():
    docs = documents(4000, seed=5)
    middle = docs[2000]["received_ms"]
    profile = FeedbackProfile(drift=("invoice", "purchase_order"), drift_from_ms=middle, correction_share=0, duplicate_share=0)
    records = simulate_feedback(docs, seed=5, profile=profile)
    true = {d["doc_id"]: d for d in docs}
    before, after = {}, {}
    for record in records:
        doc = true.get(record["doc_id"])
        if doc:
            period = after if doc["received_ms"] >= middle else before
            key = (record["label"], doc["label"])  # (true label, what a model that was perfect before predicts)
            period[key] = period.get(key, 0) + 1
    drifted = [r for r in records if r["doc_id"] in true and true[r["doc_id"]]["label"] == "invoice" and true[r["doc_id"]]["received_ms"] >= middle]
    assert drifted and all((r["label"], r["kind"], r["department"]) == ("purchase_order", "CORRECT", DEPARTMENTS["invoice"]) for r in drifted)
    healthy, changed = figures(before), figures(after)
    by_label = {c["label"]: c for c in changed["per_class"]}
    assert healthy["macro_f1"] == 1.0 and healthy["accuracy"] == 1.0
    assert by_label["invoice"]["precision"] == 0.0 and by_label["purchase_order"]["recall"] < 0.6
    assert changed["macro_f1"] < 0.85


def test_profile_is_checked():
    with pytest.raises(ValueError):
        FeedbackProfile(unanswered_share=1.5)
    with pytest.raises(ValueError, match="did you mean"):
        FeedbackProfile(drift=("invoice", "purchse_order"))


# --- the command -----------------------------------------------------------------------------


def run_cli(argv: list[str], monkeypatch) -> tuple[int, FakeKafka]:
    kafka = FakeKafka()
    monkeypatch.setattr("mailroom.kafkautil.producer", lambda settings, **_: kafka)
    parser = argparse.ArgumentParser()
    feedback.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["feedback", *argv, "--no-progress"])
    return args.func(args, Settings(redis_password="x")), kafka


def test_cli_sends_one_verdict_keyed_by_doc_id(monkeypatch):
    status, kafka = run_cli(["--doc-id", "doc-7", "--label", "Invoice", "--kind", "correct", "--comment", "was an offer"], monkeypatch)
    assert status == 0 and kafka.closed
    ((topic, key, value),) = kafka.sent
    record = codec.decode(value, expected="ground_truth").record
    assert (topic, key) == ("mailroom.ground-truth", b"doc-7")
    assert (record["label"], record["kind"], record["comment"], record["department"]) == ("invoice", "CORRECT", "was an offer", "finance")


def test_cli_refuses_a_file_with_an_invalid_label_and_sends_nothing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "truth.csv"
    path.write_text("doc_id,label\nd1,invoice\nd2,invoise\n")
    status, kafka = run_cli(["--file", str(path)], monkeypatch)
    assert status == 2 and kafka.sent == []
    assert "did you mean 'invoice'" in capsys.readouterr().err
    status, kafka = run_cli(["--file", str(path), "--skip-invalid"], monkeypatch)
    assert status == 0 and [key for _, key, _ in kafka.sent] == [b"d1"]


def test_cli_simulates_from_a_documents_file(tmp_path, monkeypatch):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({**d, "channel": "email"}) + "\n" for d in documents(200)))
    status, kafka = run_cli(["--simulate", str(path), "--seed", "3", "--drift", "invoice:offer", "--unanswered-share", "0"], monkeypatch)
    sent = [codec.decode(value).record for _, _, value in kafka.sent]
    assert status == 0 and sent == simulate_feedback(documents(200), 3, FeedbackProfile(unanswered_share=0, drift=("invoice", "offer")))
    assert {r["doc_id"] for r in sent if not r["doc_id"].startswith("unseen-")} == {d["doc_id"] for d in documents(200)}


def test_cli_dry_run_and_bad_arguments(tmp_path, monkeypatch, capsys):
    status, kafka = run_cli(["--doc-id", "d1", "--label", "offer", "--dry-run"], monkeypatch)
    assert status == 0 and kafka.sent == []
    assert run_cli(["--doc-id", "d1"], monkeypatch)[0] == 2
    assert run_cli(["--file", str(tmp_path / "missing.csv")], monkeypatch)[0] == 2
    assert run_cli(["--file", str(tmp_path / "missing.csv"), "--label", "offer", "--drift", "invoice:offer"], monkeypatch)[0] == 2
    assert "--label, --drift do not apply here" in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(SystemExit):
        run_cli(["--simulate", "x.jsonl", "--drift", "invoice"], monkeypatch)


def test_delays_stay_within_hours_for_most_and_the_profile_bounds_them():
    profile = FeedbackProfile(unanswered_share=0, too_late_share=0, correction_share=0, duplicate_share=0, orphan_share=0,
                              max_delay_ms=HOUR_MS)
    records = simulate_feedback(documents(500), seed=9, profile=profile)
    received = {d["doc_id"]: d["received_ms"] for d in documents(500)}
    assert len(records) == 500 and max(r["sent_ms"] - received[r["doc_id"]] for r in records) == HOUR_MS
