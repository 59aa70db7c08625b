"""jobs.scoring.build on a MiniCluster with bounded in-memory sources: no Kafka, no Redis.

Includes the failure path: a scan that is no image (its features raise) and a document the
model raises on are dead-lettered as PROCESSING_ERROR, and every other document is scored."""

from __future__ import annotations

import dataclasses
import shutil
import time

import pytest

from jobs.environment import make_env
from jobs.scoring import build
from models.generator import generate
from models.pointers import ModelPointer, file_sha256
from models.registry import Registry
from schemas import codec
from schemas.labels import DEPARTMENTS
from tests.flink.harness import collect, kafka_rows
from tests.poison import poison_document, poison_text_model, routed_values, unreadable_scan
from udfs.scoring import ScoringConfig


def _documents(n: int, seed: int) -> list[dict]:
    docs = generate(n, seed=seed, scan_share=0.4)
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    return docs


def _run(settings, registry, routed: list[bytes], batch_size: int = 8, control: list[bytes] = (), ocr_parallelism: int | None = None
         ) -> dict[str, list[bytes]]:
    env = make_env(settings, "scoring", parallelism=1)
    config = ScoringConfig.from_registry(registry, batch_size=batch_size)
    previous = [codec.encode("prediction", {  # one of the job's own earlier decisions, read back
        "doc_id": "earlier", "sender": "s@x", "content_type": "TEXT", "label": "invoice", "probabilities": {"invoice": 1.0},
        "model_name": "mailroom-text", "model_version": "1", "feature_set_id": config.text_model.card["feature_set_id"],
        "department": "finance", "received_ms": 0, "scored_ms": 0, "latency_ms": 0, "features": {}})]
    control = list(control) or [codec.encode("model_control", {  # retiring an empty challenger slot changes nothing
        "kind": "text", "slot": "CHALLENGER", "action": "RETIRE", "model_name": "mailroom-text", "published_ms": 0})]
    outputs = build(kafka_rows(env, routed, "routed"), kafka_rows(env, previous, "predictions"), kafka_rows(env, control, "control"), config,
                    ocr_parallelism=ocr_parallelism)
    return collect(outputs)


def _by_doc(values: list[bytes], record_type: str) -> dict[str, dict]:
    records = [codec.decode(v, expected=record_type).record for v in values]
    return {r["doc_id"]: r for r in records}


def test_scoring_build_scores_every_document_into_one_department(test_settings, registry):
    docs = _documents(30, seed=7)
    out = _run(test_settings, registry, routed_values(docs))
    predictions = _by_doc(out["predictions"], "prediction")
    assert sorted(predictions) == sorted(d["doc_id"] for d in docs) and len(out["predictions"]) == len(docs)
    delivered = {dept: [codec.decode(v).record["doc_id"] for v in out[dept]] for dept in DEPARTMENTS.values()}
    assert sorted(doc_id for ids in delivered.values() for doc_id in ids) == sorted(predictions)  # each in one department
    for dept, ids in delivered.items():
        assert all(predictions[doc_id]["department"] == dept for doc_id in ids)
    assert out["dead_letters"] == []


def test_scans_read_by_more_readers_than_scorers_are_each_scored_once(test_settings, registry):
    docs = _documents(24, seed=29)
    out = _run(test_settings, registry, routed_values(docs), ocr_parallelism=2)
    predictions = _by_doc(out["predictions"], "prediction")
    assert sorted(predictions) == sorted(d["doc_id"] for d in docs) and len(out["predictions"]) == len(docs)
    scans = [p for p in predictions.values() if p["content_type"] == "IMAGE"]
    assert scans and all(p["ocr_status"] is not None for p in scans)  # each went through a reader


def test_a_scan_whose_features_raise_is_dead_lettered_and_the_rest_scored(test_settings, registry):
    docs = _documents(20, seed=11)
    routed = routed_values(docs)
    scan = next(v for v in routed if codec.decode(v).record["content_type"] == "IMAGE")
    poisoned = routed[:5] + [unreadable_scan(scan, "not-an-image")] + routed[5:]
    out = _run(test_settings, registry, poisoned)

    assert sorted(_by_doc(out["predictions"], "prediction")) == sorted(d["doc_id"] for d in docs)
    [letter] = [codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]]
    assert letter["reason"] == "PROCESSING_ERROR" and letter["message"].startswith("UnidentifiedImageError")
    assert (letter["doc_id"], letter["original"], letter["source_topic"], letter["source_offset"]) == ("not-an-image", poisoned[5], "routed", 5)
    assert len(out["predictions"]) + len(out["dead_letters"]) == len(poisoned)  # the books balance


