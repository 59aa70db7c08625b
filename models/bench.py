"""Throughput of the champions: onnxruntime per batch size vs sklearn, on generated documents.

A benchmark is a command (`mailroom bench-models`), not a test. Every figure is documents per
second on one thread, measured for about `seconds` each, inputs prepared beforehand, so the rows
isolate the model; the `features` rows show the cost of building the inputs from raw documents.
The scan model is scored on the first OCR_SCANS generated scans that Tesseract reads (through the
page cache when one is given); its `features` row is OCR itself, uncached, a few pages per call.
"""

from __future__ import annotations

import time
from itertools import cycle
from pathlib import Path

from models.generator import generate
from models.modelio import KINDS, onnx_feeds, sklearn_matrix, take
from models.ocr import OcrCache, OcrConfig, PageReader
from models.registry import Registry, RegistryError
from models.scoring import Scorer
from models.training import build_dataset, context_vectors
from models.image_features import image_features
from models.features import model_text

OCR_SCANS = 50  # scans read for the scan model's rows (~0.1 s each, cold)
OCR_RATE_PAGES = 4  # pages per call of the uncached OCR row

def _rate(work, batch: int, seconds: float) -> dict:
    """Call work() repeatedly for about `seconds`; documents per second and ms per call."""
    work()  # warm-up
    calls, start = 0, time.perf_counter()
    while True:
        work()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"batch": batch, "docs_per_s": calls * batch / elapsed, "ms_per_batch": elapsed / calls * 1000}


def bench_models(registry_dir: Path, n_docs: int = 600, batch_sizes: tuple[int, ...] = (1, 32, 256), seconds: float = 2.0, seed: int = 99,
                 ocr_cache_dir: Path | None = None) -> list[dict]:
    """One row per (model, engine, batch size). Kinds without a champion (and a scan model when no scan was read) are skipped."""
    registry = Registry(registry_dir)
    docs = generate(n_docs, seed=seed, scan_share=0.3)
    context = context_vectors(docs)
    rows: list[dict] = []
    for kind in KINDS:
        try:
            model = registry.champion(kind)
        except RegistryError:
            continue
        scorer = Scorer(model)
        name = f"{kind} v{scorer.version} ({model.card['kernel']})"
        raw = [d for d in docs if (d["content_type"] == "image") == (kind != "text")]
        if kind == "text":
            data = build_dataset(kind, docs, context)
            build = ("features: model_text", lambda: [model_text(d["subject"], d["text"]) for d in raw], len(raw))
        elif kind == "image":
            data = build_dataset(kind, docs, context)
            build = ("features: image_features (PNG in)", lambda: [image_features(d["image"]) for d in raw[:50]], min(50, len(raw)))
        else:
            ocr = OcrConfig(**model.card["preprocessing"]["ocr"]["engine"])
            data = build_dataset(kind, docs, context, read_texts(raw[:OCR_SCANS], PageReader(ocr, OcrCache(ocr_cache_dir) if ocr_cache_dir else None)))
            uncached, pages = PageReader(ocr), [d["image"] for d in raw[:OCR_RATE_PAGES]]
            build = ("features: OCR (PNG in, uncached)", lambda: [uncached.read([page]) for page in pages], len(pages))
        if len(data) == 0:
            continue
        rows.append({"model": name, "engine": build[0], **_rate(build[1], build[2], seconds)})
        for batch in batch_sizes:
            feeds = cycle([onnx_feeds(kind, chunk) for chunk in _chunks(data.inputs, len(data), batch)])
            rows.append({"model": name, "engine": "onnxruntime", **_rate(lambda: scorer.session.run(["probabilities"], next(feeds)), batch, seconds)})
        pipeline = registry.sklearn_model(kind, int(scorer.version))
        if pipeline is not None:
            for batch in sorted({batch_sizes[0], batch_sizes[-1]}):
                matrices = cycle([sklearn_matrix(kind, chunk) for chunk in _chunks(data.inputs, len(data), batch)])
                rows.append({"model": name, "engine": "sklearn predict_proba", **_rate(lambda: pipeline.predict_proba(next(matrices)), batch, seconds)})
    return rows


def read_texts(scans: list[dict], reader: PageReader) -> dict[str, str]:
    """doc_id -> OCR text of the scans the reader read (status READ)."""
    readings = {d["doc_id"]: reader.read([d["image"]]) for d in scans}
    return {doc_id: r.text for doc_id, r in readings.items() if r.decides}


def _chunks(inputs: dict, n: int, batch: int) -> list[dict]:
    """Batches of `batch` rows covering all n rows (wrapping around at the end)."""
    return [take(inputs, [(start + i) % n for i in range(batch)]) for start in range(0, n, batch)]

