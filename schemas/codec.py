"""The one wire format of every Mailroom topic: Avro single-object encoding.

Each message value is

    C3 01 | 8-byte CRC-64-AVRO fingerprint, little-endian | Avro binary body

where the fingerprint is the Rabin fingerprint of the writer schema's Parsing Canonical Form
(https://avro.apache.org/docs/current/specification/#single-object-encoding). A reader looks
the fingerprint up among the schemas in this folder, so every message says which schema and
version wrote it, without a registry server.

Schemas live beside this module as ``<record_type>.v<N>.avsc`` (``document.v1.avsc``,
``document.v2.avsc``, ...). They are parsed once, at import. ``encode`` writes with the newest
version unless told otherwise; ``decode`` reads any known version and resolves it onto the
reader's version (the newest by default) with Avro schema resolution.

>>> data = encode("ground_truth", {"doc_id": "d1", "label": "invoice", "department": "finance",
...                                "sent_ms": 1_700_000_000_000, "kind": "CONFIRM"})
>>> data[:2].hex(), writer_schema(data).name
('c301', 'ground_truth.v1')
>>> decode(data, expected="ground_truth").record["label"]
'invoice'

Compatibility rule (FULL_TRANSITIVE, enforced by tests/unit/test_codec.py): a new version of a
record type may only add fields that have a default, and may only drop fields that had one.
Never rename a field, change its type, or reorder an enum's symbols. Enums are closed sets,
except DeadLetterReason whose default (OTHER) lets old readers read new reason codes; labels
are strings, so a new class is not a schema change. A new version must change the canonical
form (a doc-only edit is made in place: it does not change the fingerprint).

Timestamps are plain ``long`` epoch milliseconds (UTC; the field names end in ``_ms``), without
the timestamp-millis logical type on purpose: Apache Avro's Python library (1.12) leaves
``{"type":"long"}`` in the Parsing Canonical Form of a logical-typed long where Java and
fastavro write ``"long"``, so its fingerprints would not match ours.

Reading our messages without this module (Python ``avro``, Java, ...): check the first two
bytes are C3 01, look bytes 2..10 up among the fingerprints of the .avsc files (Java:
``SchemaNormalization.parsingFingerprint64``; Python avro: ``schema.fingerprint("CRC-64-AVRO")``,
both in wire byte order), and decode the rest with a plain binary decoder and that schema as
writer schema. Java's ``BinaryMessageDecoder`` with a ``SchemaStore.Cache`` holding every
version does all of this.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate as _validate

SCHEMA_DIR = Path(__file__).resolve().parent
MARKER = b"\xc3\x01"
HEADER_SIZE = 10  # marker + 8-byte fingerprint

_FILE_NAME = re.compile(r"^(?P<type>[a-z_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")


class CodecError(Exception):
    """Base of every error this module raises about data."""


class DecodeError(CodecError):
    """The bytes are not a message we can read (subclasses say why)."""


class NotSingleObject(DecodeError):
    """No C3 01 marker, or shorter than the 10-byte header."""


class UnknownSchema(DecodeError):
    """The header's fingerprint matches none of our schemas."""

    def __init__(self, message: str, fingerprint: bytes):
        super().__init__(message)
        self.fingerprint = fingerprint


class WrongRecordType(DecodeError):
    """A known schema, but not the record type the caller expects."""

    def __init__(self, message: str, writer: "SchemaVersion"):
        super().__init__(message)
        self.writer = writer


class CorruptBody(DecodeError):
    """The body does not decode with its writer schema: truncated, corrupt or trailing bytes."""

    def __init__(self, message: str, writer: "SchemaVersion"):
        super().__init__(message)
        self.writer = writer


class InvalidUtf8(CorruptBody):
    """A string in the body is not valid UTF-8."""


