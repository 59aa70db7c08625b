"""Scoring with a registered ONNX model: what the streaming job calls, micro-batch by micro-batch.

Pure Python + onnxruntime (no sklearn, no pyflink). Load once per worker, then score batches:

    scorer = Scorer.from_registry(registry_dir, "text")        # raises if the feature set differs
    labels, probabilities = scorer.score_texts([model_text(subject, body), ...], context)

`context` has one row per document: `SenderHistory.observe(...)` for its sender.
`probabilities[:, j]` belongs to `scorer.labels[j]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.image_features import IMAGE_FEATURES, image_features
from models.modelio import onnx_feeds, onnx_session
from models.registry import ModelRef, Registry
from models.features import FEATURE_SET_ID, SENDER_FEATURES, model_text, normalise_text


class FeatureSetMismatch(RuntimeError):
    """The model was trained on other context features than this code computes."""


def check_feature_set(model: ModelRef) -> None:
    """The one feature-set check: raises FeatureSetMismatch unless `model` was trained on the
    context features this code computes (`models.features.FEATURE_SET_ID`)."""
    trained_on = model.card.get("feature_set_id")
    if trained_on != FEATURE_SET_ID:
        raise FeatureSetMismatch(
            f"the {model.kind} model v{model.version} ({model.onnx_path}) was trained with feature set {trained_on!r}, but this "
            f"code computes {FEATURE_SET_ID!r}. Retrain (`mailroom train`) or promote a model trained with {FEATURE_SET_ID!r} "
            f"(`mailroom models list`).")


class Scorer:
    """One registered model, loaded into a single-threaded onnxruntime session."""

    def __init__(self, model: ModelRef):
        check_feature_set(model)
        self.kind, self.version = model.kind, str(model.version)
        self.name = f"mailroom-{model.kind}"
        self.labels: tuple[str, ...] = tuple(model.card["labels"])
        self.session = onnx_session(str(model.onnx_path))

    @classmethod
    def from_registry(cls, registry_dir: Path, kind: str) -> "Scorer":
        """The current champion of `kind` ("text", "scan" or "image")."""
        return cls(Registry(registry_dir).champion(kind))

    @classmethod
    def from_pointer(cls, pointer) -> "Scorer":
        """The model a control record points to, once it passed `models.pointers.load_checked`
        (raises ModelRefused with the reason otherwise)."""
        from models.pointers import load_checked

        scorer = cls.__new__(cls)
        scorer.session = load_checked(pointer)
        scorer.kind, scorer.version, scorer.name, scorer.labels = pointer.kind, pointer.version, pointer.model_name, tuple(pointer.labels)
        return scorer

    def score_texts(self, texts: list[str], context: np.ndarray, run_options=None) -> tuple[list[str], np.ndarray]:
        """Labels and probabilities for texts built by `models.features.model_text` (normalised
        again here, which changes nothing for such texts and protects against raw input)."""
        self._expect("text")
        return self._run({"text": [normalise_text(t) for t in texts], "context": self._context(context, len(texts))}, run_options)

    def score_images(self, images: list, context: np.ndarray, run_options=None) -> tuple[list[str], np.ndarray]:
        """Labels and probabilities for scans: each item is PNG bytes, a PIL image or an
        already computed `image_features` vector."""
        self._expect("image")
        rows = [np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else image_features(x) for x in images]
        features = np.stack(rows) if rows else np.zeros((0, len(IMAGE_FEATURES)), np.float32)
        return self._run({"image_features": features, "context": self._context(context, len(images))}, run_options)

    def score_scans(self, texts: list[str], image_features: list, context: np.ndarray, run_options=None) -> tuple[list[str], np.ndarray]:
        """Labels and probabilities for scans that were read: the OCR text (normalised here by
        `model_text`), the page's `image_features` vector and the sender context."""
        self._expect("scan")
        rows = [np.asarray(x, dtype=np.float32) for x in image_features]
        features = np.stack(rows) if rows else np.zeros((0, len(IMAGE_FEATURES)), np.float32)
        return self._run({"text": [model_text(None, t) for t in texts], "image_features": features,
                          "context": self._context(context, len(texts))}, run_options)

    def _run(self, inputs: dict, run_options=None) -> tuple[list[str], np.ndarray]:
        """`run_options`: an onnxruntime RunOptions whose `terminate` can stop the run from another thread."""
        if len(inputs["context"]) == 0:
            return [], np.zeros((0, len(self.labels)), np.float32)
        labels, probabilities = self.session.run(["label", "probabilities"], onnx_feeds(self.kind, inputs), run_options)
        return [str(x) for x in labels], probabilities

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise TypeError(f"this scorer holds the {self.kind} model; use score_{self.kind}s")

    @staticmethod
    def _context(context: np.ndarray, n: int) -> np.ndarray:
        context = np.asarray(context, dtype=np.float32)
        if context.shape != (n, len(SENDER_FEATURES)):
            raise ValueError(f"context must have shape ({n}, {len(SENDER_FEATURES)}) (one SENDER_FEATURES row per document), got {context.shape}")
        return context
