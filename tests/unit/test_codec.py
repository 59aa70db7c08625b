"""schemas/codec.py: exact bytes, every schema round trip, evolution, bad input, Apache Avro interop."""

from __future__ import annotations

import io
import json

import avro.io
import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import codec
from tests.unit.badinputs import scan_document, text_document

GROUND_TRUTH = {"doc_id": "d1", "label": "invoice", "department": "finance", "sent_ms": 1_700_000_000_000, "kind": "CORRECT", "comment": "ok"}

# one valid record per record type, in its newest version
SAMPLES = {
    "labelled_example": {"doc_id": "doc-1", "model_name": "mailroom-scan", "model_version": "3", "feature_set_id": "sender-v1",
        "content_type": "IMAGE", "sender": "a@b.example", "predicted_label": "invoice", "true_label": "offer", "truth_kind": "CORRECT",
        "truth_department": "finance", "probabilities": {"invoice": 0.9, "offer": 0.1}, "features": {"sender_docs_1h": 2.0},
        "predicted_ms": 1_750_000_000_000, "truth_sent_ms": 1_750_000_600_000, "matched_ms": 1_750_000_600_000, "revision": 1,
        "model_kind": "scan", "model_text": "invoice 2024 for 40 chairs", "image_features": [0.25, 0.5], "ocr_status": "READ"},
    "retraining_request": {"request_id": "r-1", "requested_ms": 1_750_000_000_000, "model_name": "mailroom-text", "model_version": "3",
        "reason": "macro_f1_drop", "alert_id": "a-1", "metric": "macro_f1", "value": 0.61, "threshold": 0.7,
        "window_start_ms": 1_749_996_400_000, "window_end_ms": 1_750_000_000_000, "labelled_pairs": 180,
        "weakest_labels": ["invoice", "offer"], "message": "macro-F1 fell below 0.7"},
    "document": text_document("doc-1", language="de"),
    "routed_document": {
        **text_document("doc-1"), "language": None, "original_mime_type": "text/plain", "document_version": 2,
        "source_topic": "mailroom.documents", "source_partition": 3, "source_offset": 12345, "routed_ms": 1_750_000_000_500,
        "router_job": "router", "router_version": "1.0.0",
        "text_cleaning": {"original_chars": 120, "final_chars": 90, "mojibake_repaired": False, "replacement_chars_removed": 0,
                          "nfc_changed": False, "control_chars_removed": 1, "whitespace_collapsed": True, "quote_removed": True,
                          "signature_removed": True, "removal_reverted": False},
        "image_cleaning": None, "notes": ["a note"], "pages": [],
    },
    "department_document": {
        "doc_id": "doc-2", "department": "finance", "sender": "scanner@berg-office.example", "subject": None, "channel": "SCANNER",
        "received_ms": 1_750_000_000_000, "content_type": "IMAGE", "text": None, "image": b"\x89PNG page 1", "pages": [b"\x89PNG page 2"],
        "mime_type": "image/png", "original_mime_type": "image/tiff", "page_count": 2, "headers": {}, "language": "en", "notes": [],
        "ocr": {"status": "READ", "text": "INVOICE 2024-117\fpage two", "pages_read": 2, "pages_routed": 2, "engine": "tesseract 5.5.4 eng psm3",
                "milliseconds": 412.5, "reason": None},
        "decision": {"label": "invoice", "probabilities": {"invoice": 0.9, "other": 0.1}, "confidence": 0.9, "model_name": "mailroom-scan",
                     "model_version": "1", "slot": "champion", "fallback_reason": None, "scored_ms": 1_750_000_000_900, "latency_ms": 900},
    },
    "dead_letter": {"original": b"\x00\xffjunk", "source_topic": "mailroom.documents", "source_partition": 0, "source_offset": 7,
                    "reason": "CORRUPT_IMAGE", "message": "cannot decode", "job": "router", "job_version": "1.0.0",
                    "dead_lettered_ms": 1_750_000_000_000, "doc_id": "doc-1", "writer_schema": "document.v2", "fingerprint": "76772a8caa298cbc"},
    "prediction": {"doc_id": "doc-1", "sender": "a@b.example", "content_type": "TEXT", "label": "invoice",
                   "probabilities": {"invoice": 0.9, "other": 0.1}, "model_name": "tfidf-logreg", "model_version": "3",
                   "feature_set_id": "fs-1", "department": "finance", "received_ms": 1_750_000_000_000, "scored_ms": 1_750_000_000_120,
                   "latency_ms": 120, "features": {"sender_docs": 4.0}, "slot": "fallback",
                   "fallback_reason": "champion v4 missed the 500 ms deadline", "ocr_status": None, "ocr_pages": 0,
                   "model_text": "invoice 2024 for 40 chairs", "image_features": []},
    "model_control": {"kind": "text", "slot": "CHALLENGER", "action": "DEPLOY", "model_name": "mailroom-text", "version": "4",
                      "onnx_path": "/models/text/v0004/model.onnx", "sha256": "ab" * 32, "feature_set_id": "sender-v1",
                      "labels": ["invoice", "other"], "shadow_sample": 0.25, "published_ms": 1_750_000_000_000, "note": "by hand"},
    "model_event": {"job": "scoring", "subtask": 1, "kind": "text", "slot": "CHAMPION", "outcome": "REFUSED", "model_name": "mailroom-text",
                    "version": "5", "serving_version": "4", "reason": "sha256 mismatch", "at_ms": 1_750_000_000_000},
    "shadow_prediction": {"doc_id": "doc-1", "kind": "text", "received_ms": 1_750_000_000_000, "scored_ms": 1_750_000_000_120,
                          "champion_model": "mailroom-text", "champion_version": "3", "champion_label": "invoice",
                          "champion_probabilities": {"invoice": 0.9, "other": 0.1}, "champion_latency_ms": 1.5,
                          "challenger_model": "mailroom-text", "challenger_version": "4", "challenger_label": "other",
                          "challenger_probabilities": {"invoice": 0.4, "other": 0.6}, "challenger_latency_ms": 1.25},
    "ground_truth": GROUND_TRUTH,
    "labelled_shadow_pair": {"doc_id": "doc-1", "kind": "text", "champion_model": "mailroom-text", "champion_version": "3",
                             "champion_label": "invoice", "challenger_model": "mailroom-text", "challenger_version": "4",
                             "challenger_label": "offer", "true_label": "offer", "truth_kind": "CORRECT", "champion_latency_ms": 1.5,
                             "challenger_latency_ms": 1.25, "predicted_ms": 1_750_000_000_000, "truth_sent_ms": 1_750_000_600_000,
                             "matched_ms": 1_750_000_600_000, "revision": 1},
    "model_decision": {"decision_id": "k-1", "kind": "text", "decision": "REFUSE", "decided_by": "judge", "challenger_version": "4",
                       "champion_version": "3", "reasons": ["McNemar: p = 0.41 is not below alpha 0.05"],
                       "figures": "{\"n\": 400, \"b\": 12, \"c\": 13}", "request_id": "r-1", "decided_ms": 1_750_000_000_000},
    "accuracy_report": {"model_name": "tfidf-logreg", "model_version": "3", "slot": "fallback", "window_start_ms": 1_750_000_000_000,
                        "window_end_ms": 1_750_000_060_000, "reported_ms": 1_750_000_061_000, "predictions": 10, "count": 4,
                        "label_coverage": 0.4, "accuracy": 0.75, "macro_f1": 0.7, "labels": ["invoice", "other"],
                        "per_class": [{"label": "invoice", "precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2},
                                      {"label": "other", "precision": 0.667, "recall": 1.0, "f1": 0.8, "support": 2}],
                        "confusion": [[1, 1], [0, 2]]},
    "shadow_report": {"kind": "text", "champion_model": "mailroom-text", "champion_version": "3", "challenger_model": "mailroom-text",
                      "challenger_version": "4", "window_start_ms": 1_750_000_000_000, "window_end_ms": 1_750_000_060_000,
                      "reported_ms": 1_750_000_061_000, "shadow_pairs": 10, "count": 4, "label_coverage": 0.4, "both_right": 2,
                      "only_champion_right": 0, "only_challenger_right": 1, "both_wrong": 1,
                      "champion": {"accuracy": 0.5, "macro_f1": 0.333, "per_class": [
                          {"label": "invoice", "precision": 0.667, "recall": 1.0, "f1": 0.8, "support": 2},
                          {"label": "other", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}]},
                      "challenger": {"accuracy": 0.75, "macro_f1": 0.733, "per_class": [
                          {"label": "invoice", "precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2},
                          {"label": "other", "precision": 0.667, "recall": 1.0, "f1": 0.8, "support": 2}]}},
    "alert": {"alert_id": "a-1", "raised_ms": 1_750_000_000_000, "severity": "WARNING", "kind": "accuracy_drop", "model_name": "tfidf-logreg",
              "model_version": "3", "metric": "accuracy", "value": 0.61, "threshold": 0.7, "window_start_ms": None,
              "window_end_ms": None, "message": "accuracy fell below 0.7"},
}

# Changing a schema in place changes its fingerprint and strands every message already written
# with it: add a new version instead, then add its fingerprint here.
FINGERPRINTS = {
    "labelled_example.v1": "b1f2838f11ffc129",
    "labelled_example.v2": "26f341c67d872b74",
    "retraining_request.v1": "9509cbe8318e47e5",
    "accuracy_report.v1": "988371c5683763f5",
    "accuracy_report.v2": "bb2f4dc4def0367c",
    "shadow_report.v1": "0fec0c9a5f9d1162",
    "alert.v1": "810347b0dcc3c0dc",
    "dead_letter.v1": "0d91d554fb70c27b",
    "dead_letter.v2": "df8f80a8db0f0d84",
    "document.v1": "011999ed41ab503a",
    "document.v2": "76772a8caa298cbc",
    "ground_truth.v1": "fc6e2b6a927720b2",
    "prediction.v1": "cf9ffa5250d225d5",
    "prediction.v2": "8b509842946de2b6",
    "prediction.v3": "0144ca560f15c4f5",
    "model_control.v1": "82cc8e35ae11e2ef",
    "model_event.v1": "ef74861970cba2ee",
    "shadow_prediction.v1": "80575e7535b54e01",
    "routed_document.v1": "1ba5f5f936b00f31",
    "routed_document.v2": "0906c0ab53225aaf",
    "department_document.v1": "8d59fb7a5cfd5819",
    "labelled_shadow_pair.v1": "d1a93cfffebdff9b",
    "model_decision.v1": "44fc0147dadbc058",
}


def rabin_fingerprint(canonical_form: str) -> bytes:
    """CRC-64-AVRO as the Avro specification writes it, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in canonical_form.encode("utf-8"):
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def test_encoding_is_pinned_byte_for_byte():
    expected = bytes.fromhex(
        "c301" "fc6e2b6a927720b2"  # marker, fingerprint of ground_truth.v1
        "04" "6431"  # doc_id "d1"
        "0e" "696e766f696365"  # label "invoice"
        "0e" "66696e616e6365"  # department "finance"
        "80a0abfef962"  # sent_ms 1_700_000_000_000, zig-zag varint
        "02"  # kind: symbol 1, CORRECT
        "02" "04" "6f6b"  # comment: union branch 1 (string), "ok"
    )
    assert codec.encode("ground_truth", GROUND_TRUTH) == expected
    assert codec.decode(expected) == ("ground_truth", 1, GROUND_TRUTH)


def test_fingerprints_are_pinned_and_match_the_specification():
    assert {s.name: s.fingerprint.hex() for s in codec.SCHEMAS} == FINGERPRINTS
    for loaded in codec.SCHEMAS:
        apache = avro.schema.parse(json.dumps(loaded.schema))
        assert rabin_fingerprint(loaded.canonical_form) == loaded.fingerprint
        assert apache.canonical_form == loaded.canonical_form
        assert apache.fingerprint("CRC-64-AVRO") == loaded.fingerprint


def test_no_logical_types_because_implementations_disagree_on_their_canonical_form():
    timestamp = avro.schema.parse('{"type": "long", "logicalType": "timestamp-millis"}')
    assert timestamp.canonical_form == '{"type":"long"}'  # Java and fastavro: "long"
    assert not any("logicalType" in json.dumps(s.schema) for s in codec.SCHEMAS)


def test_every_record_type_has_a_sample():
    assert set(SAMPLES) == {s.record_type for s in codec.SCHEMAS}


@pytest.mark.parametrize("loaded", codec.SCHEMAS, ids=lambda s: s.name)
def test_round_trip_every_schema_version(loaded):
    newest = codec.schema(loaded.record_type)
    record = SAMPLES[loaded.record_type]
    if loaded is not newest:  # drop what the older version does not have
        names = {f["name"] for f in loaded.schema["fields"]}
        record = {k: v for k, v in record.items() if k in names}
    data = codec.encode(loaded.record_type, record, loaded.version)
    assert data[:10] == loaded.header
    assert codec.decode(data, reader_version=loaded.version) == (loaded.record_type, loaded.version, record)


def test_old_writer_new_reader_gets_defaults():
    v1 = {k: v for k, v in SAMPLES["document"].items() if k != "language"}
    data = codec.encode("document", v1, version=1)
    record_type, version, record = codec.decode(data, expected="document")
    assert (record_type, version) == ("document", 1)
    assert record == {**v1, "language": None}


def test_new_writer_old_reader_drops_new_fields():
    data = codec.encode("document", SAMPLES["document"])
    assert codec.writer_schema(data).name == "document.v2"
    _, version, record = codec.decode(data, reader_version=1)
    assert version == 2
    assert record == {k: v for k, v in SAMPLES["document"].items() if k != "language"}


def test_leaving_out_a_field_with_a_default_writes_the_default():
    record = {k: v for k, v in SAMPLES["document"].items() if k not in ("subject", "headers", "language")}
    assert codec.decode(codec.encode("document", record)).record == {**record, "subject": None, "headers": {}, "language": None}


def test_versions_are_full_transitive_compatible():
    checker = ReaderWriterCompatibilityChecker()
    record_types = {s.record_type for s in codec.SCHEMAS}
    for record_type in record_types:
        versions = [avro.schema.parse(json.dumps(s.schema)) for s in codec.SCHEMAS if s.record_type == record_type]
        for reader in versions:
            for writer in versions:
                result = checker.get_compatibility(reader, writer)
                assert result.compatibility is SchemaCompatibilityType.compatible, (record_type, result.messages)


def test_named_types_mean_the_same_everywhere():
    """Across record types (the newest version of each): a named type evolves with the versions
    of the record type that owns it (DeadLetterReason gained PROCESSING_ERROR in dead_letter.v2)."""
    definitions: dict[str, dict] = {}
    newest = {}
    for loaded in codec.SCHEMAS:
        newest[loaded.name.rsplit(".v", 1)[0]] = loaded  # SCHEMAS is in version order

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") in ("enum", "record"):
                name = node["name"] if "." in node["name"] else f"io.mailroom.{node['name']}"
                assert definitions.setdefault(name, node) == node, f"{name} is defined differently in two schemas"
            for value in node.values():
                walk(value)

    for loaded in newest.values():
        walk(loaded.schema["fields"])
    assert {"io.mailroom.Channel", "io.mailroom.ContentType", "io.mailroom.DeadLetterReason"} <= set(definitions)


def test_every_field_is_documented_in_the_io_mailroom_namespace():
    def fields(record):
        for f in record["fields"]:
            yield record["name"], f
            for branch in f["type"] if isinstance(f["type"], list) else [f["type"]]:
                if isinstance(branch, dict):
                    inner = branch.get("items", branch)
                    if isinstance(inner, dict) and inner.get("type") == "record":
                        yield from fields(inner)

    for loaded in codec.SCHEMAS:
        assert loaded.schema["namespace"] == "io.mailroom" and loaded.schema.get("doc")
        for record_name, f in fields(loaded.schema):
            assert f.get("doc"), f"{loaded.name}: {record_name}.{f['name']} has no doc"


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", codec.NotSingleObject),
        (b"{\"doc_id\": 1}", codec.NotSingleObject),
        (b"\xc3\x01\x01\x02\x03", codec.NotSingleObject),
        (b"\xc3\x01" + bytes(8) + b"\x00", codec.UnknownSchema),
    ],
    ids=["empty", "json", "truncated-header", "unknown-fingerprint"],
)
def test_bad_headers_raise_precise_errors(data, error):
    with pytest.raises(error):
        codec.decode(data)


def test_unknown_fingerprint_is_reported():
    with pytest.raises(codec.UnknownSchema) as caught:
        codec.decode(b"\xc3\x01" + bytes.fromhex("0102030405060708") + b"\x00")
    assert caught.value.fingerprint.hex() == "0102030405060708"
    assert "0102030405060708" in str(caught.value)


def test_wrong_record_type():
    with pytest.raises(codec.WrongRecordType) as caught:
        codec.decode(codec.encode("ground_truth", GROUND_TRUTH), expected="document")
    assert caught.value.writer.name == "ground_truth.v1"


def test_truncated_corrupt_and_trailing_bodies():
    data = codec.encode("document", SAMPLES["document"])
    for bad in (data[:-5], data[:12], data + b"\x00", data[:10] + b"\xff" * 12):
        with pytest.raises(codec.CorruptBody) as caught:
            codec.decode(bad)
        assert caught.value.writer.name == "document.v2"


def test_invalid_utf8_in_a_string():
    data = codec.encode("document", {**SAMPLES["document"], "text": "abcd"})
    with pytest.raises(codec.InvalidUtf8):
        codec.decode(data.replace(b"abcd", b"ab\xff\xfe"))


def test_decode_errors_share_one_base():
    for error in (codec.NotSingleObject, codec.UnknownSchema, codec.WrongRecordType, codec.CorruptBody, codec.InvalidUtf8):
        assert issubclass(error, codec.DecodeError) and issubclass(error, codec.CodecError)
    assert issubclass(codec.InvalidRecord, codec.CodecError) and not issubclass(codec.InvalidRecord, codec.DecodeError)


@pytest.mark.parametrize(
    "change",
    [{"doc_id": None}, {"channel": "email"}, {"page_count": "1"}, {"labl": "invoice"}, {"headers": {"a": 1}}, {"sender": "a\udc80"}],
    ids=["null-required", "bad-enum-symbol", "string-for-int", "unknown-field", "bad-map-value", "lone-surrogate"],
)
def test_encoding_an_invalid_record_raises_invalid_record(change):
    with pytest.raises(codec.InvalidRecord):
        codec.encode("document", {**SAMPLES["document"], **change})


def test_missing_required_field_raises_invalid_record():
    with pytest.raises(codec.InvalidRecord, match="doc_id"):
        codec.encode("document", {k: v for k, v in SAMPLES["document"].items() if k != "doc_id"})


def test_validate_catches_values_out_of_range():
    too_many_pages = {**SAMPLES["document"], "page_count": 2**40}
    codec.encode("document", too_many_pages)  # fast path: fastavro writes a 64-bit varint into an int
    with pytest.raises(codec.InvalidRecord, match="page_count"):
        codec.encode("document", too_many_pages, validate=True)


def test_unknown_record_type_or_version_is_a_programming_error():
    with pytest.raises(ValueError, match="known: "):
        codec.encode("documents", SAMPLES["document"])
    with pytest.raises(ValueError):
        codec.schema("document", 99)


def _apache_read(data: bytes, reader_json: dict | None = None) -> dict:
    """Decode like an outside consumer: check the header ourselves, then Apache Avro's reader."""
    assert data[:2] == b"\xc3\x01"
    by_fingerprint = {}
    for path in sorted(codec.SCHEMA_DIR.glob("*.avsc")):
        parsed = avro.schema.parse(path.read_text())
        by_fingerprint[parsed.fingerprint("CRC-64-AVRO")] = parsed
        assert rabin_fingerprint(parsed.canonical_form) == parsed.fingerprint("CRC-64-AVRO")
    writer = by_fingerprint[data[2:10]]
    reader = avro.schema.parse(json.dumps(reader_json)) if reader_json else writer
    return avro.io.DatumReader(writer, reader).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))


def test_apache_avro_reads_our_messages():
    for record_type, record in SAMPLES.items():
        assert _apache_read(codec.encode(record_type, record)) == record, record_type


def test_apache_avro_resolves_our_old_versions():
    v1 = {k: v for k, v in SAMPLES["document"].items() if k != "language"}
    read = _apache_read(codec.encode("document", v1, version=1), reader_json=codec.schema("document", 2).schema)
    assert read["language"] is None and read["doc_id"] == v1["doc_id"]


def test_we_read_what_apache_avro_writes():
    loaded = codec.schema("document")
    record = {**scan_document("scan-9"), "language": "en"}
    body = io.BytesIO()
    avro.io.DatumWriter(avro.schema.parse(json.dumps(loaded.schema))).write(record, avro.io.BinaryEncoder(body))
    assert codec.decode(loaded.header + body.getvalue(), expected="document").record == record
