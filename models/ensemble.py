"""The text model's classifier: linear members that must agree, each scored without its strongest term.

On sources unlike anything in training the text model was confidently wrong for two reasons, and this
classifier answers each (issue 17):

* **one word decided**: a help-desk ticket about the "oracle application" read as a job application
  with 0.97, a ticket naming a "po invoice" as an invoice. Each member's class score here is its
  linear score minus the largest single positive contribution to it (`drop_top` terms per class,
  the "strongest term"): a class needs evidence from more than one word to be confident. Documents
  whose evidence is spread over many words (a CV, a complaint letter) keep their score.
* **"looks real" meant "is other"**: the member fitted on every row learnt real sources' styles; a
  second member is fitted on the generated documents only (every class in many voices; plus the
  labelled documents of the mailbox, when there are any). The output is the weighted mean of the
  members' probabilities: where they disagree no class is probable, and the document goes to triage.

Members are logistic regressions without intercept over the same features, so a temperature
divides every member's weights (`temper`): the strongest-term deduction scales with them, which
makes temperature scaling exact here too. `predict_proba` is what the ONNX graph computes
(`convert_robust_vote`, registered with skl2onnx on import): per member and class, MatMul for the
scores, Mul + ReduceMax + Relu for the strongest contribution, Softmax, then the weighted sum.

>>> import numpy as np
>>> from sklearn.linear_model import LogisticRegression
>>> m = LogisticRegression(fit_intercept=False)
>>> m.classes_, m.coef_, m.intercept_ = np.array(["a", "b"]), np.array([[2.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), np.zeros(2)
>>> robust_scores(m.coef_, np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), 1).tolist()   # a lone word counts for nothing
[[0.0, 0.0], [2.0, 0.0]]
>>> RobustVote([m], [1.0], drop_top=1).predict_proba(np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])).round(3).tolist()
[[0.5, 0.5], [0.881, 0.119]]
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin

from models.calibration import mixture


def robust_scores(coef: np.ndarray, x, drop_top: int) -> np.ndarray:
    """Linear scores x @ coef.T minus, per row and class, the sum of the `drop_top` largest positive contributions
    x_j * coef_kj (0 when there are none). `x` dense or sparse."""
    coef = np.asarray(coef, dtype=np.float64)
    sparse = sp.issparse(x)
    x = sp.csr_matrix(x, dtype=np.float64) if sparse else np.asarray(x, dtype=np.float64)
    scores = np.asarray(x @ coef.T, dtype=np.float64)
    if drop_top <= 0 or scores.shape[0] == 0:
        return scores
    for k in range(coef.shape[0]):
        if sparse:
            contributions = x.multiply(coef[k][None, :]).tocsr()
            contributions.data = np.maximum(contributions.data, 0.0)
            for i in range(contributions.shape[0]):
                row = contributions.data[contributions.indptr[i]:contributions.indptr[i + 1]]
                if len(row):
                    scores[i, k] -= np.sort(row)[-drop_top:].sum()
        else:
            contributions = np.maximum(x * coef[k][None, :], 0.0)
            top = -np.sort(-contributions, axis=1)[:, :drop_top] if drop_top > 1 else contributions.max(axis=1, keepdims=True)
            scores[:, k] -= top.sum(axis=1)
    return scores


class RobustVote(ClassifierMixin, BaseEstimator):
    """Weighted mean of the members' softmax over their strongest-term-robust scores (see the module docstring).
    The members are fitted LogisticRegressions without intercept sharing `classes_`."""

    def __init__(self, members=None, weights=None, drop_top: int = 1):
        self.members = members
        self.weights = weights
        self.drop_top = drop_top

    @property
    def classes_(self) -> np.ndarray:
        return self.members[0].classes_

    def fit(self, x, y, sample_weight=None):
        """The members come fitted (`models.training.fit_classifier`); this only checks that they agree on the classes."""
        if any(list(m.classes_) != list(self.classes_) for m in self.members):
            raise ValueError("the members must share their classes")
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return bool(self.members) and all(hasattr(m, "coef_") for m in self.members)

    def _weights(self) -> np.ndarray:
        w = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.members), dtype=np.float64)
        return w / w.sum()

    def member_scores(self, x) -> np.ndarray:
        """[members, rows, classes]: each member's robust scores (what a temperature divides)."""
        return np.stack([robust_scores(m.coef_, x, self.drop_top) for m in self.members])

    def predict_proba(self, x) -> np.ndarray:
        return mixture(self.member_scores(x), self._weights())

    def predict(self, x) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def temper(self, temperature: float) -> "RobustVote":
        """Divide every member's weights by `temperature` (in place): softmax(robust / t) exactly."""
        for m in self.members:
            m.coef_ = m.coef_ / temperature
        return self


# --- ONNX ------------------------------------------------------------------------------------


def _shape_robust_vote(operator):
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    calculate_linear_classifier_output_shapes(operator)


def convert_robust_vote(scope, operator, container):
    """RobustVote as ONNX: see the module docstring. Outputs label (string [N]) and probabilities (float [N, K])."""
    from skl2onnx.algebra.onnx_ops import (OnnxAdd, OnnxArgMax, OnnxArrayFeatureExtractor, OnnxConcat, OnnxMatMul, OnnxMul, OnnxReduceMaxApi18,
                                           OnnxRelu, OnnxReshape, OnnxSoftmax, OnnxSub)

    model, opv = operator.raw_operator, container.target_opset
    if model.drop_top > 1:
        raise NotImplementedError("the ONNX graph drops one strongest term per class")
    x = operator.inputs[0]
    total = None
    for member, weight in zip(model.members, model._weights()):
        coef = np.asarray(member.coef_, dtype=np.float32)
        scores = OnnxMatMul(x, coef.T.copy(), op_version=opv)
        if model.drop_top == 1:
            strongest = [OnnxRelu(OnnxReduceMaxApi18(OnnxMul(x, coef[k][None, :].copy(), op_version=opv), axes=[1], keepdims=1, op_version=opv),
                                  op_version=opv) for k in range(coef.shape[0])]
            scores = OnnxSub(scores, OnnxConcat(*strongest, axis=1, op_version=opv), op_version=opv)
        probs = OnnxMul(OnnxSoftmax(scores, axis=1, op_version=opv), np.array([weight], dtype=np.float32), op_version=opv)
        total = probs if total is None else OnnxAdd(total, probs, op_version=opv)
    probabilities = OnnxMul(total, np.array([1.0], dtype=np.float32), op_version=opv, output_names=[operator.outputs[1]])
    index = OnnxReshape(OnnxArgMax(total, axis=1, keepdims=0, op_version=opv), np.array([-1], dtype=np.int64), op_version=opv)
    label = OnnxReshape(OnnxArrayFeatureExtractor(np.array([str(c) for c in model.classes_]), index, op_version=opv),
                        np.array([-1], dtype=np.int64), op_version=opv, output_names=[operator.outputs[0]])
    probabilities.add_to(scope, container)
    label.add_to(scope, container)


def register_converter() -> None:
    from skl2onnx import update_registered_converter

    update_registered_converter(RobustVote, "MailroomRobustVote", _shape_robust_vote, convert_robust_vote,
                                options={"zipmap": [True, False, "columns"], "nocl": [True, False]})


register_converter()
