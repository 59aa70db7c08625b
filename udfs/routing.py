"""The router's logic: decode, validate and clean a document; route it or dead-letter it.

Plain Python (no pyflink): the Flink job calls `Router.route` once per Kafka record and writes
the result's `value` to the topic named by `result.destination` (a key of schemas.topics).

Only *expected* bad input becomes a dead letter, with one of these reason codes (the same
enum, DeadLetterReason, is in schemas/dead_letter.v2.avsc; `udfs.dead_letters.Reason`). Any other exception is a bug in
our code and propagates.

| reason                 | when                                                                   |
|------------------------|------------------------------------------------------------------------|
| UNDECODABLE            | not Avro single-object encoded, truncated, corrupt, trailing bytes     |
| UNKNOWN_SCHEMA         | the header's schema fingerprint is not one of ours                     |
| WRONG_RECORD_TYPE      | one of our schemas, but not a document                                 |
| INVALID_TEXT_ENCODING  | a string is not UTF-8, or the text is mostly replacement characters    |
| MISSING_FIELD          | doc_id, sender or mime_type is empty                                   |
| INVALID_FIELD          | doc_id too long or with whitespace/control characters; bad page_count  |
| INVALID_TIMESTAMP      | received_ms before 2000-01-01 or beyond now + allowed clock skew       |
| MISSING_CONTENT        | no (or empty) text on a TEXT document, no image on an IMAGE document   |
| CONTENT_TYPE_MISMATCH  | content disagrees with content_type or mime_type                       |
| UNSUPPORTED_MEDIA_TYPE | a mime type we do not route (application/pdf, text/html, image/gif)    |
| CORRUPT_IMAGE          | the image does not decode                                              |
| OVERSIZED              | message bytes, text characters or image pixels beyond the limits       |
| EMPTY_AFTER_CLEANING   | nothing left after cleaning (whitespace, control characters only)      |
| DUPLICATE_ID           | the doc_id was routed before within the duplicate window               |

>>> config = RouterConfig()
>>> router = Router(config, DuplicateWindow(config.duplicate_window_ms))
>>> result = router.route(b"junk", "mailroom.documents", 0, 8, now_ms=1_750_000_000_000)
>>> result.destination, result.reason
(<Destination.DEAD_LETTER: 'dead_letters'>, <Reason.UNDECODABLE: 'UNDECODABLE'>)
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import MutableMapping

from schemas.units import HOUR_MS
from schemas import codec
from udfs.dead_letters import Reason, SourceRecord, dead_letter
from udfs.cleaning import CorruptImage, FormatMismatch, ImageTooLarge, clean_image, clean_line, clean_text

ROUTER_VERSION = "1.1.0"  # bump when the rules change: it is written into every output
TEXT_MIME_TYPES = frozenset({"text/plain"})
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/tiff": "TIFF"}  # mime type -> Pillow format
_BAD_ID_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


class Destination(str, Enum):
    """Where a result goes; the value is the topic's key in schemas.topics."""

    TEXT = "routed_text"
    SCANS = "routed_scans"
    DEAD_LETTER = "dead_letters"


@dataclass(frozen=True)
class RouterConfig:
    """The router's limits and identity. Picklable: the Flink job passes it to its workers."""

    job: str = "router"
    job_version: str = ROUTER_VERSION
    max_message_bytes: int = 20 * 2**20  # larger messages are OVERSIZED before decoding
    max_text_chars: int = 1_000_000
    max_image_pixels: int = 50_000_000  # first page, checked from the header before decoding
    max_image_side: int = 2000  # routed scans are scaled down to fit
    max_pages: int = 10_000  # a page_count beyond this is INVALID_FIELD
    max_routed_pages: int = 5  # pages of a multi-page scan routed (and read by OCR); a note says when more were left out
    max_doc_id_chars: int = 200
    max_replacement_ratio: float = 0.5  # more U+FFFD (and lone surrogates) than this share of the text: INVALID_TEXT_ENCODING
    min_received_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z
    max_clock_skew_ms: int = HOUR_MS  # how far received_ms may be ahead of the router's clock
    duplicate_window_ms: int = 24 * HOUR_MS


