"""models/datasets.py: the real-data loader on a small directory in the shared format."""

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from config.settings import PROJECT_DIR
from models.datasets import DatasetError, load_real

REAL_DIR = PROJECT_DIR.parent / "shared" / "data" / "real"


def write_real(directory: Path, texts: list[dict], images: list[dict] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "text.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in texts), encoding="utf-8")
    if images:
        (directory / "images").mkdir()
        for record in images:
            buffer = io.BytesIO()
            Image.new("L", (40, 60), 255).save(buffer, "PNG")
            (directory / record["path"]).write_bytes(buffer.getvalue())
        (directory / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in images))
    return directory


def text_record(i, source="cfpb_complaints", label="complaint"):
    return {"id": f"{source}-{i}", "source": source, "source_label": "x", "label": label, "subject": None, "text": f"Bürgerbrief {i}", "note": None}


def test_loads_texts_and_images_in_the_generator_shape(tmp_path):
    directory = write_real(tmp_path / "real", [text_record(1), text_record(2, "enron", "other")],
                           [{"id": "rvl-1", "source": "rvl", "source_label": "invoice", "label": "invoice", "path": "images/rvl-1.png", "width": 40, "height": 60}])
    docs = load_real(directory)
    assert [d["doc_id"] for d in docs] == ["cfpb_complaints-1", "enron-2", "rvl-1"]
    text, image = docs[0], docs[2]
    assert text["content_type"] == "text" and text["text"] == "Bürgerbrief 1" and text["source"] == "cfpb_complaints"
    assert text["sender"] is None and text["received_ms"] is None and text["headers"] == {}
    assert image["content_type"] == "image" and Image.open(io.BytesIO(image["image"])).size == (40, 60) and image["text"] is None
    assert load_real(directory, images=False)[-1]["doc_id"] == "enron-2"


def test_cap_per_source_is_a_seeded_sample(tmp_path):
    directory = write_real(tmp_path / "real", [text_record(i) for i in range(30)] + [text_record(i, "enron", "other") for i in range(5)])
    capped = load_real(directory, cap_per_source=10, seed=1)
    assert Counter(d["source"] for d in capped) == {"cfpb_complaints": 10, "enron": 5}
    assert capped == load_real(directory, cap_per_source=10, seed=1)
    assert capped != load_real(directory, cap_per_source=10, seed=2)


def test_bad_input_is_reported_with_its_location(tmp_path):
    with pytest.raises(DatasetError, match="neither"):
        load_real(tmp_path)
    write_real(tmp_path / "a", [text_record(1, label="spam")])
    with pytest.raises(DatasetError, match=r"text.jsonl:1: label 'spam'"):
        load_real(tmp_path / "a")
    write_real(tmp_path / "b", [text_record(1)], [{"id": "x", "source": "rvl", "label": "other", "path": "images/x.png"}])
    (tmp_path / "b" / "images" / "x.png").unlink()
    with pytest.raises(DatasetError, match="missing"):
        load_real(tmp_path / "b")


@pytest.mark.skipif(not REAL_DIR.exists(), reason="shared real data not present")
def test_shared_real_data_loads_and_has_no_offers_or_orders():
    docs = load_real(REAL_DIR)
    labels = Counter(d["label"] for d in docs)
    assert labels["offer"] == labels["purchase_order"] == 0
    assert sum(d["content_type"] == "image" for d in docs) == 48
