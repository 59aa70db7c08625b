"""models/export.py: ONNX export and the parity gate, non-ASCII text included."""

import numpy as np
import onnx
import pytest

from models.export import NON_ASCII_PROBES, Parity, check_parity, parity_probes, to_onnx
from models.modelio import N_CONTEXT, N_IMAGE, onnx_feeds, onnx_session
from models.registry import Registry, database_uri
from models.generator import generate
from models.training import Candidate, Dataset, TrainConfig, TrainedModel, TrainingRun, build_dataset, context_vectors, fit, publish
from models.features import FEATURE_SET_ID, model_text

UNIGRAMS = (("ngram_range", (1, 1)), ("min_df", 2))
BIGRAMS = (("ngram_range", (1, 2)), ("min_df", 2))


@pytest.fixture(scope="module")
def text_data():
    """Text model inputs of 260 generated documents, split 3:1 (train, held out)."""
    docs = generate(260, seed=21, scan_share=0.0)
    data = build_dataset("text", docs, context_vectors(docs))
    rows = np.arange(len(data))
    return data.rows(rows[rows % 4 != 0]), data.rows(rows[rows % 4 == 0])


def with_probes(inputs: dict, kind: str) -> dict:
    probes = parity_probes(kind, N_IMAGE)
    return {k: list(v) + list(probes[k]) if isinstance(v, list) else np.concatenate([v, probes[k]]) for k, v in inputs.items()}


@pytest.mark.parametrize("candidate", [
    Candidate("logreg", (("C", 10.0),), BIGRAMS),
    Candidate("linear_svc", (("C", 0.5),), UNIGRAMS),
    Candidate("complement_nb", (("alpha", 0.3),), BIGRAMS),
], ids=lambda c: c.kernel)
def test_text_models_agree_with_sklearn_on_held_out_and_non_ascii_texts(text_data, candidate):
    train, held_out = text_data
    pipeline = fit("text", candidate, train, seed=0)
    parity = check_parity(pipeline, to_onnx(pipeline, "text").SerializeToString(), "text", with_probes(held_out.inputs, "text"))
    assert parity.ok, parity
    assert parity.n == len(held_out) + len(NON_ASCII_PROBES)
    assert parity.max_abs_diff <= 1e-4


def test_onnx_tokenizer_keeps_non_ascii_words():
    """Classes told apart only by non-ASCII words: an ASCII-only tokenizer would see nothing."""
    words = {"a": ["café", "crème", "garçon", "müller"], "b": ["grüße", "straße", "größe", "français"]}
    texts, labels = [], []
    for label, vocab in words.items():
        for i in range(12):
            texts.append(model_text(None, f"hello world {vocab[i % 4]} {vocab[(i + 1) % 4]}"))
            labels.append(label)
    data = Dataset("text", {"text": texts, "context": np.zeros((len(texts), N_CONTEXT), np.float32)},
                   np.array(labels, dtype=object), np.array(["t"] * len(texts), dtype=object), [str(i) for i in range(len(texts))])
    pipeline = fit("text", Candidate("logreg", (("C", 10.0),), (("ngram_range", (1, 1)), ("min_df", 1))), data, seed=0)
    model = to_onnx(pipeline, "text").SerializeToString()
    probe = {"text": [model_text(None, "HELLO CAFÉ GARÇON"), model_text(None, "Grüße aus der Straße")], "context": np.zeros((2, N_CONTEXT), np.float32)}
    labels_onnx, proba = onnx_session(model).run(["label", "probabilities"], onnx_feeds("text", probe))
    assert list(labels_onnx) == ["a", "b"]
    assert proba[0, 0] > 0.7 and proba[1, 1] > 0.7
    assert check_parity(pipeline, model, "text", probe).ok


