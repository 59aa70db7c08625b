"""models/registry.py: register, champion, promote / refuse / force, rollback, same-set comparison."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from models.export import to_onnx
from models.generator import generate
from models.modelio import input_signature, onnx_feeds, onnx_session
from models.registry import PromotionRefused, Registry, RegistryError
from models.training import Candidate, build_dataset, context_vectors, fit
from models.features import FEATURE_SET_ID

CANDIDATE = Candidate("logreg", (("C", 10.0),), (("ngram_range", (1, 1)), ("min_df", 2)))


@pytest.fixture(scope="module")
def models():
    """A good and a bad (shuffled labels) text model, and two different evaluation sets."""
    docs = generate(240, seed=31, scan_share=0.0)
    data = build_dataset("text", docs, context_vectors(docs))
    rows = np.arange(len(data))
    train, eval_a, eval_b = data.rows(rows[rows % 3 == 0]), data.rows(rows[rows % 3 == 1]), data.rows(rows[rows % 3 == 2])
    good = fit("text", CANDIDATE, train, seed=0)
    shuffled = train.rows(np.arange(len(train)))
    shuffled.labels = np.random.default_rng(0).permutation(shuffled.labels)
    bad = fit("text", CANDIDATE, shuffled, seed=0)
    return {"good": to_onnx(good, "text").SerializeToString(), "bad": to_onnx(bad, "text").SerializeToString(), "a": eval_a, "b": eval_b}


def card(macro_f1, feature_set=FEATURE_SET_ID):
    return {"kind": "text", "kernel": "logreg", "feature_set_id": feature_set, "inputs": input_signature("text"), "labels": [],
            "evaluation": {"macro_f1": macro_f1}}


def register(registry, models, which, eval_set, claimed_f1, **card_args):
    data = models[eval_set]
    return registry.register("text", models[which], card(claimed_f1, **card_args), data.inputs, [str(x) for x in data.labels])


def true_f1(models, which, eval_set):
    data = models[eval_set]
    labels = onnx_session(models[which]).run(["label"], onnx_feeds("text", data.inputs))[0]
    return f1_score(list(data.labels), list(labels), labels=sorted(set(data.labels)), average="macro")



def test_first_model_becomes_champion_with_a_full_card(tmp_path, models):
    registry = Registry(tmp_path)
    assert register(registry, models, "good", "a", 0.9) == 1
    champion = registry.champion("text")
    assert champion.version == 1 and champion.onnx_path.read_bytes() == models["good"]
    assert champion.card["eval_set"]["n"] == len(models["a"]) and champion.card["files"]["model.onnx"]["bytes"] == len(models["good"])
    assert champion.card["promotions"][0]["reason"] == "first model of its kind"
    inputs, labels = registry.eval_set("text", champion.card["eval_set"]["fingerprint"])
    assert labels == [str(x) for x in models["a"].labels] and inputs["text"] == models["a"].inputs["text"]
    assert [e["event"] for e in registry.history("text")] == ["register", "promote"]
    assert register(registry, models, "good", "a", 0.9) == 2
    assert [(r["version"], r["champion"]) for r in registry.list("text")] == [(1, True), (2, False)]
    assert registry.list("image") == []


def test_promote_needs_a_better_macro_f1_on_the_same_set(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.80)
    worse, equal, better = (register(registry, models, "good", "a", f1) for f1 in (0.70, 0.80, 0.85))
    for version in (worse, equal):
        with pytest.raises(PromotionRefused, match="does not beat champion v1"):
            registry.promote("text", version)
    assert registry.champion("text").version == 1
    decision = registry.promote("text", better)
    assert decision["promoted"] and not decision["forced"] and "same evaluation set" in decision["comparison"]["summary"]
    assert registry.champion("text").version == better
    assert registry.show("text", better)["promotions"][-1]["from_version"] == 1
    assert registry.promote("text", better) == {"promoted": False, "version": better, "reason": "already champion"}


def test_forced_promotion_records_its_reason(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.9)
    worse = register(registry, models, "bad", "a", 0.2)
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote("text", worse, force_reason="  ")
    decision = registry.promote("text", worse, force_reason="hotfix for a mislabelled class")
    assert decision["forced"] and registry.champion("text").version == worse
    record = registry.show("text", worse)["promotions"][-1]
    assert record["forced"] and record["reason"] == "hotfix for a mislabelled class"
    assert registry.history("text")[-1]["reason"] == "hotfix for a mislabelled class"


def test_rollback_walks_back_through_previous_champions(tmp_path, models):
    registry = Registry(tmp_path)
    v1 = register(registry, models, "good", "a", 0.5)
    v2 = register(registry, models, "good", "a", 0.6)
    v3 = register(registry, models, "good", "a", 0.7)
    registry.promote("text", v2)
    registry.promote("text", v3)
    assert registry.rollback("text").version == v2
    assert registry.rollback("text").version == v1
    with pytest.raises(RegistryError, match="no previous"):
        registry.rollback("text")
    assert registry.champion("text").version == v1
    assert [e["event"] for e in registry.history("text")][-2:] == ["rollback", "rollback"]


def test_different_evaluation_sets_are_compared_by_re_evaluating_both(tmp_path, models):
    """Stored figures from different sets are not trusted: the bad model's card claims 0.99."""
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.10)
    bad = register(registry, models, "bad", "b", 0.99)
    with pytest.raises(PromotionRefused, match="re-evaluated on the contender's evaluation set"):
        registry.promote("text", bad)
    good_on_b = registry.evaluate("text", 1, registry.show("text", bad)["eval_set"]["fingerprint"])
    assert good_on_b == pytest.approx(true_f1(models, "good", "b")) and good_on_b > true_f1(models, "bad", "b")
    same_model = register(registry, models, "good", "b", 1.0)
    with pytest.raises(PromotionRefused):  # re-evaluated, it ties with itself: a tie does not beat
        registry.promote("text", same_model)


