"""models/training.py: source weighting, vocabulary from generated documents, selection on leave-one-source-out, calibration."""

import numpy as np
import pytest

from models.calibration import THRESHOLDS, mixture
from models.ensemble import RobustVote
from models.generator import generate
from models.examples_store import TrainingRows
from models.training import (GENERATED_SOURCE, LABELLED_SOURCE, Candidate, build_dataset, calibrate, choose, context_vectors,
                             fit_classifier, fit_features, folds, sample_weights, search, text_candidates)


class Bar:
    def update(self, n):
        pass


def test_sample_weights_give_every_label_equal_weight_shared_equally_by_its_sources():
    labels = np.array(["complaint"] * 6 + ["other"] * 4 + ["invoice"] * 2)
    sources = np.array(["gen"] * 2 + ["cfpb"] * 4 + ["gen"] * 1 + ["enron"] * 3 + ["gen"] * 2)
    w = sample_weights(labels, sources)
    assert w.mean() == pytest.approx(1.0)
    per_label = {label: w[labels == label].sum() for label in ("complaint", "other", "invoice")}
    assert per_label["complaint"] == pytest.approx(per_label["other"]) == pytest.approx(per_label["invoice"])
    # within complaint, the 2 generated rows weigh as much as the 4 cfpb rows together
    assert w[(labels == "complaint") & (sources == "gen")].sum() == pytest.approx(w[(labels == "complaint") & (sources == "cfpb")].sum())
    half = sample_weights(labels, sources, other_weight=0.5)
    assert half[labels == "other"].sum() == pytest.approx(half[labels == "invoice"].sum() / 2)


def test_choose_takes_the_best_left_out_figure_within_the_guard():
    rows = [{"candidate": "sharp", "macro_f1": 0.99, "loso_macro_f1": 0.30},
            {"candidate": "robust", "macro_f1": 0.98, "loso_macro_f1": 0.60},
            {"candidate": "sloppy", "macro_f1": 0.90, "loso_macro_f1": 0.90}]
    assert choose(rows, guard=0.02) == "robust"
    assert choose(rows, guard=0.0) == "sharp"
    assert choose(rows, guard=0.5) == "sloppy"
    assert choose(rows, guard=0.5, floor=0.95) == "robust"  # the floor keeps what the held-out side needs
    assert choose(rows, guard=0.5, floor=0.995) == "sharp"  # none reaches the floor: the best held-out figure does
    assert choose([{"candidate": "a", "macro_f1": 0.8}, {"candidate": "b", "macro_f1": 0.9}], guard=0.02) == "b"  # no real sources


@pytest.fixture(scope="module")
def mixed():
    """Generated documents plus two fake 'real' sources, one class each, in a style of their own."""
    docs = [d for d in generate(500, seed=3, scan_share=0.0)]
    for i in range(40):
        docs.append({"doc_id": f"tickets-{i}", "content_type": "text", "subject": None, "label": "service_request", "source": "tickets",
                     "text": f"zqticket laptop access please password {'vpn' if i % 2 else 'printer'} broken", "sender": None})
        docs.append({"doc_id": f"letters-{i}", "content_type": "text", "subject": None, "label": "complaint", "source": "letters",
                     "text": f"zqletter i am unhappy refund my money {'late' if i % 2 else 'broken'} delivery complaint", "sender": None})
    data = build_dataset("text", docs, context_vectors(docs))
    rows = np.arange(len(data))
    return data, data.rows(rows[rows % 5 != 0]), data.rows(rows[rows % 5 == 0])


def test_vocabulary_comes_from_the_generated_documents(mixed):
    data, train, _ = mixed
    candidate = text_candidates(quick=True)[0]
    features, _ = fit_features("text", candidate, train)
    vocabulary = features.named_transformers_["text"].vocabulary_
    assert "zqticket" not in vocabulary and "zqletter" not in vocabulary and "invoice" in vocabulary
    assert "the" not in vocabulary  # function words are dropped in the graph
    real_only = train.rows(np.flatnonzero(train.sources != GENERATED_SOURCE))
    assert "zqticket" in fit_features("text", candidate, real_only)[0].named_transformers_["text"].vocabulary_  # no generated: all


def test_search_scores_every_candidate_on_the_split_and_on_each_left_out_source(mixed):
    data, train, held_out = mixed
    candidates = [Candidate("logreg", (("C", c), ("intercept", False), ("other_weight", 0.5), ("generated_share", 0.75)),
                            (("ngram_range", (1, 1)), ("min_df", 2), ("vocabulary", "generated"))) for c in (0.3, 3.0)]
    assert list(folds(train, held_out, data, ["letters", "tickets"])) == ["held_out", "letters", "tickets"]
    pipeline, best, results, scored = search("text", candidates, train, held_out, data, ["letters", "tickets"], seed=0, guard=0.02, bar=Bar())
    assert [r["candidate"] for r in results] == [c.name for c in candidates]
    assert all(0 <= r["loso_macro_f1"] <= 1 and 0 <= r["macro_f1"] <= 1 for r in results)
    assert best.name == choose(results, 0.02)
    assert set(scored["letters"].data.sources) == {"letters"} and len(scored["tickets"].data) == 40
    calibration = calibrate(pipeline.named_steps["classifier"], scored, ["letters", "tickets"], threshold=0.5)
    assert calibration["temperature"] > 0 and set(calibration["left_out"]) == {"letters", "tickets"}
    for side in [calibration["held_out"], *calibration["left_out"].values()]:
        assert 0 <= side["ece"] <= 1 and side["at_threshold"]["threshold"] == 0.5 and len(side["thresholds"]) == len(THRESHOLDS)
    # the winner fitted on train was temperature-scaled in place: same decisions, the held-out figures' probabilities
    assert np.array_equal(pipeline.predict(held_out.matrix()), scored["held_out"].predicted)


