"""The scoring job's plain logic: per-sender features, micro-batched ONNX scoring, routing
predictions to departments. No pyflink here; udfs/functions.py adapts it to Flink.

    routed document --(key: sender)--> SenderFeatures.observe --(key: shard)--> buffer
        --(size or timer)--> BatchScorer.score --> prediction --> department topic + log
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.labels import DEPARTMENTS
from schemas.redis_keys import FEATURES_NAMESPACE
from schemas.units import DAY_MS, DAY_S
from models.image_features import image_features
from models.registry import ModelRef, Registry
from models.scoring import Scorer
from schemas import codec
from udfs.feature_cache import FeatureMirror
from models.features import FEATURE_SET_ID, SENDER_FEATURES, SenderHistory, model_text

TRIAGE = DEPARTMENTS["other"]


@dataclass(frozen=True)
class ScoringConfig:
    """What the scoring job needs; resolved on the client, then pickled into every worker."""

    text_model: ModelRef
    image_model: ModelRef
    triage_threshold: float = 0.5  # below this top probability a document goes to triage
    batch_size: int = 256  # score when a shard's buffer holds this many documents ...
    max_batch_delay_ms: int = 200  # ... or when its oldest document waited this long
    sender_state_ttl_ms: int = 7 * DAY_MS  # a sender's state expires after a week without writes
    sender_idle_ms: int = 2 * DAY_MS  # a timer clears a sender silent this long
    redis_namespace: str = FEATURES_NAMESPACE
    redis_ttl_s: int = 2 * DAY_S  # every mirrored key expires

    @classmethod
    def from_registry(cls, registry_dir, **overrides) -> "ScoringConfig":
        """The champions of the registry; refuses models trained on another feature set."""
        registry = Registry(registry_dir)
        config = cls(text_model=registry.champion("text"), image_model=registry.champion("image"), **overrides)
        config.check_feature_sets()
        return config

    def check_feature_sets(self) -> None:
        for model in (self.text_model, self.image_model):
            trained_on = model.card.get("feature_set_id")
            if trained_on != FEATURE_SET_ID:
                raise SystemExit(
                    f"Refusing to start: the {model.kind} model v{model.version} ({model.onnx_path}) was trained with feature set "
                    f"{trained_on!r}, but this code computes {FEATURE_SET_ID!r}. Retrain (`mailroom train`) or promote a model "
                    f"trained with {FEATURE_SET_ID!r} (`mailroom models list`)."
                )


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

    def observe(self, history: SenderHistory, routed: dict) -> PendingDocument:
        is_scan = routed["content_type"] == "IMAGE"
        features = history.observe(routed["received_ms"], is_scan)
        if self.mirror:  # the history (to pre-warm) and the features of the sender's latest document
            mapping = history.to_redis_mapping()
            mapping.update({name: repr(value) for name, value in zip(SENDER_FEATURES, features)})
            self.mirror.put(routed["sender"], mapping)
        return PendingDocument(
            doc_id=routed["doc_id"],
            sender=routed["sender"],
            content_type=routed["content_type"],
            text=None if is_scan else model_text(routed["subject"], routed["text"]),
            image_features=image_features(routed["image"]) if is_scan else None,
            received_ms=routed["received_ms"],
            features=features,
        )


class BatchScorer:
    """Scores a micro-batch with one onnxruntime call per model; returns prediction records."""

    def __init__(self, config: ScoringConfig):
        self.config = config
        self.text = Scorer(config.text_model)
        self.image = Scorer(config.image_model)

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
