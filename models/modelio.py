"""The models' input contract, in one place: ONNX input names/types and the matching sklearn matrix.

Text model: inputs `text` (string [N, 1], already `models.features.model_text`-normalised) and
`context` (float32 [N, len(SENDER_FEATURES)]). Image model (the layout-only fallback for scans):
`image_features` (float32 [N, len(IMAGE_FEATURES)]) and `context`. Scan model (a scan that was
read): `text` (the OCR text through `model_text`), `image_features` and `context`. All output
`label` (string [N]) and `probabilities` (float32 [N, n_labels], columns in the card's `labels` order).

An `inputs` dict maps those names to values: a list of str for `text`, 2-D arrays otherwise.
The sklearn pipelines see the same columns side by side: [text, context...] as an object array,
or [image_features..., context...] as float32, or [text, image_features..., context...] as an object array.
"""

from __future__ import annotations

import numpy as np

from models.image_features import IMAGE_FEATURES
from models.features import SENDER_FEATURES

KINDS = ("text", "scan", "image")
INPUT_NAMES = {"text": ("text", "context"), "scan": ("text", "image_features", "context"), "image": ("image_features", "context")}
N_CONTEXT = len(SENDER_FEATURES)
N_IMAGE = len(IMAGE_FEATURES)


def initial_types(kind: str) -> list:
    """skl2onnx's description of the ONNX inputs."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = {"text": StringTensorType([None, 1]), "image_features": FloatTensorType([None, N_IMAGE]), "context": FloatTensorType([None, N_CONTEXT])}
    return [(name, types[name]) for name in INPUT_NAMES[kind]]


def input_signature(kind: str) -> list[dict]:
    """The inputs as plain data, for the model card."""
    described = {"text": {"name": "text", "type": "string", "shape": [None, 1]},
                 "image_features": {"name": "image_features", "type": "float32", "shape": [None, N_IMAGE], "features": list(IMAGE_FEATURES)},
                 "context": {"name": "context", "type": "float32", "shape": [None, N_CONTEXT], "features": list(SENDER_FEATURES)}}
    return [described[name] for name in INPUT_NAMES[kind]]


def onnx_feeds(kind: str, inputs: dict) -> dict[str, np.ndarray]:
    """The dict onnxruntime's `run` takes."""
    shaped = {"text": lambda v: np.asarray(v, dtype=object).reshape(-1, 1),
              "image_features": lambda v: np.asarray(v, dtype=np.float32).reshape(-1, N_IMAGE),
              "context": lambda v: np.asarray(v, dtype=np.float32).reshape(-1, N_CONTEXT)}
    return {name: shaped[name](inputs[name]) for name in INPUT_NAMES[kind]}


def sklearn_matrix(kind: str, inputs: dict) -> np.ndarray:
    """The matrix the sklearn pipeline takes for the same inputs."""
    feeds = onnx_feeds(kind, inputs)
    if "text" not in feeds:
        return np.hstack([feeds["image_features"], feeds["context"]])
    columns = [feeds[name] for name in INPUT_NAMES[kind]]
    matrix = np.empty((len(feeds["text"]), sum(c.shape[1] for c in columns)), dtype=object)
    at = 0
    for column in columns:
        matrix[:, at:at + column.shape[1]] = column
        at += column.shape[1]
    return matrix


def take(inputs: dict, rows) -> dict:
    """The given rows of an inputs dict."""
    rows = np.asarray(rows, dtype=int)
    return {name: [value[i] for i in rows] if isinstance(value, list) else np.asarray(value)[rows] for name, value in inputs.items()}


def onnx_session(model: bytes | str):
    """A single-threaded, quiet onnxruntime session (the streaming job runs one per worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
