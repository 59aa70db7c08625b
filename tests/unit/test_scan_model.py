"""The scan model: OCR text + layout features + context, trained on read scans and on the texts that read like a page."""

import json

import numpy as np
import pytest

from models.generator import generate
from models.ocr import OcrCache, OcrConfig, PageReader
from models.registry import Registry, row_keys
from models.scoring import Scorer
from models.training import GENERATED_SOURCE, TrainConfig, publish, read_scans, train


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    """A tiny real-data directory: an OCR-text source, a plain text source and two real scans."""
    directory = tmp_path_factory.mktemp("real")
    tag = lambda i: "ref" + "abcdefghij"[i // 10] + "abcdefghij"[i % 10]  # noqa: E731 - distinct texts: not one duplicate group per label
    texts = [{"id": f"ocr-{i}", "source": "letters_ocr", "label": "invoice" if i % 2 else "other",
              "text": f"invoice total due amount payable {tag(i)}" if i % 2 else f"memo minutes of the meeting agenda {tag(i)}"} for i in range(30)]
    texts += [{"id": f"ticket-{i}", "source": "tickets", "label": "service_request", "text": "printer broken please help"} for i in range(6)]
    (directory / "text.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    scans = [d for d in generate(40, seed=5, scan_share=0.9) if d["content_type"] == "image"][:2]
    (directory / "images").mkdir()
    for i, scan in enumerate(scans):
        (directory / "images" / f"{i}.png").write_bytes(scan["image"])
    (directory / "images.jsonl").write_text("".join(json.dumps({"id": f"scan-{i}", "source": "golden_scans", "label": s["label"],
                                                                 "path": f"images/{i}.png"}) + "\n" for i, s in enumerate(scans)))
    return directory


@pytest.fixture(scope="module")
def trained(real_dir, tmp_path_factory):
    config = TrainConfig(generated=240, quick=True, kinds=("scan",), real_dir=real_dir, ocr_generated_cap=40,
                         ocr_cache_dir=tmp_path_factory.mktemp("cache") / "ocr")
    return config, train(config, progress=False)


def test_scan_rows_are_the_scans_read_plus_the_texts_that_read_like_a_page_with_mean_layout(trained):
    _, run = trained
    ocr = run.data["ocr"]
    assert ocr["generated_read"] == 40 < ocr["generated_scans"] and ocr["pages"] == 42 and ocr["pages_by_engine"] == 42
    model = run.models["scan"]
    sources = model.train_summary["sources"]
    assert "tickets" not in sources and sources["letters_ocr"] > 0  # real OCR text, not every real text
    texts = sum(d["content_type"] == "text" for d in generate(240, seed=7, scan_share=0.3))
    assert ocr["statuses"]["READ"] < sources[GENERATED_SOURCE] <= ocr["statuses"]["READ"] + texts  # the scans read, and the generated texts
    held = model.held_out
    layout = np.asarray(held.inputs["image_features"])
    imputed = layout[held.sources == "letters_ocr"]
    assert len(imputed) and np.allclose(imputed, imputed[0]) and not np.allclose(imputed[0], 0)
    assert not np.allclose(layout, layout[0])  # the scans' own layouts differ
    assert set(model.source_holdout) == {"golden_scans", "letters_ocr"}


def test_a_second_read_comes_from_the_cache(trained):
    config, run = trained
    texts, again = read_scans(generate(240, seed=config.seed, scan_share=config.scan_share), config, progress=False)
    assert again["pages_from_cache"] == again["pages"] == 40 and again["pages_by_engine"] == 0
    assert len(texts) == again["statuses"]["READ"]


def test_scan_model_exports_with_parity_registers_and_scores(trained, tmp_path):
    _, run = trained
    model = run.models["scan"]
    registry = Registry(tmp_path / "registry")
    version, parity = publish(model, run, registry)
    assert parity.ok and parity.n > len(model.held_out) and version == 1
    card = registry.show("scan", 1)
    assert card["preprocessing"]["image_features"]["mean_imputed_for"] == "the generated text documents and the real OCR-text sources"
    assert card["preprocessing"]["ocr"]["engine"]["languages"] == "eng" and card["evaluation"]["per_class"]
    assert registry.trained_on("scan", 1) == set(row_keys("scan", model.train_inputs))
    scorer = Scorer.from_registry(tmp_path / "registry", "scan")
    held = model.held_out
    labels, probabilities = scorer.score_scans(held.inputs["text"][:5], list(held.inputs["image_features"][:5]), held.inputs["context"][:5])
    assert len(labels) == 5 and set(labels) <= set(scorer.labels) and probabilities.shape == (5, len(scorer.labels))
    assert labels == [str(x) for x in model.pipeline.predict(held.rows(range(5)).matrix())]


def test_the_page_cache_spares_the_engine(tmp_path):
    page = next(d["image"] for d in generate(30, seed=5, scan_share=0.9) if d["content_type"] == "image")
    reader = PageReader(OcrConfig(), cache=OcrCache(tmp_path))
    calls = []

    class Counting:
        def __init__(self, api):
            self.api = api

        def Recognize(self, **kwargs):
            calls.append(1)
            return self.api.Recognize(**kwargs)

        def __getattr__(self, name):
            return getattr(self.api, name)

    reader.api = Counting(reader.api)
    first, second = reader.read([page]), reader.read([page])
    assert len(calls) == 1 and first.text == second.text and first.status == second.status


def test_a_reader_without_the_inverted_retry_reads_under_a_signature_of_its_own(tmp_path):
    page = next(d["image"] for d in generate(30, seed=5, scan_share=0.9) if d["content_type"] == "image")
    cache = OcrCache(tmp_path)
    retrying, plain = PageReader(OcrConfig(), cache=cache), PageReader(OcrConfig(retry_inverted=False), cache=cache)
    assert retrying.engine != plain.engine and plain.engine.endswith("no-invert")
    cache.put(page, retrying.engine, "what the other engine read")
    reading = plain.read([page])
    assert reading.status == "READ" and reading.text != "what the other engine read"
    assert plain.api.GetVariableAsString("tessedit_do_invert") in ("0", "false")
    assert retrying.api.GetVariableAsString("tessedit_do_invert") in ("1", "true")


def test_a_scan_rows_key_covers_its_text_and_its_layout():
    features = np.zeros((2, 74), np.float32)
    keys = row_keys("scan", {"text": ["invoice", "invoice"], "image_features": features + np.array([[0], [1]], np.float32)})
    assert keys[0] != keys[1] and keys[0] != row_keys("scan", {"text": ["offer"], "image_features": features[:1]})[0]
    assert row_keys("text", {"text": ["invoice"]}) != row_keys("scan", {"text": ["invoice"], "image_features": features[:1]})