def test_rows_the_champion_was_trained_on_are_left_out_of_a_re_evaluation(tmp_path, models):
    b = models["b"]
    labels_a = [str(x) for x in models["a"].labels]
    registry = Registry(tmp_path / "some")
    registry.register("text", models["good"], card(0.5), models["a"].inputs, labels_a, train_inputs=b.rows(range(10)).inputs)
    assert len(registry.trained_on("text", 1)) == 10
    contender = register(registry, models, "good", "b", 0.9)
    with pytest.raises(PromotionRefused, match="less 10 rows the champion was trained on"):  # the same model ties with itself
        registry.promote("text", contender)

    registry = Registry(tmp_path / "all")
    registry.register("text", models["good"], card(0.5), models["a"].inputs, labels_a, train_inputs=b.inputs)
    contender = register(registry, models, "good", "b", 0.9)
    with pytest.raises(PromotionRefused, match="trained on all of the contender's evaluation set"):
        registry.promote("text", contender)


def test_models_with_other_inputs_cannot_be_compared_unless_forced(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.5)
    other = registry.register("text", models["good"], {**card(0.9, feature_set="sender-v2"), "inputs": [{"name": "text"}]},
                              models["b"].inputs, [str(x) for x in models["b"].labels])
    with pytest.raises(PromotionRefused, match="cannot compare"):
        registry.promote("text", other)
    assert registry.promote("text", other, force_reason="new feature set, validated offline")["forced"]


def test_helpful_errors(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no text champion .*`mailroom train`"):
        registry.champion("text")
    with pytest.raises(RegistryError, match="unknown model kind"):
        registry.list("audio")
    with pytest.raises(RegistryError, match="version 7"):
        registry.show("text", 7)


def test_champion_pointer_is_plain_json(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.5)
    state = json.loads((tmp_path / "text" / "champion.json").read_text())
    assert state["version"] == 1 and state["previous"] == []
    assert (tmp_path / "text" / "v0001" / "model.onnx").exists() and (tmp_path / "text" / "v0001" / "card.json").exists()


def test_attachments_are_stored_beside_the_card_and_listed_in_its_files(tmp_path, models):
    registry = Registry(tmp_path)
    data = models["a"]
    version = registry.register("text", models["good"], card(0.9), data.inputs, [str(x) for x in data.labels],
                                attachments={"reliability.png": b"\x89PNG fake"})
    ref = registry.get("text", version)
    assert (ref.onnx_path.parent / "reliability.png").read_bytes() == b"\x89PNG fake"
    assert set(ref.card["files"]) == {"model.onnx", "reliability.png"} and ref.card["files"]["reliability.png"]["bytes"] == 9