class DuplicateWindow:
    """Was this doc_id first seen less than `window_ms` ago? Then it is a duplicate.

    The decision per key is pure (`is_duplicate(first_seen_ms, now_ms)`), so the Flink job keys
    the stream by doc_id and keeps the first sighting in keyed state with a TTL of the window.
    `seen` keeps first sightings in `first_seen`: by default a dict that drops expired entries
    as time passes; any mutable mapping you pass is used as it is.

    >>> window = DuplicateWindow(window_ms=1000)
    >>> window.seen("a", now_ms=0), window.seen("a", now_ms=999), window.seen("a", now_ms=1000)
    (False, True, False)
    """

    def __init__(self, window_ms: int, first_seen: MutableMapping[str, int] | None = None):
        self.window_ms = window_ms
        self._expires_itself = first_seen is None
        self.first_seen: MutableMapping[str, int] = OrderedDict() if first_seen is None else first_seen

    def is_duplicate(self, first_seen_ms: int | None, now_ms: int) -> bool:
        return first_seen_ms is not None and now_ms - first_seen_ms < self.window_ms

    def seen(self, doc_id: str, now_ms: int) -> bool:
        """True if doc_id is a duplicate; otherwise remember now_ms as its first sighting."""
        if self._expires_itself:
            self._drop_expired(now_ms)
        if self.is_duplicate(self.first_seen.get(doc_id), now_ms):
            return True
        self.first_seen.pop(doc_id, None)  # re-inserted last: the dict stays in first-seen order
        self.first_seen[doc_id] = now_ms
        return False

    def _drop_expired(self, now_ms: int) -> None:
        while self.first_seen:
            doc_id, first_seen_ms = next(iter(self.first_seen.items()))
            if self.is_duplicate(first_seen_ms, now_ms):
                return
            del self.first_seen[doc_id]


@dataclass(frozen=True)
class RoutingResult:
    """What to write where: an encoded routed_document or dead_letter, keyed by doc_id."""

    destination: Destination
    value: bytes
    doc_id: str | None
    reason: Reason | None = None  # dead letters only
    message: str = ""  # dead letters only

    @property
    def key(self) -> bytes | None:
        return None if self.doc_id is None else self.doc_id.encode("utf-8")


class Rejected(Exception):
    """Expected bad input: becomes a dead letter with `reason`."""

    def __init__(self, reason: Reason, message: str, doc_id: str | None = None):
        super().__init__(message)
        self.reason, self.message, self.doc_id = reason, message, doc_id


