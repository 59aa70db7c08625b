"""The scoring job's plain logic: per-sender features, micro-batched ONNX scoring, routing
predictions to departments. No pyflink here; udfs/adapters/scoring.py adapts it to Flink.

    routed document --(key: sender)--> SenderFeatures.observe --(key: shard)--> buffer
        --(MicroBatcher: size or timer)--> BatchScorer.score_isolating --> prediction --> department topic + log
                                                          +--> a document the model fails on --> dead letter

A sender silent for `sender_idle_ms` is forgotten (`IdleSenderRule`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.labels import DEPARTMENTS, TRIAGE
from schemas.redis_keys import FEATURES_NAMESPACE
from schemas.units import DAY_MS, DAY_S
from models.image_features import image_features
from models.registry import ModelRef, Registry
from models.scoring import Scorer, check_feature_set
from schemas import codec
from udfs.dead_letters import SourceRecord
from udfs.feature_cache import FeatureMirror
from models.features import FEATURE_SET_ID, SENDER_FEATURES, SenderHistory, model_text

SCORING_VERSION = "1.1.0"  # written into the scoring job's dead letters; bump when its rules change


@dataclass(frozen=True)
class ScoringConfig:
    """What the scoring job needs; resolved on the client, then pickled into every worker."""

    text_model: ModelRef
    image_model: ModelRef
    triage_threshold: float = 0.6  # below this top probability a document goes to triage (0.6: the model card's triage table)
    batch_size: int = 256  # score when a shard's buffer holds this many documents ...
    max_batch_delay_ms: int = 200  # ... or when its oldest document waited this long
    sender_state_ttl_ms: int = 7 * DAY_MS  # a sender's state expires after a week without writes
    sender_idle_ms: int = 2 * DAY_MS  # a timer clears a sender silent this long
    redis_namespace: str = FEATURES_NAMESPACE
    redis_ttl_s: int = 2 * DAY_S  # every mirrored key expires
    max_failures_per_minute: int = 100  # records dead-lettered for a processing error; more fail the job

    @classmethod
    def from_registry(cls, registry_dir, **overrides) -> "ScoringConfig":
        """The champions of the registry; raises FeatureSetMismatch for a model trained on
        another feature set, RegistryError when a kind has no champion."""
        registry = Registry(registry_dir)
        config = cls(text_model=registry.champion("text"), image_model=registry.champion("image"), **overrides)
        for model in (config.text_model, config.image_model):
            check_feature_set(model)
        return config


@dataclass(frozen=True)
class IdleSenderRule:
    """A sender silent for `idle_ms` is forgotten. One timer per sender is outstanding at a
    time: set at its first document, and on firing moved on to `idle_ms` after the latest one.

    >>> rule = IdleSenderRule(idle_ms=100)
    >>> rule.timer_for_new_document(touched_ms=None, now_ms=0)   # no timer yet: set one
    100
    >>> rule.timer_for_new_document(touched_ms=0, now_ms=50) is None
    True
    >>> rule.on_timer(touched_ms=50, timer_ms=100)              # not idle long enough: re-arm
    150
    >>> rule.on_timer(touched_ms=50, timer_ms=150) is None      # idle: forget the sender
    True
    """

    idle_ms: int

    def timer_for_new_document(self, touched_ms: int | None, now_ms: int) -> int | None:
        """When a document arrives: the timer to register (None: one is already set)."""
        return now_ms + self.idle_ms if touched_ms is None else None

    def on_timer(self, touched_ms: int | None, timer_ms: int) -> int | None:
        """When the timer fires: the next timer, or None when the sender is idle (forget it)."""
        if touched_ms is not None and timer_ms - touched_ms < self.idle_ms:
            return touched_ms + self.idle_ms
        return None


@dataclass
class PendingDocument:
    """A document waiting in a batch buffer, with its sender features."""

    doc_id: str
    sender: str
    content_type: str  # TEXT | IMAGE
    text: str | None  # the model text (subject + body), for TEXT
    image_features: np.ndarray | None  # layout features of the cleaned scan, for IMAGE (not the PNG: small to buffer)
    received_ms: int
    features: list[float]
    source: SourceRecord  # the routed record as read: what a dead letter carries if scoring it fails


class SenderFeatures:
    """Computes a document's sender features from the sender's history; mirrors to Redis."""

    def __init__(self, mirror: FeatureMirror | None):
        self.mirror = mirror

    def warm_start(self, sender: str) -> SenderHistory:
        """A new history, or the one the Redis cache holds for a sender we have no state for."""
        cached = self.mirror.fetch(sender) if self.mirror else None
        if cached and cached.get("feature_set_id") == FEATURE_SET_ID:
            return SenderHistory.from_redis_mapping(cached)
        return SenderHistory()

    def observe(self, history: SenderHistory, routed: dict, source: SourceRecord) -> PendingDocument:
        """The document with its features. What can fail on bad content (the scan's layout
        features) runs first, so a document that raises leaves the sender's history untouched."""
        is_scan = routed["content_type"] == "IMAGE"
        text = None if is_scan else model_text(routed["subject"], routed["text"])
        layout = image_features(routed["image"]) if is_scan else None
        features = history.observe(routed["received_ms"], is_scan)
        if self.mirror:  # the history (to pre-warm) and the features of the sender's latest document
            mapping = history.to_redis_mapping()
            mapping.update({name: repr(value) for name, value in zip(SENDER_FEATURES, features)})
            self.mirror.put(routed["sender"], mapping)
        return PendingDocument(
            doc_id=routed["doc_id"],
            sender=routed["sender"],
            content_type=routed["content_type"],
            text=text,
            image_features=layout,
            received_ms=routed["received_ms"],
            features=features,
            source=source,
        )


