"""`mailroom produce`: send documents to the documents topic, as an upstream system would.

Sources: a directory of files (.txt, .eml, .png/.tif/.tiff/.jpg/.jpeg), a JSONL file (one
document per line, fields as in schemas/document.v2.avsc, image base64-encoded), or the
project's generator (models.generator). Every input is read and encoded first; what cannot
become a document is refused, and the refusals are reported, before anything is sent.
Messages are keyed by doc_id and sent by the idempotent, acks=all producer of mailroom.kafkautil.

As a library:

    with DocumentProducer(settings) as producer:
        report = producer.send_many(documents, progress=False)   # documents: dicts
    print(report.summary())
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import time
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Iterable, Iterator, Union

from rich.console import Console
from tqdm import tqdm

from mailroom.kafkautil import MAX_MESSAGE_BYTES, refusal as access_refusal
from config.settings import Settings
from schemas.topics import topic_name
from schemas import codec

console = Console(width=160)
err = Console(stderr=True)

TEXT_SUFFIXES = {".txt": "text/plain"}
EMAIL_SUFFIXES = {".eml"}
IMAGE_MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff"}  # format found in the bytes -> mime type
IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
SUPPORTED_SUFFIXES = sorted({*TEXT_SUFFIXES, *EMAIL_SUFFIXES, *IMAGE_SUFFIXES})
DEFAULT_CHANNELS = {"text": "PORTAL", "email": "EMAIL", "image": "SCANNER"}  # per kind of file
DEFAULT_SENDER = "mailroom-produce"
DOCUMENT_FIELDS = {f["name"] for f in codec.schema("document").schema["fields"]}
REQUIRED_FIELDS = {f["name"] for f in codec.schema("document").schema["fields"] if "default" not in f} - {"received_ms"}
IGNORED_FIELDS = {"label"}  # the generator's ground truth: never sent with the document
_EMAIL_HEADERS_KEPT_OUT = {"content-type", "content-transfer-encoding", "mime-version", "received"}


@dataclass(frozen=True)
class Refusal:
    """An input that did not become a message, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Message:
    source: str  # file, line or generator index it came from
    key: bytes  # doc_id
    value: bytes  # single-object encoded document


Candidate = Union[tuple[str, dict], Refusal]  # (source, document dict) or a refusal


@dataclass
class Plan:
    """What will be sent and what was refused, decided before sending."""

    messages: list[Message] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(len(m.value) for m in self.messages)


@dataclass
class ProduceReport:
    topic: str
    sent: int
    refused: list[Refusal]
    failed: list[Refusal]  # accepted for sending, but the broker did not acknowledge them
    bytes_sent: int
    seconds: float

    def summary(self) -> str:
        rate = f", {self.sent / self.seconds:,.0f} docs/s" if self.seconds > 0 and self.sent else ""
        return (f"sent {self.sent} document(s) ({self.bytes_sent / 1e6:,.1f} MB) to {self.topic} in {self.seconds:.1f} s{rate}; "
                f"refused {len(self.refused)}; delivery failed for {len(self.failed)}")


# --- sources ---------------------------------------------------------------------------------


