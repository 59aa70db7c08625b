"""mailroom/produce.py without Kafka: reading directories and JSONL, refusals, planning, sending
through a fake producer, and the CLI reporting refusals before it sends."""

from __future__ import annotations

import base64
import json
import sys
import types

import pytest
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError
from kafka.future import Future

from mailroom import cli, produce
from mailroom.produce import DocumentProducer, Refusal, from_directory, from_generator, from_jsonl, plan, to_document
from config.settings import Settings
from schemas import codec
from tests.unit.badinputs import TEXT, scan_image

NOW_MS = 1_750_000_000_000

EMAIL = """From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@mueller.example>
To: office@mailroom.example
Subject: Rechnung für März
Date: Mon, 03 Mar 2025 07:00:00 +0000
Message-ID: <42@mueller.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=XX

--XX
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße, anbei die Rechnung.
--XX
Content-Type: text/html; charset=utf-8

<p>Grüße, anbei die Rechnung.</p>
--XX--
"""
HTML_ONLY_EMAIL = "From: a@b.example\nSubject: hi\nContent-Type: text/html\n\n<p>hi</p>\n"


class FakeKafka:
    """Records what is sent; acknowledges on flush, except keys listed in `fail_keys`."""

    def __init__(self, fail_keys: tuple[bytes, ...] = (), failure=lambda: KafkaTimeoutError("no ack")):
        self.fail_keys, self.failure = fail_keys, failure
        self.sent: list[tuple[str, bytes, bytes, Future]] = []
        self.closed = False

    def send(self, topic, value, key):
        future = Future()
        self.sent.append((topic, key, value, future))
        return future

    def flush(self):
        for _, key, _, future in self.sent:
            if not future.is_done:
                future.failure(self.failure()) if key in self.fail_keys else future.success(None)

    def close(self):
        self.closed = True


@pytest.fixture
def inbox(tmp_path):
    """A directory with one file of every kind, good and bad."""
    (tmp_path / "letter.txt").write_bytes(b"\xef\xbb\xbfDear Sir,\nplease repair the printer.")
    (tmp_path / "mail.eml").write_text(EMAIL, encoding="utf-8")
    (tmp_path / "scan.png").write_bytes(scan_image("PNG", (200, 260)))
    (tmp_path / "fax.tiff").write_bytes(scan_image("TIFF", (200, 260), pages=3))
    (tmp_path / "photo.JPG").write_bytes(scan_image("JPEG", (200, 260)))
    (tmp_path / "sub dir").mkdir()
    (tmp_path / "sub dir" / "note 2.txt").write_text("Please call me back.", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b" \n\t\n")
    (tmp_path / "latin1.txt").write_bytes("Grüße".encode("latin-1"))
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.7\n")
    (tmp_path / "html.eml").write_text(HTML_ONLY_EMAIL, encoding="utf-8")
    (tmp_path / "no-from.eml").write_text("Subject: hi\n\nbody\n", encoding="utf-8")
    (tmp_path / "fake.png").write_text("I am not a picture", encoding="utf-8")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "does-not-exist.txt")
    return tmp_path


def split(candidates) -> tuple[dict[str, dict], dict[str, str]]:
    documents, refusals = {}, {}
    for candidate in candidates:
        if isinstance(candidate, Refusal):
            refusals[candidate.source] = candidate.reason
        else:
            documents[candidate[0]] = candidate[1]
    return documents, refusals


def test_directory_files_become_documents(inbox):
    documents, _ = split(from_directory(inbox, NOW_MS))
    assert sorted(documents) == ["fax.tiff", "letter.txt", "mail.eml", "photo.JPG", "scan.png", "sub dir/note 2.txt"]
    letter = documents["letter.txt"]
    assert (letter["doc_id"], letter["text"], letter["channel"], letter["sender"], letter["received_ms"]) == \
        ("letter", "Dear Sir,\nplease repair the printer.", "PORTAL", produce.DEFAULT_SENDER, NOW_MS)
    assert documents["sub dir/note 2.txt"]["doc_id"] == "sub_dir/note_2"
    mail = documents["mail.eml"]
    assert (mail["sender"], mail["subject"], mail["text"], mail["channel"]) == \
        ("juergen@mueller.example", "Rechnung für März", "Grüße, anbei die Rechnung.", "EMAIL")
    assert mail["headers"]["Message-ID"] == "<42@mueller.example>" and "Content-Type" not in mail["headers"]
    assert mail["headers"]["X-Source-File"] == "mail.eml" and letter["headers"] == {"X-Source-File": "letter.txt"}
    fax, photo = documents["fax.tiff"], documents["photo.JPG"]
    assert (fax["mime_type"], fax["page_count"], fax["channel"], fax["content_type"]) == ("image/tiff", 3, "SCANNER", "IMAGE")
    assert (photo["mime_type"], photo["page_count"], photo["image"][:3]) == ("image/jpeg", 1, b"\xff\xd8\xff")


