"""Poison records and a poisoned model for the failure-path tests (a fixture, not production code).

* `unreadable_scan`: a routed scan whose image bytes are not an image: computing its layout
  features raises (PIL.UnidentifiedImageError), as a scan that slipped past a router would.
* `ocr_breaking_scan`: a routed scan whose first page is sound and whose second is a PNG cut off after a
  third of its bytes: the layout features come from page 1, and OCR raises on page 2 (the reading is FAILED,
  the layout model decides; nothing is dead-lettered for it).
* `slow_text_model`: the registry's text champion, made to take minutes on any batch of more
  than two documents (a Loop of matrix products that changes nothing), so that it passes the
  two-document smoke batch of a deploy and then misses every deadline.
* `poison_text_model`: the registry's text champion, rewritten so that onnxruntime raises
  (Gather: index out of bounds) for any batch that holds the text `POISON_TEXT`, and answers
  exactly as before otherwise. A document whose model text is `POISON_TEXT` makes the model
  raise, the way a real model does on an input it cannot take.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from mailroom.produce import to_document
from models.features import model_text
from models.registry import Registry
from schemas import codec
from udfs.routing import Router, RouterConfig

POISON_SUBJECT, POISON_BODY = "poison", "pill"
POISON_TEXT = model_text(POISON_SUBJECT, POISON_BODY)


def encoded_documents(docs: list[dict]) -> list[bytes]:
    """Generated documents as upstream writes them (the `document` schema)."""
    return [codec.encode("document", to_document(doc, doc["received_ms"])) for doc in docs]


def routed_values(docs: list[dict]) -> list[bytes]:
    """Route generated documents with the router's own logic; every one must pass."""
    router, out = Router(RouterConfig()), []
    for offset, (doc, value) in enumerate(zip(docs, encoded_documents(docs))):
        result = router.route(value, "test", 0, offset, doc["received_ms"])
        assert result.destination.value in ("routed_text", "routed_scans"), result.message
        out.append(result.value)
    return out


def unreadable_scan(routed_scan: bytes, doc_id: str) -> bytes:
    """A routed scan like `routed_scan`, with bytes that are no image in place of its page."""
    record = codec.decode(routed_scan, expected="routed_document").record
    assert record["content_type"] == "IMAGE"
    record.update(doc_id=doc_id, image=b"these bytes are not an image at all")
    return codec.encode("routed_document", record)


