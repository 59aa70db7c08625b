"""`mailroom inbox DEPARTMENT`: what a department receives, and its verdicts on it.

Reads the department's own topic (dept.<department>: department_document records, key doc_id)
and nothing else, except the ground-truth topic for what was already confirmed or corrected.

    mailroom inbox finance                         # the last 20 documents that arrived (newest last)
    mailroom inbox finance --all --follow          # everything on the topic, then new arrivals until Ctrl-C
    mailroom inbox triage --last 5
    mailroom inbox finance --show DOC_ID           # the whole document and its decision; scan pages saved as PNG
    mailroom inbox finance --show DOC_ID --save-images ./pages
    mailroom inbox finance --confirm DOC_ID        # the predicted label was right
    mailroom inbox triage --correct DOC_ID offer --comment "a quote, not a complaint"

A verdict (ground_truth.v1, keyed by doc_id) goes to the ground-truth topic with this department
as its source: CONFIRM carries the predicted label, CORRECT the label given. The accuracy job
joins it with the document's prediction. Document contents are printed to this terminal only;
this tool never logs them.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from config.settings import Settings
from mailroom.kafkautil import client_config
from mailroom.feedback import check_label, ground_truth, send_feedback
from schemas import codec
from schemas.labels import DEPARTMENTS, LABELS
from schemas.topics import department_topic_key, topic_name
from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, now_ms

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DEPARTMENT_NAMES: tuple[str, ...] = tuple(dict.fromkeys(DEPARTMENTS.values()))  # finance, sales, ..., triage
_LABEL_OF = {department: label for label, department in DEPARTMENTS.items()}  # a label that routes to the department
SUMMARY_CHARS = 70
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class NotHere(LookupError):
    """The document is not on this department's topic."""


# --- plain logic -----------------------------------------------------------------------------


