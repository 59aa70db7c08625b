"""mailroom/retrainer.py without Kafka: the request gate, the offline checks, a retraining on the training store."""

from __future__ import annotations

import pytest

from mailroom.models_cli import train_config
from mailroom.retrainer import OFFLINE_REFUSED, RETRAINED, RequestGate, RetrainConfig, kind_of, offline_checks, retrain
from models.examples_store import ExampleStore
from models.features import model_text
from models.generator import generate
from models.registry import Registry
from models.training import publish, train

NOW = 1_750_000_000_000


def test_one_retraining_per_kind_at_a_time_a_cool_down_and_none_while_a_challenger_is_in_shadow():
    gate = RequestGate(cooldown_ms=60_000)
    assert gate.admit("text", NOW) is None
    assert "running" in gate.admit("text", NOW + 1)
    assert gate.admit("image", NOW + 1) is None  # another kind is not held up
    gate.done("text", NOW + 10_000)
    assert "cool-down" in gate.admit("text", NOW + 30_000)
    assert "challenger v4 is in shadow" in gate.admit("text", NOW + 80_000, challenger="4")
    assert gate.admit("text", NOW + 80_000) is None


def test_model_names_map_to_kinds():
    assert [kind_of(n) for n in ("mailroom-text", "mailroom-scan", "mailroom-image", "mailroom-audio", "tfidf")] == [
        "text", "scan", "image", None, None]


def test_offline_checks_refuse_a_worse_contender_and_a_collapsed_class():
    truth = ["invoice", "offer", "complaint", "invoice"]
    ok, figures = offline_checks(truth, truth, ["invoice", "invoice", "complaint", "invoice"], {"invoice", "offer", "complaint"},
                                 {"invoice", "offer", "complaint"}, tolerance=0.02)
    assert ok == [] and figures["contender_macro_f1"] == 1.0 and figures["champion_macro_f1"] < 1.0
    reasons, figures = offline_checks(truth, ["invoice"] * 4, truth, {"invoice", "complaint"}, {"invoice", "offer", "complaint"}, 0.02)
    assert reasons[0].startswith("held-out examples: macro-F1") and reasons[1] == (
        "class collapse: never predicts offer on the held-out sides (the champion has them)")
    assert offline_checks([], [], [], {"a"}, {"a"}, 0.02)[1]["held_out_examples"] == 0  # no held-out examples yet: only the collapse check


def _examples(n: int, seed: int, relabel: dict | None = None) -> list[dict]:
    """labelled_example records of generated text documents (their true label, or `relabel`'s)."""
    out = []
    for doc in generate(n, seed=seed, scan_share=0.0):
        label = (relabel or {}).get(doc["label"], doc["label"])
        out.append({"doc_id": f"ex-{seed}-{doc['doc_id']}", "model_name": "mailroom-text", "model_version": "1", "feature_set_id": "x",
                    "content_type": "TEXT", "sender": doc["sender"], "predicted_label": doc["label"], "true_label": label,
                    "truth_kind": "CONFIRM", "truth_department": "finance", "probabilities": {}, "features": {},
                    "predicted_ms": NOW, "truth_sent_ms": NOW, "matched_ms": NOW, "revision": 0, "model_kind": "text",
                    "model_text": model_text(doc.get("subject"), doc.get("text"))})
    return out


@pytest.fixture(scope="module")
def champion_registry(tmp_path_factory):
    registry = Registry(tmp_path_factory.mktemp("registry"))
    run = train(train_config(quick=True, kinds=("text",), n=300, real=False), progress=False)
    assert publish(run.models["text"], run, registry)[0] == 1
    return registry


def test_a_retraining_trains_on_the_store_checks_offline_and_registers(champion_registry, tmp_path):
    store = ExampleStore(tmp_path / "examples")
    store.append(_examples(120, seed=11))
    config = RetrainConfig(quick=True, generated=300, real=False, min_examples=20)
    outcome = retrain("text", store, champion_registry, config, NOW)
    assert outcome.decision == RETRAINED and outcome.version == 2 and outcome.champion_version == 1, outcome.reasons
    f = outcome.figures
    assert f["labelled_training_rows"] == len(store.training_rows("text", NOW)) and f["held_out_examples"] > 0
    assert f["collapsed_classes"] == [] and f["parity"]["ok"]
    assert f["training_data"]["sources"]["labelled"] == f["labelled_training_rows"]  # the examples were trained on, held-out ones not
    assert champion_registry.show("text", 2)["training_data"]["fingerprint"] == f["training_data"]["fingerprint"]
    assert champion_registry.champion("text").version == 1  # registered, not promoted: the judge decides


def test_a_retraining_without_enough_examples_is_refused_before_training(champion_registry, tmp_path):
    store = ExampleStore(tmp_path / "examples")
    store.append(_examples(10, seed=12))
    outcome = retrain("text", store, champion_registry, RetrainConfig(quick=True, generated=300, real=False, min_examples=20), NOW)
    rows = outcome.figures["labelled_training_rows"]
    assert (outcome.decision, outcome.version, outcome.reasons) == (OFFLINE_REFUSED, None, [f"{rows} labelled text training rows, at least 20 needed"])