class BatchScorer:
    """Scores a micro-batch with one onnxruntime call per model; returns prediction records."""

    def __init__(self, config: ScoringConfig):
        self.config = config
        self.text = Scorer(config.text_model)
        self.image = Scorer(config.image_model)

    def score_isolating(self, batch: list[PendingDocument], now_ms: int) -> tuple[list[tuple[str, bytes]], list[tuple[PendingDocument, Exception]]]:
        """Score the batch; when a model call raises, split the batch in halves until the
        documents it fails on are found. Returns the scored (department, prediction) pairs in
        batch order and the (document, exception) pairs that no model call could score."""
        try:
            return self.score(batch, now_ms), []
        except Exception as exc:  # onnxruntime raises its own types; any of them fails only this batch
            if len(batch) == 1:
                return [], [(batch[0], exc)]
        half = len(batch) // 2
        scored_a, failed_a = self.score_isolating(batch[:half], now_ms)
        scored_b, failed_b = self.score_isolating(batch[half:], now_ms)
        return scored_a + scored_b, failed_a + failed_b

    def score(self, batch: list[PendingDocument], now_ms: int) -> list[tuple[str, bytes]]:
        """(department, encoded prediction) for every document of the batch, in batch order."""
        out: list[tuple[str, bytes] | None] = [None] * len(batch)
        for scorer, content_type in ((self.text, "TEXT"), (self.image, "IMAGE")):
            index = [i for i, doc in enumerate(batch) if doc.content_type == content_type]
            if not index:
                continue
            context = np.array([batch[i].features for i in index], dtype=np.float32)
            if content_type == "TEXT":
                labels, probabilities = scorer.score_texts([batch[i].text for i in index], context)
            else:
                labels, probabilities = scorer.score_images([batch[i].image_features for i in index], context)
            for i, label, probs in zip(index, labels, probabilities):
                out[i] = self._prediction(batch[i], scorer, label, probs, now_ms)
        return out

    def _prediction(self, doc: PendingDocument, scorer: Scorer, label: str, probs: np.ndarray, now_ms: int) -> tuple[str, bytes]:
        top = float(np.max(probs))
        department = DEPARTMENTS[label] if top >= self.config.triage_threshold else TRIAGE
        record = {
            "doc_id": doc.doc_id,
            "sender": doc.sender,
            "content_type": doc.content_type,
            "label": label,
            "probabilities": {name: float(p) for name, p in zip(scorer.labels, probs)},
            "model_name": f"mailroom-{scorer.kind}",
            "model_version": str(scorer.version),
            "feature_set_id": FEATURE_SET_ID,
            "department": department,
            "received_ms": doc.received_ms,
            "scored_ms": now_ms,
            "latency_ms": max(0, now_ms - doc.received_ms),
            "features": dict(zip(SENDER_FEATURES, doc.features)),
        }
        return department, codec.encode("prediction", record)