def ocr_breaking_scan(routed_scan: bytes, doc_id: str) -> bytes:
    """A routed scan like `routed_scan`, with a second page that is its first cut off after a third."""
    record = codec.decode(routed_scan, expected="routed_document").record
    assert record["content_type"] == "IMAGE"
    record.update(doc_id=doc_id, pages=[record["image"][: len(record["image"]) // 3]])
    return codec.encode("routed_document", record)


def poison_document(template: dict, doc_id: str) -> dict:
    """A text document (like `template`) whose model text is POISON_TEXT."""
    return {**template, "doc_id": doc_id, "subject": POISON_SUBJECT, "text": POISON_BODY, "content_type": "text",
            "image": None, "mime_type": "text/plain", "page_count": 1}


def poison_text_model(registry_dir: Path, into: Path) -> Path:
    """A copy of the registry at `into` whose text champion raises on POISON_TEXT."""
    shutil.copytree(registry_dir, into)
    path = Registry(into).champion("text").onnx_path
    model = onnx.load(str(path))
    graph = model.graph
    output = next(o for o in graph.output if o.name == "probabilities")
    for node in graph.node:  # the model's own probabilities now feed the trap
        node.output[:] = ["probabilities_raw" if name == "probabilities" else name for name in node.output]
    const = lambda name, dtype, dims, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name + "_value", dtype, dims, values))
    graph.node.extend([
        const("poison_flat_shape", TensorProto.INT64, [1], [-1]),
        helper.make_node("Reshape", ["text", "poison_flat_shape"], ["poison_texts"]),
        const("poison_guard", TensorProto.STRING, [1], [b"guard"]),
        helper.make_node("Concat", ["poison_texts", "poison_guard"], ["poison_guarded"], axis=0),
        helper.make_node("StringNormalizer", ["poison_guarded"], ["poison_kept"], stopwords=[POISON_TEXT], is_case_sensitive=1),
        helper.make_node("Shape", ["poison_guarded"], ["poison_all"]),
        helper.make_node("Shape", ["poison_kept"], ["poison_left"]),
        helper.make_node("Sub", ["poison_all", "poison_left"], ["poison_count"]),
        const("poison_stride", TensorProto.INT64, [1], [1000]),
        helper.make_node("Mul", ["poison_count", "poison_stride"], ["poison_index"]),
        const("poison_one", TensorProto.FLOAT, [1], [1.0]),
        helper.make_node("Gather", ["poison_one", "poison_index"], ["poison_factor"]),  # raises unless the count is 0
        helper.make_node("Mul", ["probabilities_raw", "poison_factor"], [output.name]),
    ])
    onnx.save(model, str(path))
    return into


def slow_text_model(registry_dir: Path, into: Path) -> Path:
    """The text champion's ONNX file, copied to `into` (a file) and made slow: the same answers,
    10^6 loop iterations per document beyond the second."""
    model = onnx.load(str(Registry(registry_dir).champion("text").onnx_path))
    graph = model.graph
    output = next(o for o in graph.output if o.name == "probabilities")
    for node in graph.node:
        node.output[:] = ["probabilities_raw" if name == "probabilities" else name for name in node.output]
    size = 200
    eye = helper.make_tensor("slow_eye", TensorProto.FLOAT, [size, size], [float(i == j) for i in range(size) for j in range(size)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["slow_cond_in"], ["slow_cond_out"]), helper.make_node("Constant", [], ["slow_w"], value=eye),
         helper.make_node("MatMul", ["slow_acc_in", "slow_w"], ["slow_acc_out"])],
        "slow_body",
        [helper.make_tensor_value_info("slow_i", TensorProto.INT64, []), helper.make_tensor_value_info("slow_cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("slow_acc_in", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("slow_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("slow_acc_out", TensorProto.FLOAT, [size, size])])
    graph.node.extend([
        helper.make_node("Shape", ["text"], ["slow_shape"]),
        helper.make_node("Constant", [], ["slow_zero"], value=helper.make_tensor("slow_zero_value", TensorProto.INT64, [], [0])),
        helper.make_node("Gather", ["slow_shape", "slow_zero"], ["slow_docs"]),
        helper.make_node("Constant", [], ["slow_two"], value=helper.make_tensor("slow_two_value", TensorProto.INT64, [], [2])),
        helper.make_node("Sub", ["slow_docs", "slow_two"], ["slow_extra"]),
        helper.make_node("Max", ["slow_extra", "slow_zero"], ["slow_extra_docs"]),
        helper.make_node("Constant", [], ["slow_rate"], value=helper.make_tensor("slow_rate_value", TensorProto.INT64, [], [10**6])),
        helper.make_node("Mul", ["slow_extra_docs", "slow_rate"], ["slow_n"]),
        helper.make_node("Constant", [], ["slow_true"], value=helper.make_tensor("slow_true_value", TensorProto.BOOL, [], [True])),
        helper.make_node("Constant", [], ["slow_acc0"], value=eye),
        helper.make_node("Loop", ["slow_n", "slow_true", "slow_acc0"], ["slow_acc"], body=body),
        helper.make_node("ReduceMax", ["slow_acc"], ["slow_one"], keepdims=0),  # exactly 1.0
        helper.make_node("Mul", ["probabilities_raw", "slow_one"], [output.name]),
    ])
    onnx.save(model, str(into))
    return into