_DECODE_REASONS = (  # most specific first: InvalidUtf8 is a CorruptBody
    (codec.InvalidUtf8, Reason.INVALID_TEXT_ENCODING),
    (codec.CorruptBody, Reason.UNDECODABLE),
    (codec.NotSingleObject, Reason.UNDECODABLE),
    (codec.UnknownSchema, Reason.UNKNOWN_SCHEMA),
    (codec.WrongRecordType, Reason.WRONG_RECORD_TYPE),
)
_IMAGE_REASONS = ((FormatMismatch, Reason.CONTENT_TYPE_MISMATCH), (CorruptImage, Reason.CORRUPT_IMAGE), (ImageTooLarge, Reason.OVERSIZED))


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Router:
    """Routes documents to routed_text / routed_scans, or dead-letters them with a reason.

    `duplicates`: the DuplicateWindow to check doc_ids against, or None to skip the check.
    """

    def __init__(self, config: RouterConfig, duplicates: DuplicateWindow | None = None):
        self.config = config
        self.duplicates = duplicates

    def route(self, value: bytes, topic: str, partition: int, offset: int, now_ms: int) -> RoutingResult:
        try:
            return self._route(value, topic, partition, offset, now_ms)
        except Rejected as rejected:
            return self.dead_letter(value, topic, partition, offset, now_ms, rejected)

    def dead_letter(self, value: bytes, topic: str, partition: int, offset: int, now_ms: int, rejected: Rejected) -> RoutingResult:
        """The dead letter for `value`: the original bytes, where they came from and why."""
        letter = dead_letter(SourceRecord(value, topic, partition, offset), rejected.reason, rejected.message, self.config.job,
                             self.config.job_version, now_ms, rejected.doc_id)
        return RoutingResult(Destination.DEAD_LETTER, letter, rejected.doc_id, rejected.reason, rejected.message)

    def duplicate(self, value: bytes, topic: str, partition: int, offset: int, now_ms: int, doc_id: str) -> RoutingResult:
        """The DUPLICATE_ID dead letter for `value` (also for a duplicate check kept in keyed state)."""
        message = f"doc_id {_short(doc_id)} was already routed within the last {self.config.duplicate_window_ms:,} ms"
        return self.dead_letter(value, topic, partition, offset, now_ms, Rejected(Reason.DUPLICATE_ID, message, doc_id))

    def _route(self, value: bytes, topic: str, partition: int, offset: int, now_ms: int) -> RoutingResult:
        config = self.config
        if len(value) > config.max_message_bytes:
            raise Rejected(Reason.OVERSIZED, f"message is {len(value):,} bytes, the limit is {config.max_message_bytes:,}")
        try:
            _, version, doc = codec.decode(value, expected="document")
        except codec.DecodeError as exc:
            raise Rejected(next(reason for kind, reason in _DECODE_REASONS if isinstance(exc, kind)), str(exc)) from None
        doc_id, sender = self._check_fields(doc, now_ms)
        try:
            routed = self._clean_content(doc)
        except Rejected as rejected:
            rejected.doc_id = doc_id
            raise
        if self.duplicates is not None and self.duplicates.seen(doc_id, now_ms):
            return self.duplicate(value, topic, partition, offset, now_ms, doc_id)
        subject = clean_line(doc["subject"]) if doc["subject"] is not None else ""
        routed.update(
            doc_id=doc_id,
            received_ms=doc["received_ms"],
            channel=doc["channel"],
            sender=sender,
            subject=subject or None,
            content_type=doc["content_type"],
            page_count=doc["page_count"],
            headers=doc["headers"],
            language=doc.get("language"),
            document_version=version,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            routed_ms=now_ms,
            router_job=config.job,
            router_version=config.job_version,
        )
        destination = Destination.TEXT if doc["content_type"] == "TEXT" else Destination.SCANS
        return RoutingResult(destination, codec.encode("routed_document", routed), doc_id)

    def _check_fields(self, doc: dict, now_ms: int) -> tuple[str, str]:
        """(doc_id, cleaned sender), once every field outside the content is valid."""
        config, doc_id = self.config, doc["doc_id"]

        def reject(reason: Reason, message: str):
            raise Rejected(reason, message, doc_id or None)

        if not doc_id:
            reject(Reason.MISSING_FIELD, "doc_id is empty")
        if len(doc_id) > config.max_doc_id_chars:
            reject(Reason.INVALID_FIELD, f"doc_id {_short(doc_id)} has {len(doc_id)} characters, the limit is {config.max_doc_id_chars}")
        if _BAD_ID_CHARS.search(doc_id):
            reject(Reason.INVALID_FIELD, f"doc_id {_short(doc_id)} contains whitespace or control characters")
        sender = clean_line(doc["sender"])
        if not sender:
            reject(Reason.MISSING_FIELD, "sender is empty")
        if not doc["mime_type"].strip():
            reject(Reason.MISSING_FIELD, "mime_type is empty")
        received_ms = doc["received_ms"]
        if received_ms < config.min_received_ms:
            reject(Reason.INVALID_TIMESTAMP, f"received_ms {received_ms} is before {config.min_received_ms} (is it in seconds?)")
        if received_ms > now_ms + config.max_clock_skew_ms:
            reject(Reason.INVALID_TIMESTAMP, f"received_ms {received_ms} is {received_ms - now_ms:,} ms ahead of the router's clock ({now_ms}); the allowed skew is {config.max_clock_skew_ms:,} ms")
        if not 1 <= doc["page_count"] <= config.max_pages:
            reject(Reason.INVALID_FIELD, f"page_count {doc['page_count']} is not between 1 and {config.max_pages}")
        return doc_id, sender

    def _clean_content(self, doc: dict) -> dict:
        """The content fields of the routed document; Rejected if the content is unusable."""
        mime_type = doc["mime_type"].split(";")[0].strip().lower()
        if doc["content_type"] == "TEXT":
            return self._clean_text(doc, mime_type)
        return self._clean_image(doc, mime_type)

    def _clean_text(self, doc: dict, mime_type: str) -> dict:
        config, text = self.config, doc["text"]
        if mime_type in IMAGE_FORMATS:
            raise Rejected(Reason.CONTENT_TYPE_MISMATCH, f"a TEXT document with mime type {mime_type}")
        if mime_type not in TEXT_MIME_TYPES:
            raise Rejected(Reason.UNSUPPORTED_MEDIA_TYPE, f"mime type {_short(mime_type)} is not routed (text: {', '.join(sorted(TEXT_MIME_TYPES))})")
        if doc["image"] is not None:
            raise Rejected(Reason.CONTENT_TYPE_MISMATCH, f"a TEXT document carries {len(doc['image']):,} bytes of image")
        if not text:
            raise Rejected(Reason.MISSING_CONTENT, "a TEXT document without text" if text is None else "a TEXT document with empty text")
        if len(text) > config.max_text_chars:
            raise Rejected(Reason.OVERSIZED, f"text has {len(text):,} characters, the limit is {config.max_text_chars:,}")
        body, cleaning = clean_text(text, email=doc["channel"] == "EMAIL")
        replaced = cleaning.replacement_chars_removed
        if replaced and replaced > config.max_replacement_ratio * (replaced + len(body)):
            raise Rejected(Reason.INVALID_TEXT_ENCODING, f"{replaced} of the text's characters are U+FFFD replacement characters or lone surrogates: it was decoded wrongly upstream")
        if not body:
            raise Rejected(Reason.EMPTY_AFTER_CLEANING, f"nothing left of {len(text)} characters after removing control characters and whitespace")
        return {"text": body, "image": None, "pages": [], "mime_type": "text/plain", "original_mime_type": mime_type,
                "text_cleaning": dict(vars(cleaning)), "image_cleaning": None, "notes": []}

    def _clean_image(self, doc: dict, mime_type: str) -> dict:
        config, image = self.config, doc["image"]
        if mime_type in TEXT_MIME_TYPES:
            raise Rejected(Reason.CONTENT_TYPE_MISMATCH, f"an IMAGE document with mime type {mime_type}")
        if mime_type not in IMAGE_FORMATS:
            raise Rejected(Reason.UNSUPPORTED_MEDIA_TYPE, f"mime type {_short(mime_type)} is not routed (images: {', '.join(sorted(IMAGE_FORMATS))})")
        if doc["text"] is not None:
            raise Rejected(Reason.CONTENT_TYPE_MISMATCH, "an IMAGE document carries text" + (" and no image" if image is None else ""))
        if not image:
            raise Rejected(Reason.MISSING_CONTENT, "an IMAGE document without image bytes")
        try:
            pngs, cleaning = clean_image(image, IMAGE_FORMATS[mime_type], config.max_image_pixels, config.max_image_side,
                                         config.max_routed_pages)
        except (FormatMismatch, CorruptImage, ImageTooLarge) as exc:
            raise Rejected(next(reason for kind, reason in _IMAGE_REASONS if isinstance(exc, kind)), str(exc)) from None
        notes = []
        if cleaning.frames > len(pngs):
            notes.append(f"routed the first {len(pngs)} of {cleaning.frames} pages (the router's page cap)")
        if cleaning.frames != doc["page_count"]:
            notes.append(f"page_count says {doc['page_count']}, the file has {cleaning.frames} page(s)")
        return {"text": None, "image": pngs[0], "pages": pngs[1:], "mime_type": "image/png", "original_mime_type": mime_type,
                "text_cleaning": None, "image_cleaning": dict(vars(cleaning)), "notes": notes}