def to_document(raw: dict, now_ms: int) -> dict:
    """A document-schema dict from a looser one (generator output, a JSONL line, an API caller).

    Accepts lower-case enum symbols, a base64 string for the image, and leaves out fields that
    have a default; received_ms defaults to now_ms. Drops `label`. Raises ValueError.
    """
    unknown = set(raw) - DOCUMENT_FIELDS - IGNORED_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; a document has {', '.join(sorted(DOCUMENT_FIELDS))}")
    missing = REQUIRED_FIELDS - set(raw)
    if missing:
        raise ValueError(f"missing field(s) {', '.join(sorted(missing))}")
    doc = {k: v for k, v in raw.items() if k in DOCUMENT_FIELDS}
    doc.setdefault("received_ms", now_ms)
    for name in ("channel", "content_type"):
        if isinstance(doc.get(name), str):
            doc[name] = doc[name].upper()
    if isinstance(doc.get("image"), str):
        try:
            doc["image"] = base64.b64decode(doc["image"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"image is not base64: {exc}") from None
    return doc


def from_jsonl(path: Path, now_ms: int) -> Iterator[Candidate]:
    """One candidate per non-blank line of a JSONL file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        yield Refusal(str(path), f"cannot read: {exc}")
        return
    for number, line in enumerate(lines, 1):
        source = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
            yield source, to_document(raw, now_ms)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            yield Refusal(source, f"not a document: {exc}")


def from_generator(count: int, seed: int) -> Iterator[Candidate]:
    """`count` documents from models.generator (their labels are not sent)."""
    from models.generator import generate

    for index, raw in enumerate(generate(count, seed)):
        yield f"generated #{index}", to_document(raw, raw["received_ms"])


def from_directory(directory: Path, now_ms: int, sender: str = DEFAULT_SENDER, channel: str | None = None,
                   id_prefix: str = "") -> Iterator[Candidate]:
    """One candidate per file under `directory` (recursively, in name order).

    doc_id: id_prefix + the path below `directory` without its suffix, spaces as '_'.
    .eml: sender, subject and text/plain body from the e-mail; other files: `sender`.
    channel: EMAIL for .eml, PORTAL for .txt, SCANNER for images, unless `channel` is given.
    """
    for path in sorted(p for p in directory.rglob("*") if not p.is_dir()):
        relative = path.relative_to(directory)
        source = str(relative)
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            yield Refusal(source, f"unsupported file type {suffix or '(none)'}; supported: {' '.join(SUPPORTED_SUFFIXES)}")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield Refusal(source, f"cannot read: {exc.strerror or exc}")
            continue
        if not data.strip():
            yield Refusal(source, "empty file (nothing but whitespace)" if data else "empty file")
            continue
        base = {"doc_id": id_prefix + "_".join(str(relative.with_suffix("")).split()), "received_ms": now_ms, "sender": sender, "headers": {}}
        try:
            if suffix in EMAIL_SUFFIXES:
                doc = {**base, **_email_fields(data), "channel": channel or DEFAULT_CHANNELS["email"]}
            elif suffix in TEXT_SUFFIXES:
                doc = {**base, **_text_fields(data, TEXT_SUFFIXES[suffix]), "channel": channel or DEFAULT_CHANNELS["text"]}
            else:
                doc = {**base, **_image_fields(data), "channel": channel or DEFAULT_CHANNELS["image"]}
        except ValueError as exc:
            yield Refusal(source, str(exc))
            continue
        doc["headers"] = {**doc["headers"], "X-Source-File": source}
        yield source, doc


def _text_fields(data: bytes, mime_type: str) -> dict:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text (save it as UTF-8)") from None
    return {"content_type": "TEXT", "text": text, "image": None, "mime_type": mime_type, "page_count": 1, "subject": None}


def _email_fields(data: bytes) -> dict:
    message = BytesParser(policy=policy.default).parsebytes(data)
    if message["from"] is None:
        raise ValueError("not an e-mail: no From header")
    addresses = message["from"].addresses
    sender = addresses[0].addr_spec if addresses and addresses[0].addr_spec else str(message["from"])
    body = message.get_body(preferencelist=("plain",))
    if body is None:
        raise ValueError("e-mail without a text/plain part (HTML-only or attachments only)")
    try:
        text = body.get_content()
    except (LookupError, UnicodeError) as exc:
        raise ValueError(f"e-mail body cannot be decoded: {exc}") from None
    headers = {}
    for name, value in message.items():
        if name.lower() not in _EMAIL_HEADERS_KEPT_OUT:
            headers.setdefault(name, str(value))
    subject = message["subject"]
    return {"sender": sender, "subject": str(subject) if subject is not None else None, "content_type": "TEXT", "text": text,
            "image": None, "mime_type": "text/plain", "page_count": 1, "headers": headers}


def _image_fields(data: bytes) -> dict:
    from PIL import Image  # imported here: `mailroom --help` need not load Pillow and numpy

    from udfs.cleaning import sniff_format

    found = sniff_format(data)
    if found not in IMAGE_MIME_TYPES:
        raise ValueError(f"not a PNG, JPEG or TIFF image (the bytes look like {found or 'nothing known'})")
    try:
        with Image.open(io.BytesIO(data), formats=[found]) as image:
            pages = getattr(image, "n_frames", 1)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"unreadable {found} image: {exc}") from None
    return {"content_type": "IMAGE", "text": None, "image": data, "mime_type": IMAGE_MIME_TYPES[found], "page_count": pages, "subject": None}


# --- plan and send ---------------------------------------------------------------------------


def plan(candidates: Iterable[Candidate]) -> Plan:
    """Encode every candidate (schema-validated); refuse what does not encode, repeats a
    doc_id of this run, or is larger than the broker accepts."""
    result = Plan()
    first_source: dict[str, str] = {}
    for candidate in candidates:
        if isinstance(candidate, Refusal):
            result.refused.append(candidate)
            continue
        source, document = candidate
        try:
            value = codec.encode("document", document, validate=True)
        except codec.InvalidRecord as exc:
            result.refused.append(Refusal(source, str(exc)))
            continue
        doc_id = document["doc_id"]
        if doc_id in first_source:
            result.refused.append(Refusal(source, f"doc_id {doc_id!r} was already used by {first_source[doc_id]}"))
        elif len(value) > MAX_MESSAGE_BYTES:
            result.refused.append(Refusal(source, f"{len(value):,} bytes, more than the broker accepts ({MAX_MESSAGE_BYTES:,})"))
        else:
            first_source[doc_id] = source
            result.messages.append(Message(source, doc_id.encode("utf-8"), value))
    return result


class DocumentProducer:
    """Sends documents to the documents topic (or `topic`), keyed by doc_id.

    `kafka`: a KafkaProducer-like object (tests pass a fake); by default kafkautil.producer.
    """

    def __init__(self, settings: Settings, topic: str | None = None, kafka=None):
        from mailroom.kafkautil import producer

        self.topic = topic or topic_name("documents", settings.topic_prefix)
        self.principal = settings.as_principal("producer").principal
        # documents are tens of KB: kafka-python's default 16 KB batch would hold one (1 MB: +15% docs/s here)
        self.kafka = kafka if kafka is not None else producer(settings.as_principal("producer"), batch_size=2**20)

    def send(self, document: dict):
        """Encode one document (validated) and send it; returns kafka-python's future.

        Raises ValueError (not a document: unknown or missing fields) or codec.InvalidRecord.
        """
        doc = to_document(document, int(time.time() * 1000))
        return self.kafka.send(self.topic, value=codec.encode("document", doc, validate=True), key=doc["doc_id"].encode("utf-8"))

    def send_many(self, documents: Iterable[dict], progress: bool = True) -> ProduceReport:
        """Plan (encode, refuse) all documents first, then send what is valid."""
        now_ms = int(time.time() * 1000)
        candidates: list[Candidate] = []
        for index, document in enumerate(documents):
            try:
                candidates.append((f"document #{index}", to_document(document, now_ms)))
            except ValueError as exc:
                candidates.append(Refusal(f"document #{index}", str(exc)))
        return self.send_plan(plan(candidates), progress)

    def send_plan(self, planned: Plan, progress: bool = True) -> ProduceReport:
        """Send every planned message, wait for all acknowledgements, report."""
        started = time.monotonic()
        failed: list[Refusal] = []
        with tqdm(total=len(planned.messages), unit="doc", desc=f"sending to {self.topic}", disable=not progress) as bar:
            pending = []
            for message in planned.messages:
                future = self.kafka.send(self.topic, value=message.value, key=message.key)
                future.add_both(lambda _: bar.update(1))
                pending.append((message, future))
            self.kafka.flush()
        for message, future in pending:
            if future.failed():
                refused = access_refusal(future.exception, self.principal, "Write", f"topic {self.topic}")
                failed.append(Refusal(message.source, refused or f"not acknowledged: {future.exception}"))
        delivered = [m for m, f in pending if not f.failed()]
        return ProduceReport(self.topic, len(delivered), planned.refused, failed, sum(len(m.value) for m in delivered), time.monotonic() - started)

    def close(self) -> None:
        self.kafka.close()

    def __enter__(self) -> "DocumentProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- command line ----------------------------------------------------------------------------


def _print_plan(planned: Plan, shown: int) -> None:
    console.print(f"{len(planned.messages) + len(planned.refused)} input(s): {len(planned.messages)} to send "
                  f"({planned.total_bytes / 1e6:,.1f} MB), {len(planned.refused)} refused")
    for refusal in planned.refused[:shown]:
        console.print(f"  [yellow]refused[/yellow] {refusal.source}: {refusal.reason}", highlight=False)
    if len(planned.refused) > shown:
        console.print(f"  ... and {len(planned.refused) - shown} more (--show-refused N to see them)")


def _candidates(args: argparse.Namespace, now_ms: int) -> Iterable[Candidate]:
    if args.dir:
        return from_directory(args.dir, now_ms, args.sender, args.channel, args.id_prefix)
    if args.jsonl:
        return from_jsonl(args.jsonl, now_ms)
    return from_generator(args.generate, args.seed)


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    if args.dir and not args.dir.is_dir():
        err.print(f"[red]error:[/red] {args.dir} is not a directory")
        return 2
    if args.jsonl and not args.jsonl.is_file():
        err.print(f"[red]error:[/red] {args.jsonl} is not a file")
        return 2
    try:
        planned = plan(_candidates(args, int(time.time() * 1000)))
    except ModuleNotFoundError as exc:
        if not args.generate or not (exc.name or "").startswith("models"):
            raise
        err.print(f"[red]error:[/red] the generator is not available ({exc}); use --dir or --jsonl")
        return 2
    _print_plan(planned, args.show_refused)
    if not planned.messages:
        err.print("[red]nothing to send[/red]")
        return 1
    if args.dry_run:
        console.print("dry run: nothing sent")
        return 0
    if args.strict and planned.refused:
        err.print(f"[red]--strict:[/red] nothing sent because {len(planned.refused)} input(s) were refused")
        return 1
    try:
        with DocumentProducer(settings, args.topic) as producer:
            report = producer.send_plan(planned, progress=not args.no_progress)
    except KafkaError as exc:
        from rich.markup import escape

        from mailroom.kafkautil import explain

        topic = args.topic or topic_name("documents", settings.topic_prefix)
        err.print(f"[red]error:[/red] {escape(explain(exc, settings.as_principal('producer'), 'Write', f'topic {topic}'))}", highlight=False)
        return 1
    console.print(report.summary())
    for failure in report.failed[:args.show_refused]:
        console.print(f"  [red]failed[/red] {failure.source}: {failure.reason}", highlight=False)
    return 0 if not report.failed else 1


def register(sub) -> None:
    parser = sub.add_parser(
        "produce", help="send documents (files, JSONL or generated) to the documents topic",
        description=__doc__.split("\n\nAs a library")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 when every message to send was acknowledged; 1 when something failed, nothing was left to "
               "send, or --strict found refusals; 2 on a bad source argument.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dir", type=Path, metavar="DIR", help="every file under DIR: .txt (PORTAL), .eml (EMAIL), "
                        ".png/.tif/.tiff/.jpg/.jpeg scans (SCANNER); doc_id = path below DIR without suffix")
    source.add_argument("--jsonl", type=Path, metavar="FILE", help="one JSON document per line, fields as in "
                        "schemas/document.v2.avsc (enum symbols in any case, image as base64, received_ms defaults to now)")
    source.add_argument("--generate", type=int, metavar="N", help="N documents from models.generator (labels are not sent)")
    parser.add_argument("--seed", type=int, default=0, help="with --generate: the generator's seed (default 0)")
    parser.add_argument("--sender", default=DEFAULT_SENDER, help="with --dir: sender of files that are not e-mails (default %(default)s)")
    parser.add_argument("--channel", type=str.upper, choices=["EMAIL", "PORTAL", "API", "SCANNER"], help="with --dir: one channel for every file")
    parser.add_argument("--id-prefix", default="", help="with --dir: put this before every doc_id (to send the same files again as new documents)")
    parser.add_argument("--topic", help="topic to send to (default: the declared documents topic)")
    parser.add_argument("--dry-run", action="store_true", help="read, encode and report; send nothing")
    parser.add_argument("--strict", action="store_true", help="send nothing if any input is refused")
    parser.add_argument("--show-refused", type=int, default=20, metavar="N", help="list at most N refusals (default 20)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd)
