"""The scoring job's plain logic: per-sender features, micro-batched ONNX scoring, delivering
documents to departments. No pyflink here; udfs/adapters/scoring.py adapts it to Flink.

    routed scan --ScanReader (udfs.reading)--> layout features + OCR reading --+
    routed text ---------------------------------------------------------------+--(key: sender)--> SenderFeatures.observe
        --(key: shard)--> buffer --(MicroBatcher: size or timer)--> BatchScorer.score_isolating
        --> department_document (the document + the decision) --> department topic
        --> prediction --> predictions log;   a document the model fails on --> dead letter

Three model kinds decide: text documents by the text model, scans that were read by the scan
model (OCR text + layout + sender context), scans that were not (late, over budget, illegible)
by the image model (layout + sender context), and the record says why.

A sender silent for `sender_idle_ms` is forgotten (`IdleSenderRule`).
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from schemas.labels import DEPARTMENTS, TRIAGE
from schemas.redis_keys import FEATURES_NAMESPACE
from schemas.units import DAY_MS, DAY_S
from models.image_features import image_features
from models.ocr import OFF, READ, OcrConfig, Reading, not_read
from models.registry import ModelRef, Registry
from models.scoring import Scorer, check_feature_set
from schemas import codec
from udfs.dead_letters import SourceRecord
from udfs.deadline import Deadline, MissedDeadline
from udfs.feature_cache import FeatureMirror
from udfs.model_slots import ModelSlots
from udfs.reading import ReadScan
from models.features import FEATURE_SET_ID, SENDER_FEATURES, SenderHistory, model_text

SCORING_VERSION = "1.2.0"  # written into the scoring job's dead letters; bump when its rules change
DECIDING_SLOTS = ("champion", "fallback", "prior")  # who decides a document: the champion, the previous model past the deadline, the label prior


@dataclass(frozen=True)
class ScoringConfig:
    """What the scoring job needs; resolved on the client, then pickled into every worker."""

    text_model: ModelRef
    image_model: ModelRef  # the layout-only model: decides the scans OCR did not read
    scan_model: ModelRef  # decides the scans OCR read
    # below this top probability a scan goes to triage (the scan and layout models). 0.7: the lowest threshold of the text model's
    # triage table at which the held-out wrong-department share was at most 3% before issue 17's vote (kept for the scan models)
    triage_threshold: float = 0.7
    # ... and a text document (the text model, `models.ensemble.RobustVote`). 0.9: the lowest threshold of its card's triage table at
    # which at most 3% of automatically routed documents go to the wrong department on the held-out side and on every left-out real
    # source (default training, seed 7: held out 1.7% for 43% routed automatically; at 0.8 an unseen source's invoices were 6.8%)
    text_triage_threshold: float = 0.9
    batch_size: int = 256  # score when a shard's buffer holds this many documents ...
    # ... or when its oldest document waited this long. 20 ms: at half load 200 ms put 392 ms on the median and 20 ms took
    # 65 ms, at the same rate (`mailroom bench --variants mailroom-at-least-once --buffer-timeout-ms 100 10
    # --max-batch-delay-ms 200 20`, 2026-12-02); a batch's onnxruntime call costs well under a millisecond
    max_batch_delay_ms: int = 20
    sender_state_ttl_ms: int = 7 * DAY_MS  # a sender's state expires after a week without writes
    sender_idle_ms: int = 2 * DAY_MS  # a timer clears a sender silent this long
    redis_namespace: str = FEATURES_NAMESPACE
    redis_ttl_s: int = 2 * DAY_S  # every mirrored key expires
    max_failures_per_minute: int = 100  # records dead-lettered for a processing error; more fail the job
    deadline_ms: int = 1_000  # a champion's run on one micro-batch; past it the PREVIOUS model (or the prior) decides
    ocr: OcrConfig = OcrConfig()
    read_scans: bool = True  # False: no OCR, the layout model decides every scan (the fallback-only path)
    ocr_cache_dir: str | None = None  # page texts by content hash, shared with training (None: no cache)

    def threshold(self, kind: str) -> float:
        """The triage threshold of a model kind: `text_triage_threshold` for the text model, `triage_threshold` for the others."""
        return self.text_triage_threshold if kind == "text" else self.triage_threshold

    @classmethod
    def from_registry(cls, registry_dir, **overrides) -> "ScoringConfig":
        """The champions of the registry; raises FeatureSetMismatch for a model trained on
        another feature set, RegistryError when a kind has no champion."""
        registry = Registry(registry_dir)
        config = cls(text_model=registry.champion("text"), image_model=registry.champion("image"), scan_model=registry.champion("scan"),
                     **overrides)
        for model in (config.text_model, config.image_model, config.scan_model):
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
    text: str | None  # the model text (subject + body), for TEXT; the OCR text, for a scan that was read
    image_features: np.ndarray | None  # layout features of the cleaned scan, for IMAGE (not the PNG: small to buffer)
    received_ms: int
    features: list[float]
    source: SourceRecord  # the routed record as read: what a dead letter carries, and what the department receives
    reading: Reading | None = None  # for IMAGE: what OCR read (READ: the scan model decides; otherwise the layout model)

    @property
    def kind(self) -> str:
        """The model kind that decides this document."""
        if self.content_type == "TEXT":
            return "text"
        return "scan" if self.reading is not None and self.reading.status == READ else "image"


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

    def observe(self, history: SenderHistory, routed: dict, source: SourceRecord, scan: ReadScan | None = None) -> PendingDocument:
        """The document with its features; `scan`: what `udfs.reading.ScanReader` read of a scan
        (None: the layout features are computed here and the scan counts as not read). What can
        fail on bad content (the layout features) runs first, so a document that raises leaves
        the sender's history untouched."""
        is_scan = routed["content_type"] == "IMAGE"
        if is_scan and scan is None:
            scan = ReadScan(image_features(routed["image"]), not_read(OFF, 1 + len(routed.get("pages", [])), "none", "the scan was not read"))
        reading = scan.reading if is_scan else None
        if not is_scan:
            text = model_text(routed["subject"], routed["text"])
        else:
            text = reading.text if reading.status == READ else None
        layout = scan.layout if is_scan else None
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
            reading=reading,
        )


