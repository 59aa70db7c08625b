"""Confidence that means something: temperature scaling, expected calibration error, the triage table.

The scan model is a logistic regression without intercept, so dividing its weights by a temperature
`t` is exactly temperature scaling (softmax(z / t)) and the model stays a plain LogisticRegression
that skl2onnx converts. The text model is a mixture of such regressions (`models.ensemble.RobustVote`):
one `t` divides every member's weights, and it is fitted on the likelihood of the mixture
(`mixture`, `fit_temperature` with member scores). `t` is fitted on out-of-distribution scores (each real source scored by a
model trained without it) together with the in-distribution held-out scores, each side with equal
weight (the left-out side less when it has fewer rows than the held-out side), so that a top
probability of 0.8 means about 80 % right on documents unlike the training sources too.

Routing (`udfs.scoring`): a document goes to its label's department when its top probability is at
least the triage threshold of its model kind (`ScoringConfig.threshold`: the text model's 0.9, the scan
models' 0.7), else to triage; `other` goes to triage as well. So a document is routed
*automatically* when its top probability >= threshold and its predicted department is not triage;
it went to the *wrong department* when that department is not its true label's.

>>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
>>> round(expected_calibration_error(probs, np.array([0, 1, 1, 1]), n_bins=5), 3)
0.3
"""

from __future__ import annotations

import io

import numpy as np

from schemas.labels import DEPARTMENTS, TRIAGE

N_BINS = 10
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))  # the grid `fit_temperature` searches
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(probs: np.ndarray, correct_index: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Top-label reliability in `n_bins` equal-width confidence bins: n, mean confidence, accuracy."""
    probs = np.asarray(probs)
    top, predicted = probs.max(axis=1), probs.argmax(axis=1)
    hit = predicted == np.asarray(correct_index)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(top, edges[1:-1], right=True), 0, n_bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(top[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(hit[which == b].mean()) if (which == b).any() else None} for b in range(n_bins)]


def expected_calibration_error(probs: np.ndarray, correct_index: np.ndarray, n_bins: int = N_BINS) -> float:
    """Sum over bins of (bin share) x |accuracy - mean confidence| (top label, equal-width bins).
    `correct_index[i]` is the column of row i's true label (-1 when the model cannot predict it)."""
    bins = reliability(probs, correct_index, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"])) if n else 0.0


def label_index(labels, classes) -> np.ndarray:
    """Column of each label in `classes`, -1 for labels the model does not know."""
    where = {str(c): i for i, c in enumerate(classes)}
    return np.array([where.get(str(label), -1) for label in labels])


def mixture(member_scores: np.ndarray, weights=None, temperature: float = 1.0) -> np.ndarray:
    """Sum over members of weight x softmax(scores / temperature): `member_scores` [members, rows, classes] (or one
    member's [rows, classes]), `weights` one per member (None: equal), normalised to sum 1.

    >>> mixture(np.array([[[0.0, 0.0]], [[10.0, -10.0]]]), [0.5, 0.5]).round(2).tolist()
    [[0.75, 0.25]]
    """
    member_scores = np.asarray(member_scores, dtype=np.float64)
    if member_scores.ndim == 2:
        return softmax(member_scores, temperature)
    weights = np.ones(len(member_scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    return sum(w * softmax(s, temperature) for w, s in zip(weights / weights.sum(), member_scores))


def fit_temperature(parts: list[tuple], weights: list[float] | None = None) -> float:
    """The temperature minimising the weighted mean of each part's mean negative log-likelihood; a part is (decision
    scores [n, classes], label index [n]) or, for a mixture of members (`mixture`), (member scores [members, n,
    classes], label index [n], member weights). Rows whose label the model lacks are skipped."""
    weights = weights or [1.0] * len(parts)
    kept = []
    for part, w in zip(parts, weights):
        scores, index = np.asarray(part[0]), np.asarray(part[1])
        members = part[2] if len(part) > 2 else None
        rows = index >= 0
        if rows.any() and w > 0:
            kept.append((scores[..., rows, :], index[rows], members, w))
    if not kept:
        return 1.0
    losses = [sum(w * -np.log(mixture(s, m, t)[np.arange(len(i)), i] + 1e-12).mean() for s, i, m, w in kept) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def temper(classifier, temperature: float):
    """Fold a temperature into a fitted LogisticRegression (in place): softmax(z / t) exactly; a classifier with its
    own `temper` (models.ensemble.RobustVote: every member) does it itself."""
    if hasattr(classifier, "temper"):
        return classifier.temper(temperature)
    classifier.coef_ = classifier.coef_ / temperature
    classifier.intercept_ = classifier.intercept_ / temperature
    return classifier


def routing(probs: np.ndarray, classes, labels, threshold: float) -> dict:
    """Share of documents routed automatically, the share of those sent to the wrong department, and the share of all
    documents sent to a wrong department (`misrouted`: for a source of `other` documents every automatic one is wrong)."""
    probs = np.asarray(probs)
    predicted = [DEPARTMENTS[str(classes[j])] for j in probs.argmax(axis=1)]
    truth = [DEPARTMENTS[str(label)] for label in labels]
    auto = (probs.max(axis=1) >= threshold) & np.array([d != TRIAGE for d in predicted])
    wrong = auto & np.array([p != t for p, t in zip(predicted, truth)])
    n_auto = int(auto.sum())
    return {"threshold": threshold, "n": len(truth), "automatic": float(auto.mean()) if len(truth) else 0.0,
            "wrong_department": float(wrong.sum() / n_auto) if n_auto else 0.0, "misrouted": float(wrong.mean()) if len(truth) else 0.0,
            "n_automatic": n_auto, "n_wrong": int(wrong.sum())}


def threshold_table(probs: np.ndarray, classes, labels, thresholds=THRESHOLDS) -> list[dict]:
    return [routing(probs, classes, labels, t) for t in thresholds]


def reliability_png(curves: dict[str, list[dict]], title: str) -> bytes:
    """A reliability diagram (accuracy against confidence per bin) with one line per named curve."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, bins in curves.items():
        shown = [b for b in bins if b["n"]]
        ax.plot([b["confidence"] for b in shown], [b["accuracy"] for b in shown], marker="o", markersize=3, linewidth=1.2,
                label=f"{name} (n={sum(b['n'] for b in bins)})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top probability (mean per bin)", ylabel="share correct")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()
