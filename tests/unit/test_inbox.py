"""mailroom/inbox.py without Kafka: department names, the list's rows (text vs scan, the first OCR line, a scan not
read, ages, verdict marks), finding a document, building verdicts, saving pages, printing a document."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from config.settings import Settings
from mailroom import cli, inbox
from mailroom.inbox import (NotHere, build_verdict, check_department, department_topic, find_document, first_line, format_age,
                            inbox_row, latest_verdicts, save_pages, summary)
from schemas import codec

NOW = 1_750_000_000_000
MIN = 60_000


def text_doc(doc_id="t1", subject="Invoice 2024-117 for May", label="invoice", confidence=0.934, received=NOW - 3 * MIN, **extra):
    record = {
        "doc_id": doc_id, "department": "finance", "sender": "billing@acme.example", "subject": subject, "channel": "EMAIL",
        "received_ms": received, "content_type": "TEXT", "text": "Dear team,\n\nplease pay [bold]EUR 120[/bold].\n", "image": None,
        "pages": [], "mime_type": "text/plain", "original_mime_type": "text/plain", "page_count": 1,
        "headers": {"Message-Id": "<m1@acme>"}, "language": "en", "notes": [], "ocr": None,
        "decision": {"label": label, "probabilities": {label: confidence, "other": 1 - confidence}, "confidence": confidence,
                     "model_name": "mailroom-text", "model_version": "3", "slot": "champion", "fallback_reason": None,
                     "scored_ms": received + 500, "latency_ms": 500},
    }
    record.update(extra)
    return record


def scan_doc(doc_id="s1", ocr_text="\n  \nRECHNUNG Nr. 77\nBetrag 120\fpage two", status="READ", **extra):
    record = text_doc(doc_id, subject="Scan from the copier", content_type="IMAGE", text=None, image=b"\x89PNG one",
                      pages=[b"\x89PNG two"], mime_type="image/png", original_mime_type="image/tiff", page_count=2, channel="SCANNER",
                      ocr={"status": status, "text": ocr_text, "pages_read": 2 if ocr_text else 0, "pages_routed": 2,
                           "engine": "tesseract 5.5.0 eng", "milliseconds": 412.5, "reason": None if status == "READ" else "too slow"})
    record["decision"]["model_name"] = "mailroom-scan"
    record.update(extra)
    return record


def test_the_records_here_are_valid_department_documents():
    for record in (text_doc(), scan_doc(), scan_doc(ocr_text="", status="OVER_BUDGET")):
        assert codec.decode(codec.encode("department_document", record, validate=True), expected="department_document").record == record


# --- departments -----------------------------------------------------------------------------


def test_departments_are_checked_and_a_wrong_name_says_which_exist():
    assert check_department(" Finance ") == "finance" and check_department("triage") == "triage"
    with pytest.raises(ValueError, match=r"unknown department 'fnance'; did you mean 'finance'\? \(departments: finance, sales, "):
        check_department("fnance")
    with pytest.raises(ValueError, match=r"'invoice' is a label, its department is 'finance'"):
        check_department("invoice")
    with pytest.raises(ValueError, match=r"service-desk, triage\)"):
        check_department("marketing")


def test_department_topics():
    assert department_topic("finance", "mailroom.") == "mailroom.dept.finance"
    assert department_topic("customer-care", "t1.") == "t1.dept.customer-care"
    assert department_topic("triage", "") == "dept.triage"


# --- rows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("age_ms, shown", [(0, "0 s"), (59_999, "59 s"), (MIN, "1 min"), (3 * MIN + 5_000, "3 min"),
                                           (60 * MIN, "1 h"), (47 * 60 * MIN, "47 h"), (48 * 60 * MIN, "2 d"), (-5_000, "0 s")])
def test_ages(age_ms, shown):
    assert format_age(NOW, NOW - age_ms) == shown


def test_a_text_row_shows_its_subject():
    row = inbox_row(text_doc(), NOW)
    assert (row.doc_id, row.sender, row.summary, row.label, row.confidence, row.age, row.verdict) == \
           ("t1", "billing@acme.example", "Invoice 2024-117 for May", "invoice", "0.93", "3 min", "")
    assert inbox_row(text_doc(subject=None), NOW).summary == "(no subject)"
    assert inbox_row(text_doc(subject="   "), NOW).summary == "(no subject)"


def test_a_long_subject_is_cut():
    shown = summary(text_doc(subject="x" * 200))
    assert len(shown) == inbox.SUMMARY_CHARS and shown.endswith("…")


def test_a_scan_row_shows_the_first_line_ocr_read_not_the_subject():
    assert inbox_row(scan_doc(), NOW).summary == "RECHNUNG Nr. 77"
    assert summary(scan_doc(ocr_text="\f\n   \fsecond page first")) == "second page first"  # an empty first page


@pytest.mark.parametrize("ocr, shown", [
    ({"status": "OVER_BUDGET", "text": ""}, "(scan, not read: OVER_BUDGET)"),
    ({"status": "OFF", "text": ""}, "(scan, not read: OFF)"),
    ({"status": "READ", "text": " \f \n"}, "(scan, not read: NO_TEXT)"),
    (None, "(scan, not read: no OCR)"),
])
def test_a_scan_not_read_says_why(ocr, shown):
    document = scan_doc()
    document["ocr"] = None if ocr is None else {**document["ocr"], **ocr}
    assert summary(document) == shown


def test_first_line():
    assert first_line("\n \n  hello \nworld") == "hello"
    assert first_line("") is None and first_line(None) is None and first_line(" \n\t") is None


def test_verdict_marks_show_the_newest_verdict():
    truths = [{"doc_id": "t1", "label": "invoice", "department": "finance", "sent_ms": NOW, "kind": "CONFIRM", "comment": None},
              {"doc_id": "t1", "label": "offer", "department": "finance", "sent_ms": NOW + 1, "kind": "CORRECT", "comment": None},
              {"doc_id": "t2", "label": "offer", "department": "sales", "sent_ms": NOW + 5, "kind": "CORRECT", "comment": None},
              {"doc_id": "t2", "label": "invoice", "department": "finance", "sent_ms": NOW + 2, "kind": "CONFIRM", "comment": None}]
    latest = latest_verdicts(truths)
    assert inbox_row(text_doc("t1"), NOW, latest.get("t1")).verdict == "✎ corrected: offer"
    assert inbox_row(text_doc("t2"), NOW, latest.get("t2")).verdict == "✎ corrected: offer"  # newest by sent_ms, not by order
    assert inbox_row(text_doc("t3"), NOW, latest.get("t3")).verdict == ""
    assert inbox_row(text_doc("t2"), NOW, truths[3]).verdict == "✓ confirmed"


def test_the_list_prints_document_text_as_it_is_not_as_markup():
    out = Console(file=io.StringIO(), width=200)
    out.print(inbox.list_table([inbox_row(text_doc(subject="pay [red]now[/red]"), NOW)], "finance"))
    assert "pay [red]now[/red]" in out.file.getvalue()


# --- finding a document ----------------------------------------------------------------------


def test_finding_a_document_takes_the_newest_copy():
    older, newer = text_doc("t1", subject="first"), text_doc("t1", subject="again")
    newer["decision"]["scored_ms"] += 10
    assert find_document([newer, text_doc("t2"), older], "t1", "finance")["subject"] == "again"


def test_a_document_not_on_this_topic_is_refused_with_close_ids():
    with pytest.raises(NotHere, match=r"no document 'inv-0007' arrived for finance \(2 document\(s\) on its topic; close: inv-0001"):
        find_document([text_doc("inv-0001"), text_doc("zzz")], "inv-0007", "finance")
    with pytest.raises(NotHere, match=r"\(0 document\(s\) on its topic\); `mailroom inbox hr` lists them"):
        find_document([], "x", "hr")


# --- verdicts --------------------------------------------------------------------------------


def test_confirm_carries_the_predicted_label_and_this_department():
    record = build_verdict(text_doc(label="invoice"), "finance", "CONFIRM", NOW, comment="ok")
    assert record == {"doc_id": "t1", "label": "invoice", "department": "finance", "sent_ms": NOW, "kind": "CONFIRM", "comment": "ok"}
    codec.encode("ground_truth", record, validate=True)


def test_correct_carries_the_given_label():
    record = build_verdict(text_doc(label="complaint"), "triage", "correct", NOW, " Offer ")
    assert record == {"doc_id": "t1", "label": "offer", "department": "triage", "sent_ms": NOW, "kind": "CORRECT", "comment": None}


def test_an_unknown_label_is_refused_with_the_labels():
    with pytest.raises(ValueError, match=r"unknown label 'invoce'; did you mean 'invoice'\? \(labels: invoice, offer"):
        build_verdict(text_doc(label="offer"), "sales", "CORRECT", NOW, "invoce")


def test_a_correction_to_the_predicted_label_and_a_confirmation_of_another_are_refused():
    with pytest.raises(ValueError, match=r"already classified as 'invoice': use --confirm"):
        build_verdict(text_doc(label="invoice"), "finance", "CORRECT", NOW, "invoice")
    with pytest.raises(ValueError, match=r"use --correct"):
        build_verdict(text_doc(label="invoice"), "finance", "CONFIRM", NOW, "offer")
    with pytest.raises(ValueError, match=r"needs the right label"):
        build_verdict(text_doc(), "finance", "CORRECT", NOW)


# --- showing ---------------------------------------------------------------------------------


def test_scan_pages_are_saved_under_a_safe_name(tmp_path):
    paths = save_pages(scan_doc("../etc/s 1"), tmp_path / "pages")
    assert [p.name for p in paths] == ["etc_s_1.page1.png", "etc_s_1.page2.png"]
    assert [p.read_bytes() for p in paths] == [b"\x89PNG one", b"\x89PNG two"]
    assert save_pages(text_doc(), tmp_path / "none") == [] and not (tmp_path / "none").exists()


def test_show_prints_text_in_full_ocr_per_page_and_the_decision_sorted(tmp_path):
    out = Console(file=io.StringIO(), width=200)
    verdict = {"doc_id": "t1", "label": "invoice", "department": "finance", "sent_ms": NOW, "kind": "CONFIRM", "comment": "fine"}
    inbox.show_document(text_doc(notes=["page_count says 2, file has 1"]), verdict, [], out)
    shown = out.file.getvalue()
    assert "please pay [bold]EUR 120[/bold]." in shown and "Message-Id" in shown and "<m1@acme>" in shown
    assert shown.index("invoice") < shown.index("0.066") and "mailroom-text v3" in shown and "champion" in shown
    assert "page_count says 2, file has 1" in shown and "✓ confirmed by finance" in shown and "fine" in shown

    out = Console(file=io.StringIO(), width=200)
    paths = save_pages(scan_doc(), tmp_path)
    inbox.show_document(scan_doc(), None, paths, out)
    shown = out.file.getvalue()
    assert "page 1 (OCR)" in shown and "RECHNUNG Nr. 77" in shown and "page 2 (OCR)" in shown and "page two" in shown
    assert str(paths[1]) in shown and "none yet" in shown


# --- command line ----------------------------------------------------------------------------


def test_command_line():
    args = cli.parse_args(["inbox", "Finance", "--correct", "d1", "offer", "--comment", "c"])
    assert (args.func, args.department, args.correct, args.comment, args.last) == (inbox._cmd, "finance", ["d1", "offer"], "c", 20)
    assert cli.parse_args(["inbox", "hr", "--all", "--follow"]).all


@pytest.mark.parametrize("argv", [["inbox", "marketing"], ["inbox", "hr", "--last", "0"], ["inbox", "hr", "--show", "a", "--confirm", "b"],
                                  ["inbox", "hr", "--all", "--last", "3"]])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.parse_args(argv)
    assert done.value.code == 2


@pytest.mark.parametrize("argv, complaint", [(["inbox", "hr", "--show", "d", "--follow"], "--follow goes with the list"),
                                             (["inbox", "hr", "--comment", "x"], "--comment goes with --confirm or --correct"),
                                             (["inbox", "hr", "--save-images", "d"], "--save-images goes with --show")])
def test_misplaced_flags_exit_2_before_kafka_is_asked(argv, complaint, capsys):
    args = cli.parse_args(argv)
    assert args.func(args, Settings.from_env({}, kafka_port=1)) == 2
    assert complaint in " ".join(capsys.readouterr().err.split())


def test_no_broker_is_said_at_once(capsys):
    args = cli.parse_args(["inbox", "hr"])
    assert args.func(args, Settings.from_env({}, kafka_port=1)) == 1
    assert "no Kafka broker at 127.0.0.1:1" in capsys.readouterr().err


def test_ctrl_c_while_following_stops_the_loop_between_polls_instead_of_raising_inside_the_client():
    import os
    import signal
    import threading

    class QuietTopic:  # the consumer's poll as --follow calls it: nothing new
        polls = 0

        def poll(self, timeout_ms, max_records):
            self.polls += 1
            if self.polls == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the client polls
            return {}

    stop, topic = threading.Event(), QuietTopic()
    before = signal.getsignal(signal.SIGINT)
    with inbox._ctrl_c_sets(stop):
        assert list(inbox._follow(topic, stop)) == []  # no KeyboardInterrupt: the loop ends after that poll
    assert stop.is_set() and topic.polls == 2 and signal.getsignal(signal.SIGINT) is before