def in_shadow_sample(doc_id: str, share: float) -> bool:
    """Whether a challenger scores `doc_id` in shadow: the same answer on every subtask and run.

    >>> in_shadow_sample("d1", 1.0), in_shadow_sample("d1", 0.0)
    (True, False)
    """
    return zlib.crc32(doc_id.encode()) < share * 2**32


@dataclass(frozen=True)
class Decision:
    """What was decided for one document, for the operator's metrics (`udfs.operator_metrics.batch_counts`)."""

    doc: PendingDocument
    kind: str
    slot: str  # champion | fallback | prior
    label: str
    department: str


@dataclass
class ScoredBatch:
    """What scoring a micro-batch gives: (department, department_document, prediction) in batch
    order, the paired shadow records of the sampled documents, and the documents no model call
    could score; for the metrics, the decisions in batch order and the shadow pairs (and
    disagreements between challenger and champion) by kind."""

    predictions: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    shadows: list[bytes] = field(default_factory=list)
    failed: list[tuple[PendingDocument, Exception]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    shadow_pairs: Counter = field(default_factory=Counter)
    shadow_disagreements: Counter = field(default_factory=Counter)

    def __add__(self, other: "ScoredBatch") -> "ScoredBatch":
        return ScoredBatch(self.predictions + other.predictions, self.shadows + other.shadows, self.failed + other.failed,
                           self.decisions + other.decisions, self.shadow_pairs + other.shadow_pairs,
                           self.shadow_disagreements + other.shadow_disagreements)


class BatchScorer:
    """Scores a micro-batch with one onnxruntime call per model kind (the champion of `slots`)
    and, for the documents in the challenger's sample, one more call by the challenger.

    "Better wrong than late": the champion's call gets `config.deadline_ms`; when it runs over,
    it is terminated and the PREVIOUS model decides the batch (slot "fallback"), or, with none,
    the label prior (slot "prior": no label is likelier than another, so the batch goes to triage)."""

    def __init__(self, config: ScoringConfig, slots: ModelSlots | None = None):
        self.config = config
        self.slots = slots or ModelSlots({"text": Scorer(config.text_model), "scan": Scorer(config.scan_model), "image": Scorer(config.image_model)},
                                         load=Scorer.from_pointer)
        self.deadline = Deadline(config.deadline_ms)

    def score_isolating(self, batch: list[PendingDocument], now_ms: int) -> ScoredBatch:
        """Score the batch; when a model call raises, split the batch in halves until the
        documents it fails on are found (`ScoredBatch.failed`); the others are scored."""
        try:
            return self.score(batch, now_ms)
        except Exception as exc:  # onnxruntime raises its own types; any of them fails only this batch
            if len(batch) == 1:
                return ScoredBatch(failed=[(batch[0], exc)])
        half = len(batch) // 2
        return self.score_isolating(batch[:half], now_ms) + self.score_isolating(batch[half:], now_ms)

    def score(self, batch: list[PendingDocument], now_ms: int) -> ScoredBatch:
        """Predictions for every document of the batch, in batch order, and the shadow pairs."""
        out: list[tuple[str, bytes, bytes] | None] = [None] * len(batch)
        decisions: list[Decision | None] = [None] * len(batch)
        scored = ScoredBatch()
        for kind in ("text", "scan", "image"):
            index = [i for i, doc in enumerate(batch) if doc.kind == kind]
            if not index:
                continue
            docs, champion = [batch[i] for i in index], self.slots.serving(kind)
            try:
                labels, probabilities, champion_ms = self.deadline.call(lambda options: _timed_run(champion, docs, options))
                decider, slot, reason = champion, "champion", None
            except MissedDeadline as missed:
                decider, slot, labels, probabilities = self._fallback(kind, champion, docs)
                reason = f"{champion.name} v{champion.version} {missed}"
            for i, label, probs in zip(index, labels, probabilities):
                out[i] = self._decided(batch[i], decider, label, probs, now_ms, slot, reason)
                decisions[i] = Decision(batch[i], kind, slot, label, out[i][0])
            if slot == "champion":
                shadows, disagreements = self._shadow(kind, docs, champion, labels, probabilities, champion_ms, now_ms)
                scored.shadows += shadows
                if shadows:
                    scored.shadow_pairs[kind] += len(shadows)
                    scored.shadow_disagreements[kind] += disagreements
        scored.predictions, scored.decisions = out, decisions
        return scored

    def _fallback(self, kind: str, champion, docs: list[PendingDocument]):
        """(decider, slot, labels, probabilities) when the champion missed its deadline."""
        previous = self.slots.serving(kind, "PREVIOUS")
        if previous is not None:
            labels, probabilities, _ = _timed_run(previous, docs)
            return previous, "fallback", labels, probabilities
        prior = np.full((len(docs), len(champion.labels)), 1 / len(champion.labels), dtype=np.float32)
        label = "other" if "other" in champion.labels else champion.labels[0]
        return champion, "prior", [label] * len(docs), prior

    def _shadow(self, kind: str, docs: list[PendingDocument], champion, labels, probabilities, champion_ms: float, now_ms: int) -> tuple[list[bytes], int]:
        """The challenger of `kind` on its sample of `docs`, paired with the champion's answers,
        and how many of the pairs disagree."""
        challenger, pointer = self.slots.serving(kind, "CHALLENGER"), self.slots.pointer(kind, "CHALLENGER")
        if challenger is None:
            return [], 0
        sampled = [j for j, doc in enumerate(docs) if in_shadow_sample(doc.doc_id, pointer.shadow_sample)]
        if not sampled:
            return [], 0
        their_labels, their_probabilities, challenger_ms = _timed_run(challenger, [docs[j] for j in sampled])
        disagreements = sum(label != labels[j] for j, label in zip(sampled, their_labels))
        return [codec.encode("shadow_prediction", {
            "doc_id": docs[j].doc_id, "kind": kind, "received_ms": docs[j].received_ms, "scored_ms": now_ms,
            "champion_model": champion.name, "champion_version": champion.version, "champion_label": labels[j],
            "champion_probabilities": _by_label(champion.labels, probabilities[j]), "champion_latency_ms": champion_ms,
            "challenger_model": challenger.name, "challenger_version": challenger.version, "challenger_label": label,
            "challenger_probabilities": _by_label(challenger.labels, probs), "challenger_latency_ms": challenger_ms,
        }) for j, label, probs in zip(sampled, their_labels, their_probabilities)], disagreements

    def _decided(self, doc: PendingDocument, scorer: Scorer, label: str, probs: np.ndarray, now_ms: int, slot: str = "champion",
                 fallback_reason: str | None = None) -> tuple[str, bytes, bytes]:
        """(department, department_document, prediction) of one decided document."""
        top = float(np.max(probs))
        department = DEPARTMENTS[label] if top >= self.config.threshold(doc.kind) else TRIAGE
        reading = doc.reading
        if reading is not None and reading.status != READ and fallback_reason is None:
            fallback_reason = f"OCR {reading.status}: {reading.reason}"
        record = {
            "doc_id": doc.doc_id,
            "sender": doc.sender,
            "content_type": doc.content_type,
            "label": label,
            "probabilities": _by_label(scorer.labels, probs),
            "model_name": scorer.name,
            "model_version": str(scorer.version),
            "feature_set_id": FEATURE_SET_ID,
            "department": department,
            "received_ms": doc.received_ms,
            "scored_ms": now_ms,
            "latency_ms": max(0, now_ms - doc.received_ms),
            "features": dict(zip(SENDER_FEATURES, doc.features)),
            "slot": slot,
            "fallback_reason": fallback_reason,
            "ocr_status": reading.status if reading is not None else None,
            "ocr_pages": reading.pages_read if reading is not None else 0,
            "model_text": model_input_text(doc),
            "image_features": [float(x) for x in doc.image_features] if doc.image_features is not None else [],
        }
        routed = codec.decode(doc.source.value, expected="routed_document").record
        return department, codec.encode("department_document", department_document(routed, record, reading, top)), codec.encode("prediction", record)


def _timed_run(scorer: Scorer, docs: list[PendingDocument], run_options=None) -> tuple[list[str], np.ndarray, float]:
    """The scorer's labels and probabilities for `docs` (all of its kind), and the run's milliseconds."""
    context = np.array([doc.features for doc in docs], dtype=np.float32)
    started = time.perf_counter()
    if scorer.kind == "text":
        labels, probabilities = scorer.score_texts([doc.text for doc in docs], context, run_options)
    elif scorer.kind == "scan":
        labels, probabilities = scorer.score_scans([doc.text for doc in docs], [doc.image_features for doc in docs], context, run_options)
    else:
        labels, probabilities = scorer.score_images([doc.image_features for doc in docs], context, run_options)
    return labels, probabilities, (time.perf_counter() - started) * 1000


def model_input_text(doc: PendingDocument) -> str | None:
    """The text the deciding model sees (as `Scorer.score_texts` / `score_scans` build it); None for the layout model."""
    if doc.kind == "text":
        return doc.text
    return model_text(None, doc.text) if doc.kind == "scan" else None


DELIVERED_FIELDS = ("doc_id", "sender", "subject", "channel", "received_ms", "content_type", "text", "image", "pages", "mime_type",
                    "original_mime_type", "page_count", "headers", "language", "notes")


def department_document(routed: dict, prediction: dict, reading: Reading | None, confidence: float) -> dict:
    """What a department receives: the routed document as it was routed, its OCR reading and the decision."""
    return {**{name: routed.get(name) for name in DELIVERED_FIELDS}, "pages": routed.get("pages") or [],
            "department": prediction["department"],
            "ocr": reading.as_record() if reading is not None else None,
            "decision": {"label": prediction["label"], "probabilities": prediction["probabilities"], "confidence": confidence,
                         "model_name": prediction["model_name"], "model_version": prediction["model_version"], "slot": prediction["slot"],
                         "fallback_reason": prediction["fallback_reason"], "scored_ms": prediction["scored_ms"],
                         "latency_ms": prediction["latency_ms"]}}


def _by_label(labels: tuple[str, ...], probabilities: np.ndarray) -> dict[str, float]:
    return {name: float(p) for name, p in zip(labels, probabilities)}
