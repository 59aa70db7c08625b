"""Model pointers: what the model-control topic carries (never the bytes), and the checks a
model passes before it serves.

A `ModelPointer` says where a registered model's ONNX file is and what it must be (sha256,
feature set, labels). `load_checked` opens it and refuses it, with the reason, unless the file
matches its sha256, the graph has the kind's inputs and outputs, the model was trained on the
context features this code computes, and a smoke batch answers with one probability per label.
The same checks run in `mailroom models deploy` (before anything is published) and in every
scoring subtask (before the model goes live).

>>> pointer = ModelPointer("text", "mailroom-text", "3", "/m/model.onnx", "ab" * 32, "sender-v1", ("invoice", "other"))
>>> ModelPointer.from_record(pointer.to_record("CHALLENGER", published_ms=0)) == pointer
True
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.features import FEATURE_SET_ID, SENDER_FEATURES
from models.image_features import IMAGE_FEATURES
from models.modelio import INPUT_NAMES as INPUTS
from models.modelio import onnx_session
from models.registry import ModelRef, model_name

OUTPUTS = ("label", "probabilities")
SMOKE_LIMIT_S = 30.0  # a smoke batch that takes longer is stopped: the model is refused
SMOKE_TEXTS = ["invoice no. 4711, total due 1,250.00 eur", "dear sir or madam, i would like to apply for the position"]


class ModelRefused(Exception):
    """A model that must not serve; the message says why."""


@dataclass(frozen=True)
class ModelPointer:
    """A registered model as the control topic names it."""

    kind: str
    model_name: str
    version: str
    onnx_path: str
    sha256: str
    feature_set_id: str
    labels: tuple[str, ...]
    shadow_sample: float = 1.0  # for a challenger: the share of documents it scores in shadow

    @classmethod
    def of(cls, model: ModelRef, shadow_sample: float = 1.0) -> "ModelPointer":
        """The pointer to a registered model (its file's sha256 computed now)."""
        return cls(model.kind, model_name(model.kind), str(model.version), str(model.onnx_path), file_sha256(model.onnx_path),
                   str(model.card.get("feature_set_id")), tuple(model.card["labels"]), shadow_sample)

    def to_record(self, slot: str, published_ms: int, note: str | None = None) -> dict:
        """A model_control record that deploys this model in `slot`."""
        return {"kind": self.kind, "slot": slot, "action": "DEPLOY", "model_name": self.model_name, "version": self.version,
                "onnx_path": self.onnx_path, "sha256": self.sha256, "feature_set_id": self.feature_set_id, "labels": list(self.labels),
                "shadow_sample": self.shadow_sample, "published_ms": published_ms, "note": note}

    @classmethod
    def from_record(cls, record: dict) -> "ModelPointer":
        return cls(record["kind"], record["model_name"], record["version"], record["onnx_path"], record["sha256"],
                   record["feature_set_id"], tuple(record["labels"]), record["shadow_sample"])


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checked(pointer: ModelPointer):
    """An onnxruntime session for `pointer`'s model, or ModelRefused with the reason."""
    if pointer.kind not in INPUTS:
        raise ModelRefused(f"unknown model kind {pointer.kind!r}; expected one of {', '.join(INPUTS)}")
    if pointer.feature_set_id != FEATURE_SET_ID:
        raise ModelRefused(f"{pointer.kind} v{pointer.version} was trained with feature set {pointer.feature_set_id!r}, "
                           f"this code computes {FEATURE_SET_ID!r}")
    path = Path(pointer.onnx_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != pointer.sha256:
        raise ModelRefused(f"sha256 of {path} is {actual[:12]}…, the pointer says {pointer.sha256[:12]}…")
    try:
        session = onnx_session(data)
    except Exception as exc:  # onnxruntime's own types: not an ONNX graph, an invalid one
        raise ModelRefused(f"onnxruntime cannot load {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    inputs = tuple(sorted(i.name for i in session.get_inputs()))
    if inputs != tuple(sorted(INPUTS[pointer.kind])):
        raise ModelRefused(f"the graph's inputs are {', '.join(inputs)}; a {pointer.kind} model takes {', '.join(INPUTS[pointer.kind])}")
    outputs = {o.name for o in session.get_outputs()}
    if not set(OUTPUTS) <= outputs:
        raise ModelRefused(f"the graph's outputs are {', '.join(sorted(outputs))}; a model gives {', '.join(OUTPUTS)}")
    _smoke(session, pointer)
    return session


def _smoke(session, pointer: ModelPointer) -> None:
    """Two canned documents: a label among the pointer's labels and one probability per label each."""
    context = np.zeros((len(SMOKE_TEXTS), len(SENDER_FEATURES)), dtype=np.float32)
    given = {"text": np.array(SMOKE_TEXTS, dtype=object).reshape(-1, 1), "context": context,
             "image_features": np.zeros((len(SMOKE_TEXTS), len(IMAGE_FEATURES)), dtype=np.float32)}
    feeds = {name: given[name] for name in INPUTS[pointer.kind]}
    import onnxruntime as ort

    options = ort.RunOptions()
    timer = threading.Timer(SMOKE_LIMIT_S, lambda: setattr(options, "terminate", True))
    timer.start()
    try:
        labels, probabilities = session.run(list(OUTPUTS), feeds, options)
    except Exception as exc:
        late = " (stopped after {:.0f} s)".format(SMOKE_LIMIT_S) if options.terminate else ""
        raise ModelRefused(f"the smoke batch failed{late}: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        timer.cancel()
    if probabilities.shape != (len(SMOKE_TEXTS), len(pointer.labels)):
        raise ModelRefused(f"the smoke batch gave probabilities of shape {probabilities.shape}, expected "
                           f"({len(SMOKE_TEXTS)}, {len(pointer.labels)}) for labels {', '.join(pointer.labels)}")
    unknown = {str(label) for label in labels} - set(pointer.labels)
    if unknown:
        raise ModelRefused(f"the smoke batch answered {', '.join(sorted(unknown))}, not among the model's labels")
