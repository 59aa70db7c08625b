"""ONNX export with skl2onnx, and the parity check every export must pass before registration.

Text and scan models: the TF-IDF tokenizer in the graph is told `tokenexp=TOKEN_EXP` (skl2onnx would
otherwise substitute an ASCII-only pattern and silently drop words like "café") and locale
C.UTF-8 (onnxruntime fails to construct en_US.UTF-8 here). sklearn uses TOKEN_PATTERN, its
Python-`re` equivalent: `\\w` in Python is exactly letters, numbers and "_".

Parity: on the evaluation inputs plus non-ASCII probes, every ONNX probability is within
PARITY_TOLERANCE (absolute) of sklearn's `predict_proba`, and every ONNX label equals sklearn's
`predict`, except where sklearn's two best classes are within the tolerance of each other (a
tie float32 cannot resolve, common with random forests); then ONNX must pick one of the tied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from sklearn.feature_extraction.text import TfidfVectorizer

import models.ensemble  # noqa: F401 (registers the RobustVote converter with skl2onnx)
from models.modelio import INPUT_NAMES, initial_types, onnx_feeds, onnx_session, sklearn_matrix
from models.features import FEATURE_SET_ID, SENDER_FEATURES, model_text

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
TOKEN_EXP = r"[\p{L}\p{N}_]{2,}"
PARITY_TOLERANCE = 1e-4
NON_ASCII_PROBES = (
    "Rechnung für Café Müller – Grüße aus Köln", "GRÜSSE AUS DER STRASSE ÄÖÜ", "Réclamation : facture impayée, très déçu",
    "Crème brûlée, garçon, naïve façade, œuvre", "Straße Maß Fuß groß", "İstanbul ıspanak", "Ελληνικά κείμενο τιμολόγιο",
    "Счёт на оплату № 42", "請求書 お問い合わせ", "emoji 🙂 invoice ✓ 10 €", "Cafe\u0301 decomposed accents: re\u0301clamation",
    "tab\tand\nnewlines  and   spaces", "",
)


@dataclass
class Parity:
    ok: bool
    n: int
    max_abs_diff: float
    label_mismatches: int
    ties: int
    tolerance: float = PARITY_TOLERANCE

    def as_dict(self) -> dict:
        return asdict(self)


def to_onnx(pipeline, kind: str) -> onnx.ModelProto:
    """Convert a fitted text, scan or image pipeline; labels and feature set go into the metadata."""
    classifier = pipeline.steps[-1][1]
    options = {id(classifier): {"zipmap": False}}
    if kind in ("text", "scan"):
        options[TfidfVectorizer] = {"tokenexp": TOKEN_EXP, "locale": "C.UTF-8"}
    model = convert_sklearn(pipeline, initial_types=initial_types(kind), options=options)
    onnx.helper.set_model_props(model, {"feature_set_id": FEATURE_SET_ID, "labels": ",".join(map(str, classifier.classes_)), "kind": kind})
    return model


def parity_probes(kind: str, n_image_features: int, seed: int = 0) -> dict:
    """Extra inputs every parity check covers: non-ASCII texts and/or random image features, with varied context vectors."""
    rng = np.random.default_rng(seed)
    n = len(NON_ASCII_PROBES)
    context = np.zeros((n, len(SENDER_FEATURES)), dtype=np.float32)
    context[n // 2:] = rng.uniform(0, 3, (n - n // 2, len(SENDER_FEATURES)))
    probes = {"text": [model_text(None, t) for t in NON_ASCII_PROBES], "image_features": rng.uniform(0, 1, (n, n_image_features)).astype(np.float32),
              "context": context}
    return {name: probes[name] for name in INPUT_NAMES[kind]}


def check_parity(pipeline, model_bytes: bytes, kind: str, inputs: dict, tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Compare onnxruntime with sklearn on `inputs` (see the module docstring for the rule)."""
    onnx_labels, onnx_proba = onnx_session(model_bytes).run(["label", "probabilities"], onnx_feeds(kind, inputs))
    matrix = sklearn_matrix(kind, inputs)
    sk_proba, sk_labels = pipeline.predict_proba(matrix), pipeline.predict(matrix)
    classes = list(pipeline.classes_)
    top2 = np.sort(sk_proba, axis=1)[:, -2:] if sk_proba.shape[1] > 1 else np.hstack([np.zeros_like(sk_proba), sk_proba])
    tie = (top2[:, 1] - top2[:, 0]) <= tolerance
    mismatches = 0
    for i, (mine, theirs) in enumerate(zip(onnx_labels, sk_labels)):
        if mine == theirs:
            continue
        if tie[i] and sk_proba[i, classes.index(mine)] >= top2[i, 1] - tolerance:
            continue
        mismatches += 1
    diff = float(np.abs(onnx_proba - sk_proba).max()) if len(sk_proba) else 0.0
    return Parity(ok=mismatches == 0 and diff <= tolerance, n=len(sk_labels), max_abs_diff=diff,
                  label_mismatches=mismatches, ties=int(tie.sum()), tolerance=tolerance)
