"""models/calibration.py: ECE and reliability by hand, temperature fitting and folding, the triage table."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from models.calibration import (TEMPERATURES, expected_calibration_error, fit_temperature, label_index, mixture, reliability, reliability_png, routing, softmax,
                                temper, threshold_table)


def test_ece_matches_a_hand_computed_example():
    # top probabilities 0.9 (right), 0.6 (wrong), 0.7 (right), 0.8 (right), 0.55 (right); bins of width 0.2
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45]])
    truth = np.array([0, 1, 1, 1, 0])
    # bin (0.4, 0.6]: 0.6 wrong, 0.55 right -> |0.5 - 0.575| * 2/5 = 0.03
    # bin (0.6, 0.8]: 0.7, 0.8 right       -> |1 - 0.75| * 2/5   = 0.10
    # bin (0.8, 1.0]: 0.9 right            -> |1 - 0.9| * 1/5    = 0.02
    assert expected_calibration_error(probs, truth, n_bins=5) == pytest.approx(0.15)
    bins = reliability(probs, truth, n_bins=5)
    assert [b["n"] for b in bins] == [0, 0, 2, 2, 1]
    assert bins[2]["accuracy"] == 0.5 and bins[2]["confidence"] == pytest.approx(0.575)


def test_a_perfectly_calibrated_set_has_zero_ece_and_unknown_labels_count_as_wrong():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1]), n_bins=10) == pytest.approx(0.0)
    assert label_index(["a", "zzz", "b"], ["a", "b"]).tolist() == [0, -1, 1]
    assert expected_calibration_error(np.array([[0.9, 0.1]]), np.array([-1])) == pytest.approx(0.9)


def test_fit_temperature_softens_overconfident_scores_and_sharpens_underconfident_ones():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3))
    logits[np.arange(2000), labels] += 1.0  # the true calibration: temperature 1
    assert fit_temperature([(logits * 4, labels)]) == pytest.approx(4, rel=0.15)
    assert fit_temperature([(logits / 3, labels)]) == pytest.approx(1 / 3, rel=0.15)
    assert fit_temperature([(logits, np.full(2000, -1))]) == 1.0  # nothing to fit on
    assert fit_temperature([(logits * 4, labels), (logits / 3, labels)], weights=[1.0, 0.0]) == pytest.approx(4, rel=0.15)


def test_fit_temperature_on_a_mixture_of_members():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 3000)
    logits = rng.normal(0, 1, (2, 3000, 3))
    logits[:, np.arange(3000), labels] += 1.5
    # two identical members are one member: the same temperature as for it alone
    same = np.stack([logits[0] * 4, logits[0] * 4])
    assert fit_temperature([(same, labels, [0.3, 0.7])]) == pytest.approx(fit_temperature([(logits[0] * 4, labels)]))
    # otherwise it is the grid's temperature with the least negative log-likelihood of the mixture, not of either member
    t = fit_temperature([(logits * 3, labels, [0.5, 0.5])])
    nll = lambda temperature: -np.log(mixture(logits * 3, [0.5, 0.5], temperature)[np.arange(3000), labels]).mean()
    assert t == pytest.approx(min(TEMPERATURES, key=nll))
    assert t != pytest.approx(fit_temperature([(logits[0] * 3, labels)]))
    assert np.allclose(mixture(logits[0]), softmax(logits[0]))  # one member: a plain softmax
    assert np.allclose(mixture(logits, [1.0, 0.0], 2.0), softmax(logits[0], 2.0))


def test_temper_is_exactly_softmax_over_temperature():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    model = LogisticRegression(fit_intercept=False).fit(x, y)
    before = model.predict_proba(x)
    temper(model, 2.5)
    assert np.allclose(model.predict_proba(x), softmax(np.log(before), 2.5))
    assert np.array_equal(model.predict_proba(x).argmax(1), before.argmax(1))


def test_routing_counts_automatic_documents_and_wrong_departments():
    classes = ["complaint", "invoice", "other"]
    probs = np.array([[0.9, 0.05, 0.05],   # complaint, sure, right -> automatic, right
                      [0.1, 0.8, 0.1],     # invoice, sure, truly a complaint -> automatic, wrong department
                      [0.45, 0.35, 0.2],   # unsure -> triage
                      [0.1, 0.1, 0.8]])    # other -> triage, whatever its confidence
    labels = ["complaint", "complaint", "invoice", "invoice"]
    row = routing(probs, classes, labels, threshold=0.5)
    assert (row["n_automatic"], row["n_wrong"], row["automatic"], row["wrong_department"], row["misrouted"]) == (2, 1, 0.5, 0.5, 0.25)
    table = threshold_table(probs, classes, labels, thresholds=(0.4, 0.85, 0.95))
    assert [r["n_automatic"] for r in table] == [3, 1, 0]
    assert [r["wrong_department"] for r in table] == [pytest.approx(2 / 3), 0.0, 0.0]


def test_reliability_png_is_a_png():
    bins = reliability(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))
    assert reliability_png({"held out": bins}, "title").startswith(b"\x89PNG")