def check_department(name: str) -> str:
    """`name`, trimmed and lower-cased, if it is a department; ValueError saying which exist."""
    cleaned = str(name).strip().lower()
    if cleaned in DEPARTMENT_NAMES:
        return cleaned
    if cleaned in DEPARTMENTS:
        hint = f"; {cleaned!r} is a label, its department is {DEPARTMENTS[cleaned]!r}"
    else:
        close = difflib.get_close_matches(cleaned, DEPARTMENT_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown department {name!r}{hint} (departments: {', '.join(DEPARTMENT_NAMES)})")


def department_topic(department: str, prefix: str) -> str:
    """The topic name of `department`'s inbox, e.g. department_topic('finance', 'mailroom.') == 'mailroom.dept.finance'."""
    return topic_name(department_topic_key(_LABEL_OF[check_department(department)]), prefix)


def format_age(now: int, then: int) -> str:
    """How long ago `then` was, coarsely: '12 s', '3 min', '5 h', '2 d' (a future time is '0 s')."""
    age = max(0, now - then)
    if age < MINUTE_MS:
        return f"{age // SECOND_MS} s"
    if age < HOUR_MS:
        return f"{age // MINUTE_MS} min"
    if age < 2 * DAY_MS:
        return f"{age // HOUR_MS} h"
    return f"{age // DAY_MS} d"


def ocr_pages(document: Mapping) -> list[str]:
    """The OCR text of a scan, one string per page (pages are separated by form feeds); [] when none was read."""
    ocr = document.get("ocr")
    if not ocr or not ocr.get("text"):
        return []
    return ocr["text"].split("\f")


def first_line(text: str | None) -> str | None:
    """The first line of `text` with something on it, stripped; None when there is none."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return None


def summary(document: Mapping, width: int = SUMMARY_CHARS) -> str:
    """What the list shows for a document: its subject; for a scan the first line OCR read, or why it was not read."""
    if document["content_type"] == "IMAGE":
        ocr = document.get("ocr")
        line = first_line("\n".join(ocr_pages(document)))
        if line is None:
            status = (ocr or {}).get("status") or "no OCR"
            if ocr and ocr.get("status") == "READ":
                status = "NO_TEXT"  # read, but nothing legible came out
            return f"(scan, not read: {status})"
    else:
        line = (document.get("subject") or "").strip() or "(no subject)"
    return line if len(line) <= width else line[:width - 1] + "…"


def latest_verdicts(truths: Iterable[Mapping]) -> dict[str, dict]:
    """doc_id -> its newest ground_truth record (by sent_ms; of equal ones the later in the input)."""
    latest: dict[str, dict] = {}
    for truth in truths:
        known = latest.get(truth["doc_id"])
        if known is None or truth["sent_ms"] >= known["sent_ms"]:
            latest[truth["doc_id"]] = dict(truth)
    return latest


def verdict_mark(verdict: Mapping | None) -> str:
    """'' for no verdict; '✓ confirmed' or '✎ corrected: LABEL'."""
    if not verdict:
        return ""
    return "✓ confirmed" if verdict["kind"] == "CONFIRM" else f"✎ corrected: {verdict['label']}"


@dataclass(frozen=True)
class Row:
    doc_id: str
    sender: str
    summary: str
    label: str
    confidence: str
    age: str
    verdict: str

    COLUMNS = ("doc id", "sender", "subject / first OCR line", "label", "confidence", "age", "verdict")


def inbox_row(document: Mapping, now: int, verdict: Mapping | None = None) -> Row:
    """One line of the list. The age is that of the document (since upstream received it)."""
    decision = document["decision"]
    return Row(document["doc_id"], document["sender"], summary(document), decision["label"], f"{decision['confidence']:.2f}",
               format_age(now, document["received_ms"]), verdict_mark(verdict))


def arrival_order(documents: Iterable[Mapping]) -> list[dict]:
    """Documents in the order they arrived, newest last (by when they were scored, then received, then id)."""
    return sorted(documents, key=lambda d: (d["decision"]["scored_ms"], d["received_ms"], d["doc_id"]))


def find_document(documents: Iterable[Mapping], doc_id: str, department: str) -> dict:
    """The newest document with `doc_id` among `documents` (one department's topic); NotHere saying so otherwise."""
    documents = list(documents)
    found = [d for d in documents if d["doc_id"] == doc_id]
    if found:
        return dict(arrival_order(found)[-1])
    close = difflib.get_close_matches(doc_id, sorted({d["doc_id"] for d in documents}), n=3)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise NotHere(f"no document {doc_id!r} arrived for {department} ({len(documents)} document(s) on its topic{hint}); "
                  f"`mailroom inbox {department}` lists them")


def build_verdict(document: Mapping, department: str, kind: str, now: int, label: str | None = None,
                  comment: str | None = None) -> dict:
    """The ground_truth.v1 record a department sends about `document`: CONFIRM with the predicted label, or CORRECT
    with `label`. Raises ValueError for an unknown label, or a correction to the label that was predicted."""
    kind = kind.upper()
    predicted = document["decision"]["label"]
    if kind == "CONFIRM":
        if label is not None and check_label(label) != predicted:
            raise ValueError(f"a confirmation carries the predicted label {predicted!r}; to give {label!r} use --correct")
        label = predicted
    elif kind == "CORRECT":
        if label is None:
            raise ValueError("a correction needs the right label")
        label = check_label(label)
        if label == predicted:
            raise ValueError(f"{document['doc_id']} was already classified as {predicted!r}: use --confirm to confirm it")
    else:
        raise ValueError(f"kind {kind!r} is neither CONFIRM nor CORRECT")
    return ground_truth({"doc_id": document["doc_id"], "label": label, "kind": kind, "department": check_department(department),
                         "sent_ms": now, "comment": comment}, now)


def page_images(document: Mapping) -> list[bytes]:
    """A scan's PNG pages as routed (the first page, then the rest); [] for a text."""
    if document["content_type"] != "IMAGE" or document.get("image") is None:
        return []
    return [document["image"], *document.get("pages", [])]


def save_pages(document: Mapping, directory: Path) -> list[Path]:
    """Write a scan's pages to `directory` (created) as <doc_id>.page<N>.png; the paths written."""
    images = page_images(document)
    if not images:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    stem = _UNSAFE_FILE_CHARS.sub("_", document["doc_id"]).strip("._") or "document"
    paths = []
    for number, data in enumerate(images, 1):
        path = directory / f"{stem}.page{number}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _plain(value) -> Text:
    """A table cell or line shown as it is: document text is never read as rich markup."""
    return Text("" if value is None else str(value))


# --- printing --------------------------------------------------------------------------------


def list_table(rows: list[Row], title: str, caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption)
    for column in Row.COLUMNS:
        table.add_column(column, justify="right" if column in ("confidence", "age") else "left",
                          overflow="fold" if column == "doc id" else "ellipsis")
    for row in rows:
        table.add_row(*(_plain(getattr(row, field)) for field in ("doc_id", "sender", "summary", "label", "confidence", "age")),
                      Text(row.verdict, style="green" if row.verdict.startswith("✓") else "yellow"))
    return table


def show_document(document: Mapping, verdict: Mapping | None, image_paths: list[Path], out: Console) -> None:
    """Print the whole document: headers, subject, text (or OCR per page and the saved pages), the decision."""
    head = Table(show_header=False, box=None, title=f"Document {document['doc_id']}", title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    fields = [("department", document["department"]), ("sender", document["sender"]), ("subject", document.get("subject")),
              ("channel", document["channel"]), ("received", f"{_utc(document['received_ms'])} ({format_age(now_ms(), document['received_ms'])} ago)"),
              ("content", f"{document['content_type']} ({document['mime_type']}; sent as {document['original_mime_type']}, "
                          f"{document['page_count']} page(s))"),
              ("language", document.get("language"))]
    for name, value in sorted((document.get("headers") or {}).items()):
        fields.append((f"header {name}", value))
    for name, value in fields:
        head.add_row(name, _plain(value if value not in (None, "") else "-"))
    out.print(head)
    if document["content_type"] == "TEXT":
        out.rule("text")
        out.print(_plain(document.get("text") or "(empty)"), markup=False, highlight=False)
    else:
        ocr = document.get("ocr")
        out.rule("OCR")
        if ocr:
            out.print(_plain(f"status {ocr['status']}, {ocr['pages_read']} of {ocr['pages_routed']} page(s) read by {ocr['engine']} "
                             f"in {ocr['milliseconds']:.0f} ms" + (f"; {ocr['reason']}" if ocr.get("reason") else "")))
        else:
            out.print("no OCR reading")
        for number, page in enumerate(ocr_pages(document), 1):
            out.rule(f"page {number} (OCR)", style="dim")
            out.print(_plain(page.strip() or "(nothing read)"), markup=False, highlight=False)
        out.rule("pages")
        for path in image_paths:
            out.print(_plain(str(path)))
        if not image_paths:
            out.print("no page images")
    decision = document["decision"]
    out.rule("decision")
    probabilities = Table(show_header=True, box=None)
    probabilities.add_column("label")
    probabilities.add_column("probability", justify="right")
    for label, probability in sorted(decision["probabilities"].items(), key=lambda item: (-item[1], item[0])):
        probabilities.add_row(_plain(label), f"{probability:.3f}", style="bold" if label == decision["label"] else None)
    out.print(probabilities)
    facts = [("label", decision["label"]), ("confidence", f"{decision['confidence']:.3f}"),
             ("model", f"{decision['model_name']} v{decision['model_version']}"), ("slot", decision["slot"]),
             ("fallback reason", decision.get("fallback_reason") or "-"),
             ("scored", f"{_utc(decision['scored_ms'])} ({decision['latency_ms']} ms after receipt)")]
    for note in document.get("notes") or []:
        facts.append(("note", note))
    facts.append(("verdict", f"{verdict_mark(verdict)} by {verdict['department']} at {_utc(verdict['sent_ms'])}"
                  + (f": {verdict['comment']}" if verdict.get("comment") else "") if verdict else "none yet"))
    detail = Table(show_header=False, box=None)
    detail.add_column(style="bold")
    detail.add_column()
    for name, value in facts:
        detail.add_row(name, _plain(value))
    out.print(detail)


# --- Kafka (thin) ----------------------------------------------------------------------------


@dataclass
class Documents:
    """What a read of a department topic gave: the documents (arrival order) and how many records were no department_document."""

    documents: list[dict]
    unreadable: int = 0


def _decode(messages) -> Documents:
    documents, unreadable = [], 0
    for message in messages:
        try:
            documents.append(codec.decode(message.value, expected="department_document").record)
        except codec.DecodeError:
            unreadable += 1  # e.g. the prediction records an older scoring job wrote to department topics
    return Documents(arrival_order(documents), unreadable)


def _consumer(settings: Settings):
    from kafka import KafkaConsumer

    from mailroom.kafkautil import MAX_MESSAGE_BYTES

    return KafkaConsumer(**client_config(settings), isolation_level="read_committed", enable_auto_commit=False,
                         fetch_max_bytes=MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES, consumer_timeout_ms=500)


class TopicMissing(LookupError):
    pass


def _read_tail(consumer, topic: str, last: int | None, timeout_s: float = 30.0) -> Documents:
    """Assign every partition of `topic` and read from the beginning (last=None) or the last `last` records of each partition
    to the end; the consumer stays positioned there (for --follow)."""
    from kafka import TopicPartition

    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if not partitions:
        raise TopicMissing(topic)
    consumer.assign(partitions)
    begins, ends = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
    for tp in partitions:
        consumer.seek(tp, begins[tp] if last is None else max(begins[tp], ends[tp] - last))
    messages: list = []
    deadline = time.monotonic() + timeout_s
    while not all(consumer.position(tp) >= ends[tp] for tp in partitions) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=10000).values():
            messages.extend(batch)
    read = _decode(messages)
    if last is not None:
        read.documents = read.documents[-last:] if last else []
    return read


def _follow(consumer, stop: threading.Event) -> Iterator[Documents]:
    """New arrivals, a batch per poll that has any, until `stop` is set (checked between polls, at least every second)."""
    while not stop.is_set():
        messages = [m for batch in consumer.poll(timeout_ms=1000, max_records=500).values() for m in batch]
        if messages:
            yield _decode(messages)


@contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C (SIGINT) sets `stop` instead of raising KeyboardInterrupt wherever the main thread is: inside the Kafka
    client's poll, an interrupt can leave the client's state half-changed, and closing it then could wait forever."""
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def read_department(settings: Settings, department: str, last: int | None = None) -> Documents:
    """The documents on `department`'s topic (all, or the newest `last`), arrival order."""
    consumer = _consumer(settings)
    try:
        return _read_tail(consumer, department_topic(department, settings.topic_prefix), last)
    finally:
        consumer.close()


def read_verdicts(settings: Settings, timeout_s: float = 10) -> dict[str, dict]:
    """doc_id -> newest verdict on the ground-truth topic (records that are no ground_truth are skipped)."""
    from mailroom.kafkautil import read_topic

    truths = []
    for message in read_topic(settings, topic_name("ground_truth", settings.topic_prefix), timeout_s=timeout_s):
        try:
            truths.append(codec.decode(message.value, expected="ground_truth").record)
        except codec.DecodeError:
            pass
    return latest_verdicts(truths)


# --- command line ----------------------------------------------------------------------------


def _empty_hint(department: str, topic: str, following: bool = False) -> str:
    return (f"nothing has arrived for {department} yet (topic {topic} is empty). Is the scoring job running? "
            "`mailroom run` runs the whole pipeline with generated documents; `mailroom job scoring` runs the scoring job alone "
            "(and `mailroom stack status` shows whether Kafka is up)."
            + ("" if following else f" `mailroom inbox {department} --follow` waits for arrivals."))


def _list(args: argparse.Namespace, settings: Settings, department: str, topic: str) -> int:
    last = None if args.all else args.last
    consumer = _consumer(settings)
    try:
        read = _read_tail(consumer, topic, last)
        verdicts = read_verdicts(settings)
        now = now_ms()
        note = f"{read.unreadable} record(s) on the topic are no department_document (skipped)" if read.unreadable else None
        if read.documents:
            which = "all" if last is None else f"the last {len(read.documents)}"
            console.print(list_table([inbox_row(d, now, verdicts.get(d["doc_id"])) for d in read.documents],
                                     f"{department}: {which} document(s) on {topic}, newest last", note))
        else:
            if note:
                err.print(note)
            console.print(_empty_hint(department, topic, args.follow), highlight=False)
        if not args.follow:
            return 0
        console.print(f"following {topic} (Ctrl-C stops)", highlight=False)
        stop = threading.Event()
        with _ctrl_c_sets(stop):
            for batch in _follow(consumer, stop):
                now = now_ms()
                if batch.documents:
                    stamp = datetime.now().strftime("%H:%M:%S")
                    console.print(list_table([inbox_row(d, now) for d in batch.documents], f"{department}: new at {stamp}",
                                             f"{batch.unreadable} record(s) skipped" if batch.unreadable else None))
        return 0
    except KeyboardInterrupt:  # Ctrl-C while the list was read
        return 0
    finally:
        consumer.close()


def _document(settings: Settings, department: str, doc_id: str) -> dict:
    return find_document(read_department(settings, department).documents, doc_id, department)


def _show(args: argparse.Namespace, settings: Settings, department: str) -> int:
    document = _document(settings, department, args.show)
    verdict = read_verdicts(settings).get(document["doc_id"])
    paths = []
    if page_images(document):
        directory = args.save_images or Path(tempfile.mkdtemp(prefix="mailroom-inbox-"))
        paths = save_pages(document, directory)
    show_document(document, verdict, paths, console)
    return 0


def _verdict(args: argparse.Namespace, settings: Settings, department: str) -> int:
    from mailroom.kafkautil import producer

    kind, doc_id, label = ("CONFIRM", args.confirm, None) if args.confirm else ("CORRECT", *args.correct)
    document = _document(settings, department, doc_id)
    record = build_verdict(document, department, kind, now_ms(), label, args.comment)  # ValueError: exit 2 in _cmd
    earlier = read_verdicts(settings).get(doc_id)
    topic = topic_name("ground_truth", settings.topic_prefix)
    kafka = producer(settings)
    try:
        report = send_feedback(kafka, topic, [record], progress=False)
    finally:
        kafka.close()
    if report.failed:
        err.print(f"[red]error:[/red] not delivered to {topic}: {report.failed[0]}", highlight=False)
        return 1
    what = "confirmed" if kind == "CONFIRM" else f"corrected {document['decision']['label']} -> {record['label']}"
    console.print(f"{what}: {doc_id}; written to {topic} (key {doc_id}):", highlight=False)
    console.print(json.dumps(record), markup=False, highlight=False)
    if earlier:
        console.print(_plain(f"(it replaces the earlier verdict: {verdict_mark(earlier)} by {earlier['department']} at "
                             f"{_utc(earlier['sent_ms'])})"))
    return 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    from mailroom.kafkautil import check_topic_access, explain
    from schemas.access import department_principal

    department = args.department
    settings = settings.as_principal(department_principal(department))  # a department reads its own inbox only
    topic = department_topic(department, settings.topic_prefix)
    if args.follow and (args.show or args.confirm or args.correct):
        err.print("[red]error:[/red] --follow goes with the list, not with --show, --confirm or --correct")
        return 2
    if args.comment is not None and not (args.confirm or args.correct):
        err.print("[red]error:[/red] --comment goes with --confirm or --correct")
        return 2
    if args.save_images is not None and not args.show:
        err.print("[red]error:[/red] --save-images goes with --show")
        return 2
    from mailroom.stack import accepts

    if not accepts(settings.host, settings.kafka_port):  # kafka-python would wait 30 s for a broker that does not listen
        err.print(f"[red]error:[/red] no Kafka broker at {settings.bootstrap_servers}: start the stack with `mailroom stack up`",
                  highlight=False)
        return 1
    try:
        if args.show:
            return _show(args, settings, department)
        if args.confirm or args.correct:
            return _verdict(args, settings, department)
        return _list(args, settings, department, topic)
    except (NotHere, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 2
    except TopicMissing:
        try:
            check_topic_access(settings, topic, "Read")  # a topic the broker hides from this principal looks missing
        except KafkaError as exc:
            err.print(f"[red]error:[/red] {escape(explain(exc, settings, 'Read', f'topic {topic}'))}", highlight=False)
            return 1
        err.print(f"[red]error:[/red] topic {topic} does not exist: `mailroom stack up` creates the declared topics", highlight=False)
        return 1
    except KafkaError as exc:
        operation, resource = ("Write", f"topic {topic_name('ground_truth', settings.topic_prefix)}") if args.confirm or args.correct else ("Read", f"topic {topic}")
        err.print(f"[red]error:[/red] {escape(explain(exc, settings, operation, resource))}", highlight=False)
        return 1


def _department(value: str) -> str:
    try:
        return check_department(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1")
    return number


def register(sub) -> None:
    parser = sub.add_parser(
        "inbox", help="a department's inbox: list what arrived, show a document, confirm or correct its label",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Departments: {', '.join(DEPARTMENT_NAMES)} (triage gets the documents no model was sure about). "
               f"Labels: {', '.join(LABELS)}. Exit status: 0 done; 1 Kafka unreachable, topic missing or delivery failed; "
               "2 invalid input (unknown department or label, a document that did not arrive here): nothing is sent.",
    )
    parser.add_argument("department", type=_department, metavar="DEPARTMENT", help=f"whose inbox: {', '.join(DEPARTMENT_NAMES)}")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--show", metavar="DOC_ID", help="print the whole document and its decision")
    action.add_argument("--confirm", metavar="DOC_ID", help="send a CONFIRM verdict: the predicted label is right")
    action.add_argument("--correct", nargs=2, metavar=("DOC_ID", "LABEL"), help="send a CORRECT verdict: LABEL is the right label")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--last", type=_count, default=20, metavar="N", help="list the newest N documents (default %(default)s)")
    amount.add_argument("--all", action="store_true", help="list every document on the topic, from its beginning")
    parser.add_argument("--follow", action="store_true", help="after the list, keep listing new arrivals until Ctrl-C")
    parser.add_argument("--comment", help="with --confirm or --correct: free text from the reviewer")
    parser.add_argument("--save-images", type=Path, metavar="DIR", help="with --show: write a scan's PNG pages here "
                        "(default: a new temporary directory; the paths are printed)")
    parser.set_defaults(func=_cmd)
