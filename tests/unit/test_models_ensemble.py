"""models/ensemble.py: strongest-term-robust scores, the members' mixture, temperature folding and the ONNX graph."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from models.calibration import mixture, softmax
from models.ensemble import RobustVote, robust_scores


def _member(coef, classes=("a", "b", "c")):
    m = LogisticRegression(fit_intercept=False)
    m.classes_, m.coef_, m.intercept_ = np.array(classes), np.asarray(coef, dtype=np.float64), np.zeros(len(classes))
    return m


def test_robust_scores_drop_each_class_strongest_positive_contribution():
    coef = np.array([[4.0, 1.0, 0.0], [0.0, 1.0, 1.0], [-2.0, 0.0, 0.0]])
    x = np.array([[1.0, 1.0, 0.0],    # a: 4 + 1 - 4 = 1; b: 1 - 1 = 0; c: -2, nothing positive to drop
                  [0.5, 0.0, 2.0]])   # a: 2 - 2 = 0;     b: 2 - 2 = 0; c: -1
    expected = [[1.0, 0.0, -2.0], [0.0, 0.0, -1.0]]
    assert robust_scores(coef, x, 1).tolist() == expected
    assert robust_scores(coef, sp.csr_matrix(x), 1).tolist() == expected  # sparse and dense agree
    assert robust_scores(coef, x, 0).tolist() == (x @ coef.T).tolist()
    assert robust_scores(coef, x, 2)[0].tolist() == [0.0, 0.0, -2.0]


def test_a_class_resting_on_one_word_loses_its_confidence_one_spread_over_words_keeps_it():
    # class a: one word with a big weight; class b: four words with a quarter of it each
    coef = np.array([[8.0, 0, 0, 0, 0], [0, 2.0, 2.0, 2.0, 2.0], [0, 0, 0, 0, 0]])
    vote = RobustVote([_member(coef)], [1.0], drop_top=1)
    one_word, spread = np.array([[1.0, 0, 0, 0, 0]]), np.array([[0, 1.0, 1.0, 1.0, 1.0]])
    plain = _member(coef)
    assert plain.predict_proba(one_word)[0, 0] > 0.99 and plain.predict_proba(spread)[0, 1] > 0.99  # both sure without the deduction
    assert vote.predict_proba(one_word)[0].tolist() == pytest.approx([1 / 3] * 3)
    assert vote.predict_proba(spread)[0, 1] == pytest.approx(softmax(np.array([[0.0, 6.0, 0.0]]))[0, 1])


def test_members_that_disagree_make_no_class_probable_and_temper_is_exact():
    rng = np.random.default_rng(0)
    first, second = _member(rng.normal(0, 2, (3, 6))), _member(rng.normal(0, 2, (3, 6)))
    x = sp.csr_matrix(rng.uniform(0, 1, (20, 6)) * (rng.uniform(0, 1, (20, 6)) < 0.5))
    vote = RobustVote([first, second], [0.25, 0.75], drop_top=1)
    scores = vote.member_scores(x)
    assert scores.shape == (2, 20, 3)
    p = vote.predict_proba(x)
    assert np.allclose(p, 0.25 * softmax(scores[0]) + 0.75 * softmax(scores[1])) and np.allclose(p.sum(axis=1), 1)
    assert vote.predict(x).tolist() == [vote.classes_[i] for i in p.argmax(axis=1)]
    sure = RobustVote([_member([[5.0], [0.0], [0.0]]), _member([[0.0], [5.0], [0.0]])], None, drop_top=0)
    assert sure.predict_proba(np.array([[2.0]])).max() == pytest.approx(0.5, abs=1e-4)  # each member sure, of another class
    vote.temper(2.5)
    assert np.allclose(vote.predict_proba(x), mixture(scores, [0.25, 0.75], 2.5))


def test_members_must_share_their_classes():
    with pytest.raises(ValueError):
        RobustVote([_member(np.ones((3, 2))), _member(np.ones((3, 2)), ("a", "b", "z"))], None).fit(None, None)


def test_the_onnx_graph_computes_predict_proba():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MaxAbsScaler

    from models.export import TOKEN_PATTERN, check_parity, parity_probes, to_onnx
    from models.modelio import N_CONTEXT, N_IMAGE

    rng = np.random.default_rng(3)
    words = "invoice total due complaint refund broken laptop access password application position experience offer quote".split()
    texts = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(120)]
    context = rng.uniform(0, 2, (120, N_CONTEXT)).astype(np.float32)
    matrix = np.empty((120, 1 + N_CONTEXT), dtype=object)
    matrix[:, 0], matrix[:, 1:] = texts, context
    features = ColumnTransformer([("text", TfidfVectorizer(lowercase=False, token_pattern=TOKEN_PATTERN), 0),
                                  ("context", MaxAbsScaler(), list(range(1, 1 + N_CONTEXT)))])
    z = features.fit_transform(matrix)
    labels = rng.choice(["complaint", "invoice", "other"], 120)
    members = [LogisticRegression(fit_intercept=False, C=c).fit(z[rows], labels[rows]) for c, rows in ((10.0, slice(None)), (3.0, slice(0, 80)))]
    pipeline = Pipeline([("features", features), ("classifier", RobustVote(members, [0.5, 0.5], drop_top=1).temper(0.5))])
    model = to_onnx(pipeline, "text").SerializeToString()
    probes = parity_probes("text", N_IMAGE)
    inputs = {"text": texts + probes["text"], "context": np.vstack([context, probes["context"]])}
    parity = check_parity(pipeline, model, "text", inputs)
    assert parity.ok and parity.n == 120 + len(probes["text"]), parity
    # the check can fail: the same graph against the classifier without the strongest-term deduction
    pipeline.named_steps["classifier"].drop_top = 0
    assert not check_parity(pipeline, model, "text", inputs).ok