@pytest.mark.parametrize("candidate", [
    Candidate("logreg", (("C", 1.0),), (("scale", True),)),
    Candidate("hist_gradient_boosting", (("max_iter", 30), ("learning_rate", 0.1), ("max_leaf_nodes", 15)), (("scale", False),)),
    Candidate("random_forest", (("n_estimators", 30), ("min_samples_leaf", 1)), (("scale", False),)),
], ids=lambda c: c.kernel)
def test_image_models_agree_with_sklearn(candidate):
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 1, (300, N_IMAGE)).astype(np.float32)
    context = rng.uniform(0, 2, (300, N_CONTEXT)).astype(np.float32)
    labels = np.array(["invoice", "other", "complaint"], dtype=object)[(features[:, 0] * 2 + context[:, 5] > 1.2).astype(int) + (features[:, 3] > 0.8)]
    data = Dataset("image", {"image_features": features, "context": context}, labels, np.array(["g"] * 300, dtype=object), [str(i) for i in range(300)])
    pipeline = fit("image", candidate, data.rows(range(200)), seed=0)
    parity = check_parity(pipeline, to_onnx(pipeline, "image").SerializeToString(), "image", with_probes(data.rows(range(200, 300)).inputs, "image"))
    assert parity.ok, parity


def test_parity_catches_a_model_that_is_not_the_pipeline(text_data):
    train, held_out = text_data
    one = fit("text", Candidate("logreg", (("C", 10.0),), UNIGRAMS), train, seed=0)
    other = fit("text", Candidate("complement_nb", (("alpha", 0.3),), UNIGRAMS), train, seed=0)
    parity = check_parity(one, to_onnx(other, "text").SerializeToString(), "text", held_out.inputs)
    assert not parity.ok and parity.max_abs_diff > 1e-2


def test_metadata_names_feature_set_and_labels(text_data):
    pipeline = fit("text", Candidate("complement_nb", (("alpha", 0.3),), UNIGRAMS), text_data[0], seed=0)
    props = {p.key: p.value for p in to_onnx(pipeline, "text").metadata_props}
    assert props["feature_set_id"] == FEATURE_SET_ID
    assert props["labels"].split(",") == list(pipeline.classes_)
    onnx.checker.check_model(to_onnx(pipeline, "text"))


def test_a_model_failing_parity_is_not_registered(tmp_path, text_data, monkeypatch):
    train, held_out = text_data
    candidate = Candidate("complement_nb", (("alpha", 0.3),), UNIGRAMS)
    model = TrainedModel("text", fit("text", candidate, train, 0), candidate, [], {"macro_f1": 0.5}, {}, held_out, {}, 0.0)
    run = TrainingRun(TrainConfig(), {"text": model}, [], {}, 0.0)
    monkeypatch.setattr("models.training.check_parity", lambda *a, **k: Parity(ok=False, n=1, max_abs_diff=0.5, label_mismatches=1, ties=0))
    monkeypatch.setattr("models.training.run_params", lambda model, run: {"candidate": model.candidate.name})  # this model is a sketch
    monkeypatch.setattr("models.training.run_metrics", lambda model: {"held_out.macro_f1": model.evaluation["macro_f1"]})
    registry = Registry(tmp_path)
    version, parity = publish(model, run, registry)
    assert version is None and not parity.ok
    assert registry.list("text") == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(database_uri(tmp_path), database_uri(tmp_path))
    (failed,) = client.search_runs([client.get_experiment_by_name("mailroom-training").experiment_id])
    assert failed.info.status == "FAILED" and failed.data.metrics["held_out.macro_f1"] == 0.5
    assert "ONNX parity failed" in failed.data.tags["mlflow.note.content"]


def test_the_shipped_text_candidates_tempered_agree_with_sklearn(text_data):
    """No intercept, vocabulary from generated documents, function words dropped by the graph, temperature folded in."""
    from models.calibration import temper
    from models.training import text_candidates

    train, held_out = text_data
    for candidate in text_candidates(quick=False)[:2]:
        pipeline = fit("text", candidate, train, seed=0)
        temper(pipeline.named_steps["classifier"], 0.6)
        parity = check_parity(pipeline, to_onnx(pipeline, "text").SerializeToString(), "text", with_probes(held_out.inputs, "text"))
        assert parity.ok, parity
