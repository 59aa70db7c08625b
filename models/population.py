"""The monitored inputs of the models, their bins, and the population stability index (PSI).

Plain Python. Training stores each model's reference shares per feature and bin in its card
(`population`, from `reference`); the scoring job counts live documents per bin (the
POPULATION metric); a dashboard compares the two with `psi`.

    text_length             characters of the model text (log-spaced edges; no text: not counted)
    sender_seen             documents seen from the sender before this one
    sender_docs_24h         documents from the sender in the 24 hours before this one
    sender_top_label_share  the largest of the sender's recent label shares (how one-sided it is)
    label                   the label (true at training, decided in serving): bins are the labels
    content_type            TEXT | IMAGE: bins are the types

>>> bin_of("text_length", 250), bin_of("sender_seen", 0), bin_of("sender_top_label_share", 1.0)
('100-300', '0-1', '0.75-1')
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from models.features import SENDER_FEATURES

EDGES: dict[str, tuple[float, ...]] = {  # lower edges; a value falls in [edge, next edge), the last bin is open
    "text_length": (0, 100, 300, 1_000, 3_000, 10_000),
    "sender_seen": (0, 1, 3, 10, 30, 100, 300),
    "sender_docs_24h": (0, 1, 3, 10, 30, 100),
    "sender_top_label_share": (0, 0.25, 0.5, 0.75),
}
LAST_CLOSED = {"sender_top_label_share": 1}  # features whose last bin has an upper edge (shares end at 1)
CATEGORICAL = ("label", "content_type")  # their value is their bin
FEATURES = (*EDGES, *CATEGORICAL)
EPSILON = 1e-4  # the share an empty bin counts as in `psi`


def _edge(value: float) -> str:
    return f"{value:g}"


def bins(feature: str) -> list[str]:
    """The bin labels of a binned feature, in order.

    >>> bins("sender_docs_24h")
    ['0-1', '1-3', '3-10', '10-30', '30-100', '100+']
    """
    edges = EDGES[feature]
    upper = [*(_edge(e) for e in edges[1:]), _edge(LAST_CLOSED[feature]) if feature in LAST_CLOSED else None]
    return [f"{_edge(lo)}-{hi}" if hi is not None else f"{_edge(lo)}+" for lo, hi in zip(edges, upper)]


def bin_of(feature: str, value) -> str:
    """The bin label of `value` for `feature` (below the first edge: the first bin)."""
    if feature in CATEGORICAL:
        return str(value)
    index = max(0, bisect.bisect_right(EDGES[feature], value) - 1)
    return bins(feature)[index]


def monitored(text: str | None, context: Sequence[float]) -> dict[str, float]:
    """The binned inputs of one document: its model text (None: no text) and its sender
    features (`models.features.SENDER_FEATURES` order)."""
    features = dict(zip(SENDER_FEATURES, context))
    shares = [v for name, v in features.items() if name.startswith("sender_label_share_")]
    values = {"sender_seen": round(math.expm1(features["sender_seen_log"])), "sender_docs_24h": features["sender_docs_24h"],
              "sender_top_label_share": max(shares, default=0.0)}
    if text is not None:
        values["text_length"] = len(text)
    return values


def binned(text: str | None, context: Sequence[float]) -> dict[str, str]:
    """feature -> bin label of one document's monitored inputs."""
    return {feature: bin_of(feature, value) for feature, value in monitored(text, context).items()}


def reference(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """feature -> bin -> share of the rows (each a mapping feature -> value; a feature a row
    lacks is not counted for it), rounded to 6 places, bins in order.

    >>> reference([{"label": "invoice"}, {"label": "invoice"}, {"label": "cv", "text_length": 50}])
    {'label': {'cv': 0.333333, 'invoice': 0.666667}, 'text_length': {'0-100': 1.0}}
    """
    counts: dict[str, Counter] = {}
    for row in rows:
        for feature, value in row.items():
            counts.setdefault(feature, Counter())[bin_of(feature, value)] += 1
    out = {}
    for feature in sorted(counts):
        total = sum(counts[feature].values())
        order = bins(feature) if feature in EDGES else sorted(counts[feature])
        out[feature] = {b: round(counts[feature][b] / total, 6) for b in order if counts[feature][b]}
    return out


def psi(reference_shares: Mapping[str, float], live_counts: Mapping[str, float]) -> float:
    """Population stability index of the live counts per bin against the reference shares:
    sum over bins of (live - ref) * ln(live / ref), an empty bin counting as EPSILON.
    The usual reading: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a shift
    worth acting on. NaN when there are no live counts.

    >>> psi({"a": 0.5, "b": 0.5}, {"a": 50, "b": 50})
    0.0
    >>> round(psi({"a": 0.5, "b": 0.5}, {"a": 90, "b": 10}), 3)
    0.879
    """
    total = sum(live_counts.values())
    if total <= 0:
        return math.nan
    value = 0.0
    for b in set(reference_shares) | set(live_counts):
        expected = max(reference_shares.get(b, 0.0), EPSILON)
        actual = max(live_counts.get(b, 0) / total, EPSILON)
        value += (actual - expected) * math.log(actual / expected)
    return value
