"""The judge's statistics: promote a challenger, or roll a new champion back, on labelled shadow pairs.

Both models answered the same documents (the shadow pairs) and the ground truth of those
documents arrived, so the comparison is paired (../shared/notes/LIFECYCLE.md, section 3).
Plain functions over `JudgedPair`s, no I/O; everything they decide on is in the `Verdict`.

`judge(pairs, config)`: WAIT below `min_pairs` (a sample size fixed in advance, e.g. from
`sample_size`; not a decision). From there the first `min_pairs` pairs are judged, once: later
pairs change nothing, so looking again cannot turn a refusal into a promotion. PROMOTE only if
  * the exact one-sided McNemar test says the challenger is right alone more often than the
    champion (scipy.stats.binomtest(c, b + c, 0.5, alternative="greater"), p < alpha; b: only the
    champion right, c: only the challenger right),
  * the paired bootstrap percentile CI of Δmacro-F1 (challenger - champion; documents resampled,
    both models on the same resample) has its lower bound above `macro_f1_margin`,
  * no class with at least `class_min_support` true documents loses F1: the CI of its ΔF1 has
    its lower bound at or above -`class_delta`,
  * the challenger's p99 latency is within budget (absolute and relative to the champion's),
    and its fallback rate (documents where it missed its deadline) is at most `max_fallback_rate`;
otherwise REFUSE, with every failed rule as a reason.

Macro-F1 is Mailroom's (udfs/metrics.py), per model and per resample: over the labels present in
the true labels or that model's labels, zero_division=0, as sklearn's f1_score(average="macro").

`rollback_check(pairs, config)`: the probation after a promotion, the old champion in shadow of
the new one (the pairs' champion is the new champion, their challenger the old one). ROLL_BACK
as soon as the old one is significantly better: McNemar in its favour (p < alpha), or the CI of
Δmacro-F1 (old - new) above `macro_f1_margin`, i.e. the new one's CI upper bound below -margin.
KEEP when `probation_pairs` were seen without that; WAIT before, and below `rollback_min_pairs`.
Looking at every call inflates false rollbacks above alpha, on purpose: a false rollback brings
back a proven model, a missed one keeps a worse one serving.

Caveat for the report: the sender context features come from the champion's past decisions, so
the challenger is scored on champion-influenced features (LIFECYCLE.md, "Delayed and biased labels").

>>> sample_size(0.05, 0.12, one_sided=True)
295
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PROMOTE, REFUSE, WAIT = "PROMOTE", "REFUSE", "WAIT"
ROLL_BACK, KEEP = "ROLL_BACK", "KEEP"
CELLS_PER_CHUNK = 4_000_000  # resamples x documents held in memory at once by the bootstrap


@dataclass(frozen=True)
class JudgedPair:
    """One labelled shadow pair: both models' labels on one document, its true label, and how
    the challenger served it."""

    doc_id: str
    true_label: str
    champion_label: str
    challenger_label: str
    champion_latency_ms: float = 0.0
    challenger_latency_ms: float = 0.0
    challenger_fallback: bool = False  # the challenger missed its deadline: a fallback would have answered


@dataclass(frozen=True)
class JudgeConfig:
    """The rules, fixed before the sample is seen. Defaults: LIFECYCLE.md section 3."""

    min_pairs: int = 400  # labelled pairs judged (sample_size(0.05, 0.12, one_sided=True) = 295, plus room)
    alpha: float = 0.05  # McNemar, one-sided
    bootstrap: int = 2000  # paired resamples of the documents
    seed: int = 0
    ci_level: float = 0.95  # two-sided percentile intervals
    macro_f1_margin: float = 0.0  # the Δmacro-F1 CI must clear this
    class_min_support: int = 30  # classes with fewer true documents are not guarded (their F1 is too noisy)
    class_delta: float = 0.03  # a guarded class may lose at most this much F1 (CI lower bound)
    max_p99_latency_ms: float | None = None  # the challenger's p99 latency budget (None: none)
    max_latency_ratio: float | None = 1.5  # challenger p99 / champion p99 (None: no limit)
    max_fallback_rate: float = 0.01  # share of documents where the challenger missed its deadline
    probation_pairs: int = 400  # rollback_check: the probation window's sample
    rollback_min_pairs: int = 30  # rollback_check: no verdict on fewer pairs

    def __post_init__(self):
        if not (0 < self.alpha < 1 and 0 < self.ci_level < 1):
            raise ValueError(f"alpha and ci_level must be in (0, 1): {self}")
        if min(self.min_pairs, self.bootstrap, self.probation_pairs, self.rollback_min_pairs) < 1:
            raise ValueError(f"sample sizes and bootstrap resamples must be positive: {self}")


@dataclass(frozen=True)
class Verdict:
    """The decision, every rule that failed (or fired), and the figures it rests on (JSON-ready)."""

    decision: str  # PROMOTE | REFUSE | WAIT (judge); ROLL_BACK | KEEP | WAIT (rollback_check)
    reasons: tuple[str, ...]
    figures: dict

    def as_dict(self) -> dict:
        return {"decision": self.decision, "reasons": list(self.reasons), "figures": self.figures}


def judge(pairs: list[JudgedPair], config: JudgeConfig) -> Verdict:
    """Promote the challenger or refuse it, once `min_pairs` pairs are labelled (module docstring)."""
    if len(pairs) < config.min_pairs:
        return Verdict(WAIT, (f"{len(pairs)} of {config.min_pairs} labelled pairs",), {"n": len(pairs)})
    f = compare(pairs[:config.min_pairs], config)
    f["ignored"] = len(pairs) - config.min_pairs
    reasons = []
    if not f["mcnemar_p"] < config.alpha:
        reasons.append(f"McNemar: p = {f['mcnemar_p']:.4g} is not below alpha {config.alpha} (only the challenger right: {f['c']}, "
                       f"only the champion right: {f['b']})")
    macro = f["macro_f1"]
    if not macro["ci"][0] > config.macro_f1_margin:
        reasons.append(f"macro-F1: Δ {macro['delta']:+.4f}, {config.ci_level:.0%} CI [{macro['ci'][0]:+.4f}, {macro['ci'][1]:+.4f}] "
                       f"does not clear the margin {config.macro_f1_margin:+.4f}")
    for label, c in f["per_class"].items():
        if c["guarded"] and c["ci"][0] < -config.class_delta:
            reasons.append(f"class {label}: ΔF1 {c['delta']:+.4f}, CI [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] "
                           f"(support {c['support']}) may lose more than {config.class_delta}")
    latency = f["latency_ms"]
    if config.max_p99_latency_ms is not None and latency["challenger_p99"] > config.max_p99_latency_ms:
        reasons.append(f"latency: challenger p99 {latency['challenger_p99']:.3g} ms is over the budget of {config.max_p99_latency_ms} ms")
    if config.max_latency_ratio is not None and latency["ratio"] is not None and latency["ratio"] > config.max_latency_ratio:
        reasons.append(f"latency: challenger p99 / champion p99 = {latency['ratio']:.3g} is over {config.max_latency_ratio}")
    if f["fallback_rate"] > config.max_fallback_rate:
        reasons.append(f"fallbacks: the challenger missed its deadline on {f['fallback_rate']:.2%} of the documents "
                       f"(at most {config.max_fallback_rate:.2%})")
    return Verdict(REFUSE if reasons else PROMOTE, tuple(reasons), f)


def rollback_check(pairs: list[JudgedPair], config: JudgeConfig) -> Verdict:
    """During probation (champion: the new one, challenger: the old one): ROLL_BACK, KEEP or WAIT."""
    if len(pairs) < config.rollback_min_pairs:
        return Verdict(WAIT, (f"{len(pairs)} of at least {config.rollback_min_pairs} labelled pairs",), {"n": len(pairs)})
    f = compare(pairs[:config.probation_pairs], config)
    f["ignored"] = max(len(pairs) - config.probation_pairs, 0)
    fired = []
    if f["mcnemar_p"] < config.alpha:
        fired.append(f"McNemar: the old champion is right alone more often ({f['c']} against {f['b']}), p = {f['mcnemar_p']:.4g}")
    macro = f["macro_f1"]
    if macro["ci"][0] > config.macro_f1_margin:
        fired.append(f"macro-F1: the new champion's Δ {-macro['delta']:+.4f}, {config.ci_level:.0%} CI "
                     f"[{-macro['ci'][1]:+.4f}, {-macro['ci'][0]:+.4f}] is below {-config.macro_f1_margin:+.4f}")
    if fired:
        return Verdict(ROLL_BACK, tuple(fired), f)
    if f["n"] < config.probation_pairs:
        return Verdict(WAIT, (f"{f['n']} of {config.probation_pairs} labelled pairs, no significant loss yet",), f)
    return Verdict(KEEP, (), f)


def compare(pairs: list[JudgedPair], config: JudgeConfig) -> dict:
    """The paired figures of challenger against champion (JSON-ready): n, McNemar's b, c and
    one-sided p-value, each macro-F1 with the bootstrap CI of their difference, per class the
    same, the p99 latencies and the challenger's fallback rate."""
    from scipy.stats import binomtest  # here, not at the top: scipy.stats is ~85 MB that every `mailroom` command would hold
    doc_ids = [p.doc_id for p in pairs]
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("each document may be judged once: duplicate doc_ids among the pairs")
    labels = sorted({label for p in pairs for label in (p.true_label, p.champion_label, p.challenger_label)})
    index = {label: i for i, label in enumerate(labels)}
    truth, champion, challenger = (np.array([index[getattr(p, side)] for p in pairs]) for side in ("true_label", "champion_label",
                                                                                                     "challenger_label"))
    champion_right, challenger_right = champion == truth, challenger == truth
    b, c = int(np.sum(champion_right & ~challenger_right)), int(np.sum(challenger_right & ~champion_right))
    point = _per_class_f1(np.ones((1, len(pairs))), truth, champion, challenger, len(labels))
    resampled = _bootstrap(truth, champion, challenger, len(labels), config)
    low, high = (1 - config.ci_level) / 2, 1 - (1 - config.ci_level) / 2

    def interval(values: np.ndarray) -> list[float]:
        return [float(v) for v in np.quantile(values, [low, high])]

    support = np.bincount(truth, minlength=len(labels))
    per_class = {
        label: {"support": int(support[j]), "guarded": bool(support[j] >= config.class_min_support),
                "champion_f1": float(point.champion_f1[0, j]), "challenger_f1": float(point.challenger_f1[0, j]),
                "delta": float(point.challenger_f1[0, j] - point.champion_f1[0, j]),
                "ci": interval(resampled.challenger_f1[:, j] - resampled.champion_f1[:, j])}
        for j, label in enumerate(labels)
    }
    champion_p99, challenger_p99 = (float(np.percentile([getattr(p, side) for p in pairs], 99))
                                    for side in ("champion_latency_ms", "challenger_latency_ms"))
    return {
        "n": len(pairs), "b": b, "c": c, "mcnemar_p": float(binomtest(c, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0,
        "macro_f1": {"champion": float(point.champion_macro[0]), "challenger": float(point.challenger_macro[0]),
                     "delta": float(point.challenger_macro[0] - point.champion_macro[0]),
                     "ci": interval(resampled.challenger_macro - resampled.champion_macro)},
        "per_class": per_class,
        "latency_ms": {"champion_p99": champion_p99, "challenger_p99": challenger_p99,
                       "ratio": challenger_p99 / champion_p99 if champion_p99 > 0 else None},
        "fallback_rate": sum(p.challenger_fallback for p in pairs) / len(pairs),
        "config": asdict(config),
    }


def sample_size(delta: float, discordant_share: float, alpha: float = 0.05, power: float = 0.8, one_sided: bool = False) -> int:
    """Labelled pairs McNemar's test needs to detect an accuracy gain `delta` when a share
    `discordant_share` of documents gets one right answer of two (Connor 1987):
    n = [z_a * sqrt(psi) + z_b * sqrt(psi - delta**2)]**2 / delta**2, z_a = z(1 - alpha/2), or z(1 - alpha) one-sided."""
    if not 0 < delta**2 < discordant_share <= 1:
        raise ValueError(f"need 0 < delta**2 < discordant_share <= 1, not delta={delta}, discordant_share={discordant_share}")
    from scipy.stats import norm  # as in compare()

    z_alpha = norm.ppf(1 - alpha if one_sided else 1 - alpha / 2)
    z_beta = norm.ppf(power)
    return math.ceil((z_alpha * math.sqrt(discordant_share) + z_beta * math.sqrt(discordant_share - delta**2)) ** 2 / delta**2)


@dataclass
class _F1s:
    """Per-class F1 (resamples x labels) and macro-F1 (resamples) of both models."""

    champion_f1: np.ndarray
    challenger_f1: np.ndarray
    champion_macro: np.ndarray
    challenger_macro: np.ndarray


def _per_class_f1(weights: np.ndarray, truth: np.ndarray, champion: np.ndarray, challenger: np.ndarray, n_labels: int) -> _F1s:
    """F1s on resamples given as document weights (resamples x documents: how often each document
    was drawn). A label is in a model's macro-F1 when it is true or predicted in the resample."""
    true_onehot = np.eye(n_labels)[truth]
    true_counts = weights @ true_onehot
    out = []
    for predicted in (champion, challenger):
        predicted_onehot = np.eye(n_labels)[predicted]
        predicted_counts, hits = weights @ predicted_onehot, weights @ (true_onehot * predicted_onehot)
        present = true_counts + predicted_counts > 0
        f1 = np.divide(2 * hits, true_counts + predicted_counts, out=np.zeros_like(hits), where=present)
        out += [f1, (f1 * present).sum(axis=1) / present.sum(axis=1)]
    return _F1s(out[0], out[2], out[1], out[3])


def _bootstrap(truth: np.ndarray, champion: np.ndarray, challenger: np.ndarray, n_labels: int, config: JudgeConfig) -> _F1s:
    """F1s on `config.bootstrap` paired resamples of the documents (seeded: the same pairs give the same figures)."""
    rng = np.random.default_rng(config.seed)
    n = len(truth)
    chunks = []
    for start in range(0, config.bootstrap, max(1, CELLS_PER_CHUNK // n)):
        size = min(max(1, CELLS_PER_CHUNK // n), config.bootstrap - start)
        drawn = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        chunks.append(_per_class_f1(weights, truth, champion, challenger, n_labels))
    return _F1s(*(np.concatenate([getattr(chunk, name) for chunk in chunks]) for name in
                  ("champion_f1", "challenger_f1", "champion_macro", "challenger_macro")))
