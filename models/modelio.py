"""The models' input contract, in one place: ONNX input names/types and the matching sklearn matrix.

Text model: inputs `text` (string [N, 1], already `models.features.model_text`-normalised) and
`context` (float32 [N, len(SENDER_FEATURES)]). Image model: `image_features` (float32
[N, len(IMAGE_FEATURES)]) and `context`. Both output `label` (string [N]) and `probabilities`
(float32 [N, n_labels], columns in the card's `labels` order).

An `inputs` dict maps those names to values: a list of str for `text`, 2-D arrays otherwise.
The sklearn pipelines see the same columns side by side: [text, context...] as an object array,
or [image_features..., context...] as float32.
"""

from __future__ import annotations

import numpy as np

from models.image_features import IMAGE_FEATURES
from models.features import SENDER_FEATURES

KINDS = ("text", "image")
INPUT_NAMES = {"text": ("text", "context"), "image": ("image_features", "context")}
N_CONTEXT = len(SENDER_FEATURES)
N_IMAGE = len(IMAGE_FEATURES)


def initial_types(kind: str) -> list:
    """skl2onnx's description of the ONNX inputs."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if kind == "text":
        return [("text", StringTensorType([None, 1])), ("context", FloatTensorType([None, N_CONTEXT]))]
    return [("image_features", FloatTensorType([None, N_IMAGE])), ("context", FloatTensorType([None, N_CONTEXT]))]


def input_signature(kind: str) -> list[dict]:
    """The inputs as plain data, for the model card."""
    first = {"name": "text", "type": "string", "shape": [None, 1]} if kind == "text" else \
        {"name": "image_features", "type": "float32", "shape": [None, N_IMAGE], "features": list(IMAGE_FEATURES)}
    return [first, {"name": "context", "type": "float32", "shape": [None, N_CONTEXT], "features": list(SENDER_FEATURES)}]


def onnx_feeds(kind: str, inputs: dict) -> dict[str, np.ndarray]:
    """The dict onnxruntime's `run` takes."""
    context = np.asarray(inputs["context"], dtype=np.float32).reshape(-1, N_CONTEXT)
    if kind == "text":
        return {"text": np.asarray(inputs["text"], dtype=object).reshape(-1, 1), "context": context}
    return {"image_features": np.asarray(inputs["image_features"], dtype=np.float32).reshape(-1, N_IMAGE), "context": context}


def sklearn_matrix(kind: str, inputs: dict) -> np.ndarray:
    """The matrix the sklearn pipeline takes for the same inputs."""
    feeds = onnx_feeds(kind, inputs)
    if kind == "text":
        matrix = np.empty((len(feeds["text"]), 1 + N_CONTEXT), dtype=object)
        matrix[:, 0] = feeds["text"][:, 0]
        matrix[:, 1:] = feeds["context"]
        return matrix
    return np.hstack([feeds["image_features"], feeds["context"]])


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
