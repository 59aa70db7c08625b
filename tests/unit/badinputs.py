"""Valid documents and a corpus of bad input for the router, each with the reason it must get.

Used by tests/unit/test_routing.py (through `Router.route`) and by the integration test
(through Kafka and the Flink router): import it as `tests.unit.badinputs` from the project root.

>>> kinds = bad_inputs()
>>> len(kinds) >= 20, len({k.kind for k in kinds}) == len(kinds)
(True, True)
"""

from __future__ import annotations

import functools
import io
import json
import math
import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from PIL import Image, ImageDraw

from schemas import codec
from udfs.dead_letters import Reason
from udfs.routing import RouterConfig

RECEIVED_MS = 1_750_000_000_000  # 2025-06-15T15:06:40Z: received_ms of every document made here
TEXT = ("Dear Sir or Madam,\n\nplease find attached our invoice no. 2024-117 for the delivery of 40 office chairs.\n"
        "Payment is due within 30 days.\n\nKind regards,\nAnna Berg\nBerg Office Supplies")
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "GIF": "image/gif"}


@dataclass(frozen=True)
class BadInput:
    """One kind of bad input: the message value and the dead-letter reason it must get."""

    kind: str
    value: bytes
    reason: Reason
    description: str
    before: tuple[bytes, ...] = ()  # route these first (e.g. the first copy of a duplicate)


def text_document(doc_id: str = "text-1", text: str | None = TEXT, **fields) -> dict:
    """A valid TEXT document as a dict; `fields` override any field."""
    return {"doc_id": doc_id, "received_ms": RECEIVED_MS, "channel": "EMAIL", "sender": "anna@berg-office.example",
            "subject": "Invoice 2024-117", "content_type": "TEXT", "text": text, "image": None,
            "mime_type": "text/plain", "page_count": 1, "headers": {"Message-ID": f"<{doc_id}@berg-office.example>"}, **fields}