class InvalidRecord(CodecError):
    """``encode`` was given a record that does not fit the schema."""


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record type, as loaded from ``<record_type>.v<version>.avsc``."""

    record_type: str
    version: int
    schema: dict = field(repr=False)  # the .avsc as written
    canonical_form: str = field(repr=False)
    fingerprint: bytes  # CRC-64-AVRO of canonical_form, little-endian (wire order)
    parsed: dict = field(repr=False, compare=False)  # fastavro's parsed form

    @property
    def name(self) -> str:
        return f"{self.record_type}.v{self.version}"

    @property
    def header(self) -> bytes:
        return MARKER + self.fingerprint


class Decoded(NamedTuple):
    record_type: str
    version: int  # the writer's version
    record: dict


def _load(schema_dir: Path) -> dict[str, dict[int, SchemaVersion]]:
    by_type: dict[str, dict[int, SchemaVersion]] = {}
    seen: dict[bytes, str] = {}
    for path in sorted(schema_dir.glob("*.avsc")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise RuntimeError(f"{path}: schema files are named <record_type>.v<N>.avsc")
        schema = json.loads(path.read_text(encoding="utf-8"))
        parsed = parse_schema(schema)
        canonical = to_parsing_canonical_form(parsed)
        loaded = SchemaVersion(
            record_type=match["type"],
            version=int(match["version"]),
            schema=schema,
            canonical_form=canonical,
            fingerprint=bytes.fromhex(_fingerprint(canonical, "CRC-64-AVRO")),
            parsed=parsed,
        )
        if loaded.fingerprint in seen:
            raise RuntimeError(f"{path.name} has the same canonical form as {seen[loaded.fingerprint]}: a new version must change the schema")
        seen[loaded.fingerprint] = loaded.name
        by_type.setdefault(loaded.record_type, {})[loaded.version] = loaded
    for record_type, versions in by_type.items():
        if sorted(versions) != list(range(1, len(versions) + 1)):
            raise RuntimeError(f"{record_type}: versions must be 1..N without gaps, found {sorted(versions)}")
    return by_type


_BY_TYPE = _load(SCHEMA_DIR)
_BY_FINGERPRINT = {s.fingerprint: s for versions in _BY_TYPE.values() for s in versions.values()}
SCHEMAS: tuple[SchemaVersion, ...] = tuple(s for t in sorted(_BY_TYPE) for _, s in sorted(_BY_TYPE[t].items()))


def schema(record_type: str, version: int | None = None) -> SchemaVersion:
    """A loaded schema; the newest version of `record_type` when `version` is None."""
    try:
        versions = _BY_TYPE[record_type]
        return versions[max(versions) if version is None else version]
    except KeyError:
        known = ", ".join(s.name for s in SCHEMAS)
        raise ValueError(f"no schema {record_type!r} version {version}; known: {known}") from None


def encode(record_type: str, record: dict, version: int | None = None, *, validate: bool = False) -> bytes:
    """Single-object encode `record` with `record_type`'s schema (the newest by default).

    Fields the record leaves out take their schema default. `validate=True` also checks value
    ranges (an int field must fit in 32 bits, ...), at some cost: use it for input from outside.
    Raises InvalidRecord when the record does not fit the schema.
    """
    target = schema(record_type, version)
    if validate:
        try:
            _validate(record, target.parsed, raise_errors=True)
        except ValidationError as exc:
            raise InvalidRecord(f"not a valid {target.name}: {'; '.join(map(_describe, exc.errors))}") from None
    buffer = io.BytesIO()
    buffer.write(target.header)
    try:
        schemaless_writer(buffer, target.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise InvalidRecord(f"not a valid {target.name}: {exc}") from exc
    return buffer.getvalue()


def _describe(error) -> str:
    """One fastavro validation error, without dumping whole schemas."""
    expected = error.schema
    if isinstance(expected, dict):
        symbols = expected.get("symbols")
        expected = f"one of {', '.join(symbols)}" if symbols else expected.get("name", expected.get("type"))
    value = repr(error.datum)
    return f"{error.field} is {value if len(value) <= 60 else value[:60] + '...'}, expected {expected}"


def writer_schema(data: bytes) -> SchemaVersion:
    """The schema that wrote `data`, from its header alone."""
    if data[:2] != MARKER:
        raise NotSingleObject(f"not Avro single-object encoded: starts with {bytes(data[:2]).hex() or 'nothing'}, not c301")
    if len(data) < HEADER_SIZE:
        raise NotSingleObject(f"truncated header: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    fingerprint = bytes(data[2:HEADER_SIZE])
    try:
        return _BY_FINGERPRINT[fingerprint]
    except KeyError:
        raise UnknownSchema(f"unknown schema fingerprint {fingerprint.hex()}", fingerprint) from None


def decode(data: bytes, expected: str | None = None, reader_version: int | None = None) -> Decoded:
    """Read a message written by any known version; resolve it onto the reader's version.

    `expected`: the record type the caller accepts (WrongRecordType otherwise).
    `reader_version`: the version to read as (the newest by default).
    Raises NotSingleObject, UnknownSchema, WrongRecordType, CorruptBody or InvalidUtf8.
    """
    writer = writer_schema(data)
    if expected is not None and writer.record_type != expected:
        raise WrongRecordType(f"a {writer.name} message where a {expected} was expected", writer)
    reader = schema(writer.record_type, reader_version)
    buffer = io.BytesIO(data)
    buffer.seek(HEADER_SIZE)
    try:
        record = schemaless_reader(buffer, writer.parsed, None if reader is writer else reader.parsed)
    except UnicodeDecodeError as exc:
        raise InvalidUtf8(f"{writer.name} body has a string that is not UTF-8: {exc.reason} (byte {exc.object[exc.start:exc.start + 1].hex()})", writer) from None
    except (EOFError, IndexError, ValueError, OverflowError) as exc:
        raise CorruptBody(f"{writer.name} body is truncated or corrupt ({type(exc).__name__}: {exc})", writer) from None
    if buffer.tell() != len(data):
        raise CorruptBody(f"{writer.name} body has {len(data) - buffer.tell()} trailing bytes", writer)
    return Decoded(writer.record_type, writer.version, record)
