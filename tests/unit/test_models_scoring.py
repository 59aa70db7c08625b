"""End to end: train (quick) -> export -> parity -> register -> Scorer through onnxruntime."""

import json
import unicodedata

import numpy as np
import pytest
from sklearn.metrics import f1_score

from models.generator import generate
from models.image_features import image_features
from models.registry import Registry
from models.scoring import FeatureSetMismatch, Scorer
from models.training import TrainConfig, publish, train
from models.features import FEATURE_SET_ID, SENDER_FEATURES, SenderHistory, model_text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = train(TrainConfig(generated=320, seed=5, quick=True, source_holdout=False), progress=False)
    registry = Registry(tmp_path_factory.mktemp("registry"))
    versions = {kind: publish(model, run, registry) for kind, model in run.models.items()}
    return run, registry, versions


def test_every_kind_passes_parity_and_is_registered_as_champion(trained):
    run, registry, versions = trained
    assert set(versions) == {"text", "scan", "image"}
    for kind, (version, parity) in versions.items():
        assert version == 1 and parity.ok
        card = registry.champion(kind).card
        assert card["feature_set_id"] == FEATURE_SET_ID and card["parity"]["ok"]
        assert card["evaluation"]["macro_f1"] == pytest.approx(run.models[kind].evaluation["macro_f1"])
        assert card["inputs"][-1]["features"] == list(SENDER_FEATURES)
        assert set(card["libraries"]) >= {"scikit-learn", "skl2onnx", "onnxruntime"}
        json.dumps(card)


def test_text_scorer_reproduces_the_sklearn_evaluation(trained):
    run, registry, _ = trained
    model = run.models["text"]
    scorer = Scorer.from_registry(registry.root, "text")
    labels, probabilities = scorer.score_texts(model.held_out.inputs["text"], model.held_out.inputs["context"])
    assert labels == list(model.pipeline.predict(model.held_out.matrix()))
    np.testing.assert_allclose(probabilities, model.pipeline.predict_proba(model.held_out.matrix()), atol=1e-4)
    assert scorer.labels == tuple(model.pipeline.classes_)
    supported = sorted(set(model.held_out.labels))
    assert f1_score(list(model.held_out.labels), labels, labels=supported, average="macro") == pytest.approx(model.evaluation["macro_f1"])
    assert model.evaluation["macro_f1"] > 0.5


def test_serving_normalisation_matches_training(trained):
    """Raw or NFD-decomposed text scores like the model_text form training used."""
    _, registry, _ = trained
    scorer = Scorer.from_registry(registry.root, "text")
    subject, body = "Réclamation", "Très déçu: la facture est fausse. Grüße, Café Müller"
    context = np.array([SenderHistory().observe(0, False)] * 3)
    texts = [model_text(subject, body), unicodedata.normalize("NFD", f"{subject}\n{body}"), f"  {subject.upper()}\n\n{body}  "]
    labels, probabilities = scorer.score_texts(texts, context)
    assert len(set(labels)) == 1
    np.testing.assert_allclose(probabilities[1:], np.repeat(probabilities[:1], 2, axis=0), atol=1e-6)


def test_image_scorer_takes_png_or_features(trained):
    run, registry, _ = trained
    docs = [d for d in generate(40, seed=77) if d["content_type"] == "image"]
    scorer = Scorer.from_registry(registry.root, "image")
    context = np.zeros((len(docs), len(SENDER_FEATURES)), np.float32)
    from_png = scorer.score_images([d["image"] for d in docs], context)
    from_features = scorer.score_images([image_features(d["image"]) for d in docs], context)
    assert from_png[0] == from_features[0]
    np.testing.assert_allclose(from_png[1], from_features[1], atol=1e-6)
    assert np.allclose(from_png[1].sum(axis=1), 1, atol=1e-4)


def test_scorer_refuses_another_feature_set(trained):
    _, registry, _ = trained
    ref = registry.champion("text")
    with pytest.raises(FeatureSetMismatch) as error:
        Scorer(type(ref)(ref.kind, ref.version, ref.onnx_path, {**ref.card, "feature_set_id": "sender-v0"}))
    assert "sender-v0" in str(error.value) and FEATURE_SET_ID in str(error.value)


def test_scorer_checks_its_inputs(trained):
    _, registry, _ = trained
    text = Scorer.from_registry(registry.root, "text")
    with pytest.raises(ValueError, match="context must have shape"):
        text.score_texts(["a", "b"], np.zeros((1, len(SENDER_FEATURES))))
    with pytest.raises(TypeError, match="score_texts"):
        text.score_images([b""], np.zeros((1, len(SENDER_FEATURES))))
    labels, probabilities = text.score_texts([], np.zeros((0, len(SENDER_FEATURES))))
    assert labels == [] and probabilities.shape == (0, len(text.labels))
