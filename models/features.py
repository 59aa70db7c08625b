"""Per-sender context features and the text normalisation shared by training and serving.

Pure Python (no pyflink): the streaming job keeps one `SenderHistory` per sender in Flink keyed
state and calls exactly `observe` and `record_label`; training replays documents in receipt
order through the same class. The features are agreed here, once, and versioned by
`FEATURE_SET_ID`: a model card names the id it was trained with and the scorer refuses a model
whose id differs. Change the list or the maths -> bump the id.

During training `record_label` gets the true label; in serving it gets the label the model
decided (or a confirmed one, when known), so `sender_label_share_*` reflects past predictions.

>>> h = SenderHistory()
>>> h.observe(0, is_scan=False)[:5]          # nothing known before the first document
[0.0, 0.0, 0.0, 0.0, 0.0]
>>> h.record_label("invoice")
>>> f = dict(zip(SENDER_FEATURES, h.observe(60_000, is_scan=True)))
>>> f["sender_docs_1h"], f["sender_label_share_invoice"]
(1.0, 1.0)
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import deque
from dataclasses import dataclass, field

from schemas.labels import LABELS
from schemas.units import DAY_MS, HOUR_MS

FEATURE_SET_ID = "sender-v1"

MAX_RECENT = 1000  # timestamps kept per sender; docs_1h/docs_24h saturate here
LABEL_MEMORY = 20  # the last labels a sender's label shares are computed over

SENDER_FEATURES: tuple[str, ...] = (
    "sender_docs_1h",  # documents from this sender in the hour before this one
    "sender_docs_24h",  # ... in the 24 hours before this one
    "sender_seen_log",  # log1p(all documents seen from this sender before)
    "sender_gap_log_s",  # log1p(seconds since the sender's previous document); 0 if none
    "sender_scan_share",  # share of the sender's previous documents that were scans
    *(f"sender_label_share_{label}" for label in LABELS),  # over the last LABEL_MEMORY labels
)

MAX_TEXT_CHARS = 20_000
_DIGITS = re.compile(r"\d+")
_MASK = re.compile(r"\bx{2,}\b")


def normalise_text(text: str) -> str:
    """Lower-case, NFC, digits and masks (runs of x, as in "XX/XX/XXXX") removed, whitespace
    collapsed, cut to MAX_TEXT_CHARS. Idempotent.

    Digits and masks say more about where a text comes from (OCRed page numbers and codes,
    redacted complaint databases) than about what kind of document it is. The ONNX graph
    tokenises what this returns, so it must run before training and scoring alike
    (`Scorer.score_texts` applies it; training goes through `model_text`).

    >>> normalise_text("On XX/XX/XXXX I paid  $75 for INVOICE 2024/17")
    'on / / i paid $ for invoice /'
    """
    text = _DIGITS.sub(" ", unicodedata.normalize("NFC", text.lower()))
    return " ".join(_MASK.sub(" ", text).split())[:MAX_TEXT_CHARS].rstrip()


def model_text(subject: str | None, body: str | None) -> str:
    """The one string a text model sees for a document: subject and body, normalised."""
    return normalise_text(f"{subject or ''}\n{body or ''}")


@dataclass
class SenderHistory:
    """What we remember about one sender. Plain data, picklable; versioned by FEATURE_SET_ID."""

    recent_ms: deque = field(default_factory=lambda: deque(maxlen=MAX_RECENT))
    last_ms: int | None = None
    docs: int = 0
    scans: int = 0
    labels: deque = field(default_factory=lambda: deque(maxlen=LABEL_MEMORY))

    def observe(self, received_ms: int, is_scan: bool) -> list[float]:
        """Features for a new document (in SENDER_FEATURES order) from the history before it,
        then remember the document. Late (out-of-order) documents count as a zero gap."""
        features = self._features(received_ms)
        self.recent_ms.append(received_ms)
        newest = max(self.recent_ms)
        while self.recent_ms and self.recent_ms[0] < newest - DAY_MS:
            self.recent_ms.popleft()
        self.last_ms = received_ms if self.last_ms is None else max(self.last_ms, received_ms)
        self.docs += 1
        self.scans += int(is_scan)
        return features

    def record_label(self, label: str) -> None:
        """Remember the label decided for the document last observed."""
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
        self.labels.append(label)

    def _features(self, received_ms: int) -> list[float]:
        in_1h = sum(1 for t in self.recent_ms if received_ms - HOUR_MS <= t <= received_ms)
        in_24h = sum(1 for t in self.recent_ms if received_ms - DAY_MS <= t <= received_ms)
        gap_s = 0.0 if self.last_ms is None else max(0, received_ms - self.last_ms) / 1000
        scan_share = self.scans / self.docs if self.docs else 0.0
        n_labels = len(self.labels)
        shares = [(self.labels.count(label) / n_labels) if n_labels else 0.0 for label in LABELS]
        return [float(in_1h), float(in_24h), math.log1p(self.docs), math.log1p(gap_s), scan_share, *shares]

    def to_redis_mapping(self) -> dict[str, str]:
        """A flat str->str mapping (for Redis HSET), tagged with FEATURE_SET_ID."""
        return {
            "feature_set_id": FEATURE_SET_ID,
            "recent_ms": ",".join(str(t) for t in self.recent_ms),
            "last_ms": "" if self.last_ms is None else str(self.last_ms),
            "docs": str(self.docs),
            "scans": str(self.scans),
            "labels": ",".join(self.labels),
        }

    @classmethod
    def from_redis_mapping(cls, mapping: dict) -> "SenderHistory":
        """Inverse of to_redis_mapping; accepts the bytes keys/values redis-py returns."""
        m = {_str(k): _str(v) for k, v in mapping.items()}
        if m.get("feature_set_id") != FEATURE_SET_ID:
            raise ValueError(f"sender history was written for feature set {m.get('feature_set_id')!r}, "
                             f"this code computes {FEATURE_SET_ID!r}; rebuild the history")
        history = cls(docs=int(m["docs"]), scans=int(m["scans"]),
                      last_ms=int(m["last_ms"]) if m["last_ms"] else None)
        history.recent_ms.extend(int(t) for t in m["recent_ms"].split(",") if t)
        history.labels.extend(label for label in m["labels"].split(",") if label)
        return history


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
