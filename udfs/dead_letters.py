"""Dead letters: the reason codes, the record every job writes, and the failure budget.

Plain Python (no pyflink). The router dead-letters bad input with a specific reason. After the
router, a record that makes our own code raise (feature computation, a model, a decoder) is
dead-lettered as PROCESSING_ERROR with the exception's type and a short message, its original
bytes and where it was read, and the job goes on. `FailureBudget` keeps that from hiding a real
bug: more than `max_per_minute` such failures in a minute fail the job loudly.

>>> source = SourceRecord(b"junk", "mailroom.routed.scans", 1, 42)
>>> letter = processing_error(source, ValueError("not an image"), job="scoring", job_version="1", now_ms=1_750_000_000_000)
>>> record = codec.decode(letter, expected="dead_letter").record
>>> record["reason"], record["message"], record["source_offset"], record["original"]
('PROCESSING_ERROR', 'ValueError: not an image', 42, b'junk')
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from schemas import codec
from schemas.units import MINUTE_MS

MAX_MESSAGE_CHARS = 300  # of an exception's message in a dead letter (it may quote the input)


class Reason(str, Enum):
    """Dead-letter reason codes (schemas/dead_letter.v2.avsc's enum; the router's docstring says when)."""

    UNDECODABLE = "UNDECODABLE"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    WRONG_RECORD_TYPE = "WRONG_RECORD_TYPE"
    INVALID_TEXT_ENCODING = "INVALID_TEXT_ENCODING"
    MISSING_FIELD = "MISSING_FIELD"
    INVALID_FIELD = "INVALID_FIELD"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    MISSING_CONTENT = "MISSING_CONTENT"
    CONTENT_TYPE_MISMATCH = "CONTENT_TYPE_MISMATCH"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    CORRUPT_IMAGE = "CORRUPT_IMAGE"
    OVERSIZED = "OVERSIZED"
    EMPTY_AFTER_CLEANING = "EMPTY_AFTER_CLEANING"
    DUPLICATE_ID = "DUPLICATE_ID"
    PROCESSING_ERROR = "PROCESSING_ERROR"


class SourceRecord(NamedTuple):
    """A Kafka record as a job read it: the value, byte for byte, and where it came from."""

    value: bytes
    topic: str
    partition: int
    offset: int


def dead_letter(source: SourceRecord, reason: Reason, message: str, job: str, job_version: str, now_ms: int,
                doc_id: str | None = None) -> bytes:
    """The encoded dead letter for `source`: the original bytes, where they came from and why."""
    value = source.value
    has_header = value[:2] == codec.MARKER and len(value) >= codec.HEADER_SIZE
    try:
        writer = codec.writer_schema(value).name if has_header else None
    except codec.UnknownSchema:
        writer = None
    return codec.encode("dead_letter", {
        "original": value,
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "reason": reason.value,
        "message": message,
        "job": job,
        "job_version": job_version,
        "dead_lettered_ms": now_ms,
        "doc_id": doc_id,
        "writer_schema": writer,
        "fingerprint": value[2:codec.HEADER_SIZE].hex() if has_header else None,
    })


def processing_error(source: SourceRecord, exc: BaseException, job: str, job_version: str, now_ms: int, doc_id: str | None = None) -> bytes:
    """The PROCESSING_ERROR dead letter for a record whose processing raised `exc`."""
    detail = " ".join(str(exc).split())
    if len(detail) > MAX_MESSAGE_CHARS:
        detail = detail[:MAX_MESSAGE_CHARS - 1] + "…"
    message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return dead_letter(source, Reason.PROCESSING_ERROR, message, job, job_version, now_ms, doc_id)


class FailureStorm(RuntimeError):
    """Too many records failed in too short a time: a bug, not bad records. Fails the job."""


@dataclass
class FailureBudget:
    """At most `max_per_minute` processing errors in any 60 s; the next one raises FailureStorm.

    >>> budget = FailureBudget(max_per_minute=2)
    >>> budget.spend(0, ValueError("a")); budget.spend(1_000, ValueError("b"))
    >>> budget.spend(60_001, ValueError("c"))   # the first has left the minute: two in it
    >>> budget.spend(60_500, ValueError("d"))   # three within a minute
    Traceback (most recent call last):
    ...
    udfs.dead_letters.FailureStorm: 3 records failed within a minute (limit 2); the last: ValueError: d
    """

    max_per_minute: int
    _times: deque = field(default_factory=deque, repr=False)
    spent: int = 0  # failures so far, for the operator's metric

    def spend(self, now_ms: int, exc: BaseException) -> None:
        """Count one failure at `now_ms`; raise FailureStorm when the minute's budget is exceeded."""
        self.spent += 1
        self._times.append(now_ms)
        while self._times and self._times[0] <= now_ms - MINUTE_MS:
            self._times.popleft()
        if len(self._times) > self.max_per_minute:
            raise FailureStorm(f"{len(self._times)} records failed within a minute (limit {self.max_per_minute}); "
                               f"the last: {type(exc).__name__}: {exc}") from exc