def scan_image(image_format: str = "PNG", size: tuple[int, int] = (850, 1100), pages: int = 1) -> bytes:
    """A page that looks like a scanned letter (dark lines of 'text' on white), in `image_format`."""
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    width, height = size
    for y in range(height // 10, height - height // 10, max(4, height // 40)):
        draw.rectangle((width // 10, y, width - width // 10 - (y * 37) % (width // 4), y + max(1, height // 120)), fill=(30, 30, 40))
    out = io.BytesIO()
    extra = {"save_all": True, "append_images": [page] * (pages - 1)} if pages > 1 else {}
    page.save(out, image_format, **extra)
    return out.getvalue()


def scan_document(doc_id: str = "scan-1", image: bytes | None = None, image_format: str = "PNG", **fields) -> dict:
    """A valid IMAGE document as a dict (a PNG scan unless told otherwise); `fields` override any field."""
    return {"doc_id": doc_id, "received_ms": RECEIVED_MS, "channel": "SCANNER", "sender": "scanner-3.mailroom.example",
            "subject": None, "content_type": "IMAGE", "text": None,
            "image": scan_image(image_format) if image is None else image,
            "mime_type": MIME_TYPES[image_format], "page_count": 1, "headers": {}, **fields}


def valid_text_document(doc_id: str = "text-1", text: str = TEXT, **fields) -> bytes:
    """An encoded (document, newest version) valid TEXT document."""
    return codec.encode("document", text_document(doc_id, text, **fields))


def valid_scan_document(doc_id: str = "scan-1", image_format: str = "PNG", **fields) -> bytes:
    """An encoded valid IMAGE document (a one-page scan in `image_format`: PNG, JPEG or TIFF)."""
    return codec.encode("document", scan_document(doc_id, image_format=image_format, **fields))


def _png(width: int, height: int, color_type: int, zlib_stream: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib_stream) + chunk(b"IEND", b"")


@functools.lru_cache(maxsize=4)
def black_png(width: int, height: int) -> bytes:
    """A valid all-black grayscale PNG, built without ever holding its pixels: a few KB per
    million pixels (a decompression bomb when large)."""
    row = 1 + width  # filter byte + one byte per pixel, all zero
    rows_per_block = next(n for n in range(max(1, 4_000_000 // row), 0, -1) if height % n == 0)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(row * rows_per_block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_empty_block = b"\x01\x00\x00\xff\xff"
    adler = ((row * height) % 65521) << 16 | 1  # Adler-32 of all-zero data
    stream = b"\x78\xda" + block * (height // rows_per_block) + final_empty_block + struct.pack(">I", adler)
    return _png(width, height, 0, stream)


@functools.lru_cache(maxsize=1)
def noise_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of random pixels, stored uncompressed: about 3 bytes per pixel."""
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 1:] = np.random.default_rng(0).integers(0, 256, size=(height, 3 * width), dtype=np.uint8)
    return _png(width, height, 2, zlib.compress(rows.tobytes(), 0))


def _document_v3(doc_id: str) -> bytes:
    """A document from a future producer: a schema version we do not know."""
    newer = dict(codec.schema("document").schema)
    newer["fields"] = [*newer["fields"], {"name": "priority", "type": "int", "default": 0}]
    parsed = parse_schema(newer)
    out = io.BytesIO()
    out.write(codec.MARKER + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")))
    schemaless_writer(out, parsed, {**text_document(doc_id), "language": None, "priority": 2})
    return out.getvalue()


def _with_bytes_replaced(value: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and value.count(old) == 1
    return value.replace(old, new)


def _corrupt_png(doc_id: str) -> bytes:
    png = bytearray(scan_image("PNG"))
    middle = png.index(b"IDAT") + 200
    png[middle:middle + 64] = random.Random(3).randbytes(64)
    return codec.encode("document", scan_document(doc_id, image=bytes(png)))


@functools.lru_cache(maxsize=8)
def _bad_inputs(prefix: str, config: RouterConfig) -> tuple[BadInput, ...]:
    def doc_id(kind: str) -> str:
        return f"{prefix}{kind}"

    def text(kind: str, **fields) -> bytes:
        return codec.encode("document", text_document(**{"doc_id": doc_id(kind), **fields}))

    def scan(kind: str, **fields) -> bytes:
        return codec.encode("document", scan_document(**{"doc_id": doc_id(kind), **fields}))

    valid = valid_text_document(doc_id("valid"))
    png, jpeg = scan_image("PNG"), scan_image("JPEG")
    first_copy = valid_text_document(doc_id("duplicate_id"))
    random_bytes = b"\x00" + random.Random(1).randbytes(255)
    far_future = RECEIVED_MS * 1000
    noisy_side = max(4096, math.isqrt(config.max_message_bytes // 3) + 1)  # 4096: 50 MB
    huge_side = (math.isqrt(config.max_image_pixels) // 100 + 1) * 100
    rows = [
        ("empty_bytes", b"", Reason.UNDECODABLE, "an empty message value"),
        ("random_bytes", random_bytes, Reason.UNDECODABLE, "256 random bytes"),
        ("json_document", json.dumps(text_document(doc_id("json_document"))).encode(), Reason.UNDECODABLE, "the document as JSON instead of Avro"),
        ("avro_without_header", valid[codec.HEADER_SIZE:], Reason.UNDECODABLE, "a plain Avro body without the single-object header"),
        ("truncated_header", valid[:6], Reason.UNDECODABLE, "the marker and half a fingerprint"),
        ("truncated_body", valid[:len(valid) // 2], Reason.UNDECODABLE, "a document cut in half"),
        ("trailing_bytes", valid + b"\x00\x01", Reason.UNDECODABLE, "a valid document followed by two stray bytes"),
        ("corrupt_body", valid[:codec.HEADER_SIZE] + b"\xff" * 12, Reason.UNDECODABLE, "a valid header, then a run of varint continuation bytes"),
        ("unknown_fingerprint", codec.MARKER + bytes(8) + valid[codec.HEADER_SIZE:], Reason.UNKNOWN_SCHEMA, "a fingerprint of zeros"),
        ("future_schema_version", _document_v3(doc_id("future_schema_version")), Reason.UNKNOWN_SCHEMA, "a document v3 (with a priority field) we have no schema for"),
        ("wrong_record_type", codec.encode("ground_truth", {"doc_id": doc_id("wrong_record_type"), "label": "invoice", "department": "finance",
                                                            "sent_ms": RECEIVED_MS, "kind": "CONFIRM"}),
         Reason.WRONG_RECORD_TYPE, "a ground_truth record on the documents topic"),
        ("invalid_utf8_text", _with_bytes_replaced(text("invalid_utf8_text", text="Rechnung XXXX bitte zahlen"), b"XXXX", b"\xff\xfe\xc3\x28"),
         Reason.INVALID_TEXT_ENCODING, "the text field holds bytes that are not UTF-8 (written raw)"),
        ("replacement_chars_text", text("replacement_chars_text", text="\ufffd\ufffd\ufffd \ufffd\ufffd\ufffd\ufffd \ufffd\ufffd\ufffd\ufffd\ufffd 42"),
         Reason.INVALID_TEXT_ENCODING, "text that was decoded with errors='replace' upstream: almost all U+FFFD"),
        ("empty_doc_id", text("empty_doc_id", doc_id=""), Reason.MISSING_FIELD, "doc_id is the empty string"),
        ("empty_sender", text("empty_sender", sender=" \t"), Reason.MISSING_FIELD, "sender is only whitespace"),
        ("empty_mime_type", text("empty_mime_type", mime_type=""), Reason.MISSING_FIELD, "mime_type is the empty string"),
        ("doc_id_with_spaces", text("doc_id_with_spaces", doc_id=f"{doc_id('doc_id_with_spaces')} copy\n"), Reason.INVALID_FIELD, "doc_id contains a space and a newline"),
        ("zero_page_count", text("zero_page_count", page_count=0), Reason.INVALID_FIELD, "page_count 0"),
        ("negative_timestamp", text("negative_timestamp", received_ms=-1), Reason.INVALID_TIMESTAMP, "received_ms -1"),
        ("timestamp_in_seconds", text("timestamp_in_seconds", received_ms=RECEIVED_MS // 1000), Reason.INVALID_TIMESTAMP, "received_ms in seconds, not milliseconds (January 1970)"),
        ("far_future_timestamp", text("far_future_timestamp", received_ms=far_future), Reason.INVALID_TIMESTAMP, "received_ms in microseconds (year 57000)"),
        ("null_text", text("null_text", text=None), Reason.MISSING_CONTENT, "a TEXT document whose text is null"),
        ("empty_text", text("empty_text", text=""), Reason.MISSING_CONTENT, "a TEXT document whose text is the empty string"),
        ("null_image", codec.encode("document", {**scan_document(doc_id("null_image")), "image": None}), Reason.MISSING_CONTENT, "an IMAGE document whose image is null"),
        ("empty_image", codec.encode("document", {**scan_document(doc_id("empty_image")), "image": b""}), Reason.MISSING_CONTENT, "an IMAGE document whose image is zero bytes"),
        ("text_claiming_image", codec.encode("document", {**scan_document(doc_id("text_claiming_image")), "image": None, "text": TEXT}),
         Reason.CONTENT_TYPE_MISMATCH, "content_type IMAGE, mime type image/png, but the content is in the text field"),
        ("text_bytes_as_image", scan("text_bytes_as_image", image=TEXT.encode()), Reason.CONTENT_TYPE_MISMATCH, "an IMAGE document whose 'PNG' bytes are plain text"),
        ("image_in_text_document", text("image_in_text_document", text=None, image=png), Reason.CONTENT_TYPE_MISMATCH, "a TEXT document carrying PNG bytes in the image field"),
        ("image_mime_on_text", text("image_mime_on_text", mime_type="image/png"), Reason.CONTENT_TYPE_MISMATCH, "a TEXT document with mime type image/png"),
        ("png_claiming_tiff", scan("png_claiming_tiff", image=png, mime_type="image/tiff"), Reason.CONTENT_TYPE_MISMATCH, "PNG bytes labelled image/tiff"),
        ("jpeg_claiming_png", scan("jpeg_claiming_png", image=jpeg, mime_type="image/png"), Reason.CONTENT_TYPE_MISMATCH, "JPEG bytes labelled image/png"),
        ("pdf", scan("pdf", image=b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", mime_type="application/pdf"),
         Reason.UNSUPPORTED_MEDIA_TYPE, "a PDF (application/pdf) on an IMAGE document"),
        ("gif", scan("gif", image=scan_image("GIF", (200, 260)), mime_type="image/gif"), Reason.UNSUPPORTED_MEDIA_TYPE, "a GIF (image/gif): not a scan format we route"),
        ("html_text", text("html_text", text="<html><body><p>Invoice</p></body></html>", mime_type="text/html"), Reason.UNSUPPORTED_MEDIA_TYPE, "a TEXT document with mime type text/html"),
        ("corrupt_png", _corrupt_png(doc_id("corrupt_png")), Reason.CORRUPT_IMAGE, "a PNG with 64 random bytes in its compressed pixel data"),
        ("truncated_jpeg", scan("truncated_jpeg", image=jpeg[:len(jpeg) // 2], mime_type="image/jpeg"), Reason.CORRUPT_IMAGE, "a JPEG cut in half"),
        ("garbage_png", scan("garbage_png", image=random_bytes), Reason.CORRUPT_IMAGE, "random bytes labelled image/png"),
        ("oversized_message", scan("oversized_message", image=noise_png(noisy_side, noisy_side)), Reason.OVERSIZED,
         f"a {noisy_side}x{noisy_side} PNG of random pixels ({3 * noisy_side ** 2 / 1e6:.0f} MB): the message exceeds max_message_bytes"),
        ("huge_dimensions", scan("huge_dimensions", image=black_png(huge_side, huge_side)), Reason.OVERSIZED,
         f"a {huge_side}x{huge_side} PNG of a few KB: more pixels than max_image_pixels"),
        ("decompression_bomb", scan("decompression_bomb", image=black_png(30000, 30000)), Reason.OVERSIZED, "a 900-megapixel PNG of under 1 MB that inflates to 900 MB"),
        ("oversized_text", text("oversized_text", text="word " * (config.max_text_chars // 5 + 1)), Reason.OVERSIZED, "a text longer than max_text_chars"),
        ("whitespace_only_text", text("whitespace_only_text", text=" \n\t\u00a0\u3000 \r\n  "), Reason.EMPTY_AFTER_CLEANING, "a text of spaces, tabs and line breaks"),
        ("control_chars_only_text", text("control_chars_only_text", text="\x00\x01\x02\x07\x08\x7f\u200b\ufeff\x0c"),
         Reason.EMPTY_AFTER_CLEANING, "a text of control and zero-width characters"),
        ("duplicate_id", first_copy, Reason.DUPLICATE_ID, "the same document twice: the second copy is the duplicate"),
    ]
    return tuple(BadInput(kind, value, reason, description, (first_copy,) if kind == "duplicate_id" else ())
                 for kind, value, reason, description in rows)


def bad_inputs(prefix: str = "bad-", config: RouterConfig = RouterConfig()) -> list[BadInput]:
    """At least 20 kinds of bad input; doc_ids are `prefix + kind` (make them unique per run).

    `config`: the limits the router runs with (oversized inputs are built to exceed them).
    Route each BadInput's `before` messages first.
    """
    return list(_bad_inputs(prefix, config))
