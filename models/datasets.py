"""Real labelled documents in the format of ../shared/data/real (see its SOURCES.md).

A directory holds `text.jsonl` (id, source, source_label, label, subject, text, note) and/or
`images.jsonl` (id, source, source_label, label, path, width, height) with the PNGs under it.
`load_real(dir)` returns documents in the generator's dict shape plus `source`,
`source_label` and `note`; what real data does not know (receipt time, channel, sender,
headers) is None or empty, so such documents get the context vector of an unknown sender.

Real data has no `offer` or `purchase_order` documents: train on generated + real data and
report per-class figures only where the evaluation set has support (training does both).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from schemas.labels import LABELS


class DatasetError(ValueError):
    """A real-data directory is missing files or holds records we cannot use."""


def load_real(directory: Path, texts: bool = True, images: bool = True, cap_per_source: int | None = None, seed: int = 0) -> list[dict]:
    """Documents from `directory`; at most `cap_per_source` per source (a seeded sample)."""
    directory = Path(directory)
    text_file, image_file = directory / "text.jsonl", directory / "images.jsonl"
    if not text_file.exists() and not image_file.exists():
        raise DatasetError(f"{directory} holds neither text.jsonl nor images.jsonl")
    docs: list[dict] = []
    if texts and text_file.exists():
        docs += [_text_doc(record) for record in _records(text_file)]
    if images and image_file.exists():
        docs += [_image_doc(record, directory) for record in _records(image_file)]
    return _cap(docs, cap_per_source, seed) if cap_per_source else docs


def _records(path: Path):
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc})") from None
            missing = {"id", "source", "label"} - record.keys()
            if missing:
                raise DatasetError(f"{path}:{number}: missing {', '.join(sorted(missing))}")
            if record["label"] not in LABELS:
                raise DatasetError(f"{path}:{number}: label {record['label']!r} is not one of {', '.join(LABELS)}")
            yield record


def _base(record: dict) -> dict:
    return {"doc_id": record["id"], "received_ms": None, "channel": None, "sender": None, "subject": record.get("subject"),
            "page_count": 1, "headers": {}, "label": record["label"], "source": record["source"],
            "source_label": record.get("source_label"), "note": record.get("note")}


def _text_doc(record: dict) -> dict:
    return {**_base(record), "content_type": "text", "text": record.get("text") or "", "image": None, "mime_type": "text/plain"}


def _image_doc(record: dict, directory: Path) -> dict:
    path = directory / record["path"]
    if not path.exists():
        raise DatasetError(f"{path} is listed in images.jsonl but missing")
    return {**_base(record), "content_type": "image", "text": None, "image": path.read_bytes(), "mime_type": "image/png"}


def _cap(docs: list[dict], cap: int, seed: int) -> list[dict]:
    by_source: dict[str, list[dict]] = {}
    for doc in docs:
        by_source.setdefault(doc["source"], []).append(doc)
    rng = random.Random(seed)
    kept: list[dict] = []
    for source in sorted(by_source):
        group = by_source[source]
        kept += group if len(group) <= cap else rng.sample(group, cap)
    return kept