def test_a_document_the_model_raises_on_is_dead_lettered_and_its_batch_scored(test_settings, registry, tmp_path):
    docs = _documents(20, seed=13)
    text_doc = next(d for d in docs if d["content_type"] == "text")
    poison = poison_document(text_doc, "poison-1")
    routed = routed_values(docs[:7] + [poison] + docs[7:])
    out = _run(test_settings, poison_text_model(registry, tmp_path / "registry"), routed, batch_size=8)

    assert sorted(_by_doc(out["predictions"], "prediction")) == sorted(d["doc_id"] for d in docs)  # the batch-mates too
    [letter] = [codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]]
    assert letter["reason"] == "PROCESSING_ERROR" and letter["doc_id"] == "poison-1"
    assert "Gather" in letter["message"] and letter["original"] == routed[7] and letter["source_offset"] == 7
    assert len(out["predictions"]) + len(out["dead_letters"]) == len(routed)


@pytest.mark.parametrize("junk", [b"", b"\xc3\x01 not avro"])
def test_an_undecodable_routed_record_is_dead_lettered(test_settings, registry, junk):
    docs = _documents(4, seed=17)
    routed = routed_values(docs) + [junk]
    out = _run(test_settings, registry, routed)
    assert len(out["predictions"]) == len(docs)
    [letter] = [codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]]
    assert (letter["reason"], letter["original"], letter["source_offset"]) == ("PROCESSING_ERROR", junk, len(docs))


def test_a_challenger_scores_in_shadow_and_a_bad_deploy_is_refused(test_settings, registry, tmp_path):
    champion = Registry(registry).champion("text")
    copy = tmp_path / "model.onnx"
    shutil.copy(champion.onnx_path, copy)
    challenger = dataclasses.replace(ModelPointer.of(champion), version="2", onnx_path=str(copy), sha256=file_sha256(copy))
    corrupt = dataclasses.replace(challenger, version="3", sha256="00" * 32)
    control = [codec.encode("model_control", challenger.to_record("CHALLENGER", 0)), codec.encode("model_control", corrupt.to_record("CHAMPION", 0))]
    docs = _documents(40, seed=19)
    out = _run(test_settings, registry, routed_values(docs), control=control)

    predictions = _by_doc(out["predictions"], "prediction")
    assert sorted(predictions) == sorted(d["doc_id"] for d in docs)
    assert {p["model_version"] for p in predictions.values() if p["content_type"] == "TEXT"} == {str(champion.version)}  # v3 refused
    events = [codec.decode(v, expected="model_event").record for v in out["model_events"]]
    outcomes = {(e["kind"], e["slot"], e["outcome"], e["version"]) for e in events}
    assert {("text", "CHAMPION", "SERVING", str(champion.version)), ("image", "CHAMPION", "SERVING", "1"),
            ("text", "CHALLENGER", "SERVING", "2"), ("text", "CHAMPION", "REFUSED", "3")} <= outcomes
    assert "sha256" in next(e["reason"] for e in events if e["outcome"] == "REFUSED")
    shadows = [codec.decode(v, expected="shadow_prediction").record for v in out["shadow_predictions"]]
    assert len({s["doc_id"] for s in shadows}) == len(shadows)  # one pair per document at most
    assert all(predictions[s["doc_id"]]["content_type"] == "TEXT" and (s["champion_version"], s["challenger_version"]) ==
               (str(champion.version), "2") and s["challenger_label"] == s["champion_label"] for s in shadows)  # the same model


def test_the_jobs_ocr_arguments_say_how_its_engines_read(test_settings):
    from jobs.scoring import ocr_config, parse_args

    default = ocr_config(parse_args([], test_settings))
    assert default.retry_inverted and default.engines == 2 and default.signature == "eng psm3"
    chosen = ocr_config(parse_args(["--ocr-inverted-retry", "off", "--ocr-engines", "1", "--ocr-languages", "eng+deu"], test_settings))
    assert not chosen.retry_inverted and chosen.engines == 1 and chosen.signature == "eng+deu psm3 no-invert"
