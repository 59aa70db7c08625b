"""Models as a stream without Flink: pointers and their checks (models/pointers.py), and what a
subtask serves per slot (udfs/model_slots.py)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from models.pointers import ModelPointer, ModelRefused, file_sha256, load_checked
from models.registry import Registry
from models.scoring import Scorer
from udfs.model_slots import ModelSlots


@dataclass
class Stand:
    """A stand-in scorer: what ModelSlots needs of one."""

    kind: str
    version: str
    name: str = "mailroom-text"


def _record(version: str | None, slot: str = "CHALLENGER", action: str = "DEPLOY", sha: str = "00" * 32) -> dict:
    return {"kind": "text", "slot": slot, "action": action, "model_name": "mailroom-text", "version": version,
            "onnx_path": f"/m/{version}.onnx", "sha256": sha, "feature_set_id": "sender-v1", "labels": ["invoice", "other"],
            "shadow_sample": 0.5, "published_ms": 0, "note": None}


def _slots(refuse: set[str] = frozenset()) -> tuple[ModelSlots, list[str]]:
    loaded: list[str] = []

    def load(pointer: ModelPointer):
        if pointer.version in refuse:
            raise ModelRefused(f"v{pointer.version} is broken")
        loaded.append(pointer.version)
        return Stand(pointer.kind, pointer.version)

    return ModelSlots({"text": Stand("text", "1"), "image": Stand("image", "1", "mailroom-image")}, load), loaded


def test_deploys_fill_slots_and_a_replay_loads_nothing():
    slots, loaded = _slots()
    assert [(c.kind, c.slot, c.version) for c in slots.at_start()] == [("text", "CHAMPION", "1"), ("image", "CHAMPION", "1")]
    change = slots.apply(_record("2"))
    assert (change.outcome, change.version, change.serving_version) == ("SERVING", "2", "2")
    assert slots.serving("text", "CHALLENGER").version == "2" and slots.pointer("text", "CHALLENGER").shadow_sample == 0.5
    assert slots.apply(_record("2")).outcome == "SERVING" and loaded == ["2"]  # the same record again: no reload
    slots.apply(_record("3", slot="CHAMPION"))
    assert slots.serving("text").version == "3" and slots.serving("image").version == "1" and loaded == ["2", "3"]


def test_a_refused_deploy_keeps_what_served():
    slots, _ = _slots(refuse={"4"})
    change = slots.apply(_record("4", slot="CHAMPION"))
    assert (change.outcome, change.version, change.serving_version, change.reason) == ("REFUSED", "4", "1", "v4 is broken")
    assert slots.serving("text").version == "1"


def test_retire_empties_a_slot_but_never_the_champion():
    slots, _ = _slots()
    slots.apply(_record("2"))
    assert slots.apply(_record(None, action="RETIRE")).outcome == "RETIRED" and slots.serving("text", "CHALLENGER") is None
    refused = slots.apply(_record(None, slot="CHAMPION", action="RETIRE"))
    assert refused.outcome == "REFUSED" and "cannot be emptied" in refused.reason and slots.serving("text").version == "1"
    record = refused.record("scoring", 1, 99)
    assert (record["subtask"], record["outcome"], record["serving_version"], record["at_ms"]) == (1, "REFUSED", "1", 99)


# --- checks on real models ---------------------------------------------------------------------


@pytest.fixture
def text_pointer(registry) -> ModelPointer:
    return ModelPointer.of(Registry(registry).champion("text"))


def test_a_registered_model_passes_its_checks_and_scores(text_pointer):
    scorer = Scorer.from_pointer(text_pointer)
    assert (scorer.kind, scorer.version, scorer.labels) == ("text", text_pointer.version, text_pointer.labels)
    assert text_pointer.sha256 == file_sha256(text_pointer.onnx_path)


@pytest.mark.parametrize("breakage, reason", [
    (lambda p, tmp: dataclasses.replace(p, sha256="ff" * 32), "sha256 of"),
    (lambda p, tmp: dataclasses.replace(p, feature_set_id="sender-v0"), "feature set 'sender-v0'"),
    (lambda p, tmp: dataclasses.replace(p, onnx_path=str(tmp / "missing.onnx")), "cannot read"),
    (lambda p, tmp: dataclasses.replace(p, labels=p.labels[:-1]), "smoke batch gave probabilities of shape"),
    (lambda p, tmp: dataclasses.replace(p, kind="image"), "inputs are"),
])
def test_a_broken_pointer_is_refused_with_the_reason(text_pointer, tmp_path, breakage, reason):
    with pytest.raises(ModelRefused, match=reason):
        load_checked(breakage(text_pointer, tmp_path))


def test_a_corrupt_file_is_refused_even_with_its_own_sha256(text_pointer, tmp_path):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not an onnx graph" * 10)
    with pytest.raises(ModelRefused, match="onnxruntime cannot load"):
        load_checked(dataclasses.replace(text_pointer, onnx_path=str(corrupt), sha256=file_sha256(corrupt)))


def test_pointer_round_trips_through_the_control_record(text_pointer):
    from schemas import codec

    record = codec.decode(codec.encode("model_control", text_pointer.to_record("CHAMPION", 5, "by hand")), expected="model_control").record
    assert ModelPointer.from_record(record) == text_pointer and json.dumps(record)


# --- the deadline -----------------------------------------------------------------------------


def _text_batch(n: int = 6):
    import time as _time

    from models.generator import generate
    from tests.poison import routed_values
    from udfs.dead_letters import SourceRecord
    from udfs.scoring import SenderFeatures
    from models.features import SenderHistory
    from schemas import codec

    docs = [d for d in generate(4 * n, seed=21, scan_share=0.0)][:n]
    now = int(_time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    features, history = SenderFeatures(None), SenderHistory()
    return [features.observe(history, codec.decode(v).record, SourceRecord(v, "t", 0, i)) for i, v in enumerate(routed_values(docs))]


def test_a_champion_that_misses_its_deadline_is_stopped_and_the_previous_model_decides(registry, tmp_path):
    import time as _time

    from schemas import codec
    from tests.poison import slow_text_model
    from udfs.scoring import BatchScorer, ScoringConfig

    config = ScoringConfig.from_registry(registry, deadline_ms=300)
    scorer = BatchScorer(config)
    normal = ModelPointer.of(Registry(registry).champion("text"))
    slow_path = slow_text_model(registry, tmp_path / "slow.onnx")
    slow = dataclasses.replace(normal, version="9", onnx_path=str(slow_path), sha256=file_sha256(slow_path))
    assert scorer.slots.apply(slow.to_record("CHAMPION", 0)).outcome == "SERVING"
    batch = _text_batch()

    started = _time.perf_counter()
    prior = scorer.score(batch, now_ms=1)  # no PREVIOUS yet: the prior decides, and triage gets the batch
    assert _time.perf_counter() - started < 2.0
    records = [codec.decode(v).record for _, _, v in prior.predictions]
    assert {(r["slot"], r["department"], r["model_version"]) for r in records} == {("prior", "triage", "9")}
    assert "missed the 300 ms deadline" in records[0]["fallback_reason"] and {(d.kind, d.slot) for d in prior.decisions} == {("text", "prior")}

    scorer.slots.apply(dataclasses.replace(normal, version="1").to_record("PREVIOUS", 0))
    started = _time.perf_counter()
    fallback = scorer.score(batch, now_ms=2)  # the slow run before was terminated: this one is not queued behind it
    assert _time.perf_counter() - started < 2.0
    records = [codec.decode(v).record for _, _, v in fallback.predictions]
    assert {(r["slot"], r["model_version"]) for r in records} == {("fallback", "1")}
    assert [(d.kind, d.slot) for d in fallback.decisions] == [("text", "fallback")] * len(batch)
    expected = [codec.decode(v).record["label"] for _, _, v in BatchScorer(ScoringConfig.from_registry(registry)).score(batch, 3).predictions]
    assert [r["label"] for r in records] == expected  # the previous model's own answers
    scorer.deadline.close()