def test_directory_refusals_say_why(inbox):
    _, refusals = split(from_directory(inbox, NOW_MS))
    assert refusals == {
        "blank.txt": "empty file (nothing but whitespace)",
        "empty.txt": "empty file",
        "fake.png": "not a PNG, JPEG or TIFF image (the bytes look like TEXT)",
        "gone.txt": "cannot read: No such file or directory",
        "html.eml": "e-mail without a text/plain part (HTML-only or attachments only)",
        "latin1.txt": "not UTF-8 text (save it as UTF-8)",
        "no-from.eml": "not an e-mail: no From header",
        "report.pdf": "unsupported file type .pdf; supported: .eml .jpeg .jpg .png .tif .tiff .txt",
    }


def test_directory_options(inbox):
    documents, _ = split(from_directory(inbox, NOW_MS, sender="scanner-7", channel="API", id_prefix="run-2/"))
    assert {d["channel"] for d in documents.values()} == {"API"}
    assert documents["scan.png"]["doc_id"] == "run-2/scan" and documents["scan.png"]["sender"] == "scanner-7"
    assert documents["mail.eml"]["sender"] == "juergen@mueller.example"


def test_jsonl_lines(tmp_path):
    image = scan_image("PNG", (50, 60))
    lines = [
        json.dumps({"doc_id": "j-1", "channel": "email", "sender": "a@b.example", "content_type": "text", "text": TEXT,
                    "mime_type": "text/plain", "page_count": 1, "label": "invoice"}),
        "",
        json.dumps({"doc_id": "j-2", "received_ms": 5, "channel": "SCANNER", "sender": "s", "content_type": "IMAGE",
                    "image": base64.b64encode(image).decode(), "mime_type": "image/png", "page_count": 1, "headers": {"a": "b"}}),
        "{not json",
        "[1, 2]",
        json.dumps({"doc_id": "j-5", "sender": "s"}),
        json.dumps({"doc_id": "j-6", "channel": "API", "sender": "s", "content_type": "IMAGE", "image": "***",
                    "mime_type": "image/png", "page_count": 1}),
        json.dumps({"doc_id": "j-7", "labl": "invoice"}),
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    documents, refusals = split(from_jsonl(path, NOW_MS))
    first, second = documents[f"{path}:1"], documents[f"{path}:3"]
    assert (first["channel"], first["content_type"], first["received_ms"], "label" in first) == ("EMAIL", "TEXT", NOW_MS, False)
    assert (second["image"], second["received_ms"]) == (image, 5)
    assert refusals[f"{path}:4"].startswith("not a document: Expecting property name")
    assert refusals[f"{path}:5"] == "not a document: a JSON list, not an object"
    assert refusals[f"{path}:6"] == "not a document: missing field(s) channel, content_type, mime_type, page_count"
    assert refusals[f"{path}:7"].startswith("not a document: image is not base64")
    assert refusals[f"{path}:8"].startswith("not a document: unknown field(s) labl;")


def test_unreadable_jsonl_is_refused(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "Gr\xfc\xdfe"}\n')
    assert split(from_jsonl(path, NOW_MS))[1][str(path)].startswith("cannot read:")


def test_generator_documents_lose_their_labels(monkeypatch):
    fake = types.ModuleType("models.generator")
    fake.generate = lambda n, seed: [
        {"doc_id": f"gen-{seed}-{i}", "received_ms": NOW_MS + i, "channel": "scanner", "sender": "s", "subject": None,
         "content_type": "image", "text": None, "image": scan_image("PNG", (40, 50)), "mime_type": "image/png",
         "page_count": 1, "headers": {}, "label": "invoice"} for i in range(n)]
    monkeypatch.setitem(sys.modules, "models.generator", fake)
    documents, refusals = split(from_generator(3, seed=7))
    assert not refusals and len(documents) == 3
    doc = documents["generated #2"]
    assert (doc["doc_id"], doc["channel"], doc["content_type"], doc["received_ms"], "label" in doc) == ("gen-7-2", "SCANNER", "IMAGE", NOW_MS + 2, False)


def test_plan_encodes_and_refuses_repeats_invalid_and_oversized(monkeypatch):
    good = to_document({"doc_id": "p-1", "channel": "api", "sender": "s", "content_type": "text", "text": "hi",
                        "mime_type": "text/plain", "page_count": 1}, NOW_MS)
    monkeypatch.setattr(produce, "MAX_MESSAGE_BYTES", 400)
    planned = plan([
        ("one", good),
        ("two", dict(good)),
        ("three", {**good, "doc_id": "p-3", "page_count": 2**40}),
        ("four", {**good, "doc_id": "p-4", "text": "x" * 500}),
        Refusal("five", "cannot read"),
    ])
    assert [(m.source, m.key) for m in planned.messages] == [("one", b"p-1")]
    assert codec.decode(planned.messages[0].value, expected="document").record["doc_id"] == "p-1"
    reasons = {r.source: r.reason for r in planned.refused}
    assert reasons["two"] == "doc_id 'p-1' was already used by one"
    assert reasons["three"].startswith("not a valid document.v2: io.mailroom.Document.page_count is 1099511627776")
    assert reasons["four"].endswith("more than the broker accepts (400)")
    assert reasons["five"] == "cannot read"


def test_send_many_reports_sent_refused_and_failed():
    kafka = FakeKafka(fail_keys=(b"s-3",))
    documents = [{"doc_id": f"s-{i}", "channel": "PORTAL", "sender": "s", "content_type": "TEXT", "text": f"text {i}",
                  "mime_type": "text/plain", "page_count": 1} for i in range(4)]
    documents.append({"doc_id": "s-bad"})
    with DocumentProducer(Settings(), kafka=kafka) as producer:
        report = producer.send_many(documents, progress=False)
    assert kafka.closed
    assert (report.topic, report.sent, len(report.refused), len(report.failed)) == ("mailroom.documents", 3, 1, 1)
    assert report.refused[0] == Refusal("document #4", "missing field(s) channel, content_type, mime_type, page_count, sender")
    assert report.failed[0].source == "document #3" and "no ack" in report.failed[0].reason
    assert [(topic, key) for topic, key, _, _ in kafka.sent] == [("mailroom.documents", f"s-{i}".encode()) for i in range(4)]
    assert report.bytes_sent == sum(len(value) for _, key, value, _ in kafka.sent if key != b"s-3")
    assert "sent 3 document(s)" in report.summary()


def test_a_refused_write_names_the_principal_and_the_right():
    kafka = FakeKafka(fail_keys=(b"s-0",), failure=lambda: TopicAuthorizationFailedError("mailroom.documents"))
    document = {"doc_id": "s-0", "channel": "PORTAL", "sender": "s", "content_type": "TEXT", "text": "text",
                "mime_type": "text/plain", "page_count": 1}
    with DocumentProducer(Settings(kafka_principal="dept-hr"), kafka=kafka) as producer:
        report = producer.send_many([document], progress=False)
    assert report.sent == 0 and report.failed[0].reason == (
        "principal dept-hr may not Write topic mailroom.documents: the broker refused it (TopicAuthorizationFailedError)")
    with DocumentProducer(Settings(), kafka=FakeKafka()) as producer:
        assert producer.principal == "producer"  # upstream's own principal unless MAILROOM_KAFKA_PRINCIPAL says otherwise


def test_send_one_document():
    kafka = FakeKafka()
    producer = DocumentProducer(Settings(), topic="custom.documents", kafka=kafka)
    producer.send({"doc_id": "one", "channel": "api", "sender": "s", "content_type": "text", "text": "hi", "mime_type": "text/plain", "page_count": 1})
    topic, key, value, _ = kafka.sent[0]
    assert (topic, key, codec.decode(value).record["channel"]) == ("custom.documents", b"one", "API")
    with pytest.raises(codec.InvalidRecord):
        producer.send({"doc_id": "two", "channel": "fax", "sender": "s", "content_type": "text", "text": "hi", "mime_type": "text/plain", "page_count": 1})


@pytest.fixture
def fake_kafka(monkeypatch):
    monkeypatch.setenv("MAILROOM_REDIS_PASSWORD", "unused")  # no password file written by Settings.from_env
    kafka = FakeKafka()
    monkeypatch.setattr("mailroom.kafkautil.producer", lambda settings, **overrides: kafka)
    return kafka


def test_cli_reports_refusals_before_sending(inbox, fake_kafka, capsys):
    assert cli.main(["produce", "--dir", str(inbox), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "14 input(s): 6 to send" in out and "8 refused" in out
    assert out.index("refused report.pdf: unsupported file type .pdf") < out.index("sent 6 document(s)")
    assert len(fake_kafka.sent) == 6 and {t for t, *_ in fake_kafka.sent} == {"mailroom.documents"}


def test_cli_dry_run_and_strict_send_nothing(inbox, fake_kafka, capsys):
    assert cli.main(["produce", "--dir", str(inbox), "--dry-run"]) == 0
    assert cli.main(["produce", "--dir", str(inbox), "--strict"]) == 1
    assert "nothing sent because 8 input(s) were refused" in capsys.readouterr().err
    assert fake_kafka.sent == []


def test_cli_with_nothing_to_send_or_a_bad_path(tmp_path, fake_kafka):
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    assert cli.main(["produce", "--dir", str(tmp_path)]) == 1
    assert cli.main(["produce", "--dir", str(tmp_path / "missing")]) == 2
    assert cli.main(["produce", "--jsonl", str(tmp_path / "missing.jsonl"), "--topic", "t"]) == 2


def test_cli_help_names_every_source(capsys):
    with pytest.raises(SystemExit):
        cli.main(["produce", "--help"])
    out = capsys.readouterr().out
    assert all(option in out for option in ("--dir", "--jsonl", "--generate", "--dry-run", "--topic"))