def test_generated_share_splits_each_label_between_generated_and_real_sources():
    labels = np.array(["complaint"] * 5 + ["other"] * 6)
    sources = np.array(["generated"] * 2 + ["cfpb"] * 3 + ["generated"] * 2 + ["enron"] * 2 + ["tobacco"] * 2)
    w = sample_weights(labels, sources, generated_share=0.75)
    complaint = w[labels == "complaint"].sum()
    assert w[(labels == "complaint") & (sources == "generated")].sum() == pytest.approx(0.75 * complaint)
    assert w[sources == "enron"].sum() == pytest.approx(w[sources == "tobacco"].sum()) == pytest.approx(0.125 * complaint)
    only_generated = sample_weights(np.array(["a", "b", "b"]), np.array(["generated"] * 3), generated_share=0.75)
    assert only_generated.tolist() == pytest.approx([1.5, 0.75, 0.75])


def test_labelled_rows_join_the_training_side_with_their_weights_and_their_words(mixed):
    _, train, _ = mixed
    n = 30
    extra = TrainingRows("text", {"text": [f"zqnew grievance {i % 3}" for i in range(n)], "context": np.zeros((n, train.inputs["context"].shape[1]),
                                                                                                                np.float32)},
                         np.array(["complaint"] * n, dtype=object), np.linspace(0.25, 1.0, n), [f"x{i}" for i in range(n)])
    both = train.plus(extra)
    assert len(both) == len(train) + n and both.doc_ids[-n:] == extra.doc_ids and set(both.sources[-n:]) == {LABELLED_SOURCE}
    assert both.weights[:len(train)].tolist() == [1.0] * len(train) and both.weights[-n:].tolist() == extra.weights.tolist()
    assert both.rows([len(train), len(both) - 1]).weights.tolist() == [0.25, 1.0]
    candidate = text_candidates(quick=True)[0]
    features, z = fit_features("text", candidate, both)
    assert "zqnew" in features.named_transformers_["text"].vocabulary_  # the mailbox's own words, not only the generator's
    classifier = fit_classifier(candidate, z, both, seed=0)
    assert classifier.predict(features.transform(both.rows([len(both) - 1]).matrix()))[0] == "complaint"


def test_text_candidates_vote_with_a_member_fitted_on_the_generated_documents_only(mixed):
    data, train, held_out = mixed
    candidate = text_candidates(quick=True)[0]
    features, z = fit_features("text", candidate, train)
    vote = fit_classifier(candidate, z, train, seed=0)
    assert isinstance(vote, RobustVote) and len(vote.members) == 2 and vote.drop_top == 1
    generated = np.flatnonzero(train.sources == GENERATED_SOURCE)
    alone = fit_classifier(Candidate("logreg", tuple((k, v) for k, v in candidate.params if k not in ("generated_member", "drop_top")),
                                     candidate.features), z[generated], train.rows(generated), seed=0)
    assert np.allclose(vote.members[1].coef_, alone.coef_)  # the second member never saw the two fake real sources
    assert not np.allclose(vote.members[0].coef_, alone.coef_)
    weights = dict(candidate.params)["generated_member"]
    assert vote._weights().tolist() == pytest.approx([1 - weights, weights])
    only_generated = fit_classifier(candidate, z[generated], train.rows(generated), seed=0)
    assert len(only_generated.members) == 1  # nothing else to leave out: one member


def test_search_and_calibration_with_the_vote_keep_the_served_probabilities(mixed):
    data, train, held_out = mixed
    candidates = text_candidates(quick=True)
    pipeline, best, results, scored = search("text", candidates, train, held_out, data, ["letters", "tickets"], seed=0, guard=0.02, bar=Bar())
    held = scored["held_out"]
    assert held.member_scores.shape == (2, len(held_out), len(held.classes))
    assert np.allclose(held.probabilities, pipeline.predict_proba(held_out.matrix()))
    calibration = calibrate(pipeline.named_steps["classifier"], scored, ["letters", "tickets"], threshold=0.5)
    t = calibration["temperature"]
    assert "every member" in calibration["method"]
    # tempered in place: what the pipeline (and so the ONNX graph) serves is the mixture at the fitted temperature
    served = pipeline.predict_proba(held_out.matrix())
    assert np.allclose(served, mixture(held.member_scores, held.member_weights, t))
    assert calibration["held_out"]["at_threshold"]["n_automatic"] == sum(
        (served.max(axis=1) >= 0.5) & (held.classes[served.argmax(axis=1)] != "other"))
