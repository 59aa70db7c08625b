"""The offline training store: labelled examples (labelled_example.v2 records) as Parquet files.

The learning loop retrains from the ground truth departments give. The labelled-examples topic
carries one record per verdict, so a document appears again for every correction (a higher
`revision`) and again whenever the topic is replayed. The store keeps what arrives as it
arrived and resolves it when read:

    <root>/part-<time_ns>-<n>.parquet   append-only part files, each written whole (a temporary
                                        file renamed into place, so a reader never sees half)

* `current()`: the examples in force, one row per doc_id. The highest `revision` wins, then the
  later `truth_sent_ms`; an exact tie (the same verdict written twice) goes to the later part.
  So a CORRECT after a CONFIRM wins, and an older revision that arrives late loses.
* `split(held_out_share)`: train and held-out sides by a hash of doc_id. A document never
  changes sides between calls (or processes), and a larger share only moves documents into
  held-out, so a retraining never trains on what an earlier one was judged on.
* `training_rows(kind, now_ms, ...)`: one side as the model inputs `models.modelio` takes for a
  kind, with labels and sample weights that halve every `half_life_days` of a document's age.
* `compact()`: rewrites the store as one part of the rows in force; `current()` is unchanged.

>>> import tempfile; store = ExampleStore(Path(tempfile.mkdtemp()))
>>> len(store.current()), is_held_out("doc-1", 0.2) == is_held_out("doc-1", 0.2)
(0, True)
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.features import SENDER_FEATURES
from models.modelio import INPUT_NAMES, N_CONTEXT, N_IMAGE
from schemas import codec
from schemas.units import DAY_MS

RECORD_TYPE = "labelled_example"
# the fields of the newest labelled_example version, as Parquet columns
SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("model_name", pa.string()), ("model_version", pa.string()), ("feature_set_id", pa.string()),
    ("content_type", pa.string()), ("sender", pa.string()), ("predicted_label", pa.string()), ("true_label", pa.string()),
    ("truth_kind", pa.string()), ("truth_department", pa.string()),
    ("probabilities", pa.map_(pa.string(), pa.float64())), ("features", pa.map_(pa.string(), pa.float64())),
    ("predicted_ms", pa.int64()), ("truth_sent_ms", pa.int64()), ("matched_ms", pa.int64()), ("revision", pa.int32()),
    ("model_kind", pa.string()), ("model_text", pa.string()), ("image_features", pa.list_(pa.float32())), ("ocr_status", pa.string()),
])
MAP_COLUMNS = ("probabilities", "features")
PART_GLOB = "part-*.parquet"
SIDES = ("train", "held_out")


def is_held_out(doc_id: str, held_out_share: float) -> bool:
    """Whether a document is on the held-out side: the first 8 bytes of sha256(doc_id) as a
    fraction of 2**64, below the share. The same answer everywhere, always."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") < held_out_share * 2**64


def recency_weights(doc_ms: np.ndarray, now_ms: int, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life): 1 for a document from now (or the future), 0.5 at one half-life."""
    age_ms = np.maximum(now_ms - np.asarray(doc_ms, dtype=np.float64), 0.0)
    return 0.5 ** (age_ms / (half_life_days * DAY_MS))


@dataclass
class TrainingRows:
    """One kind's training inputs (the `models.modelio` inputs dict), row-aligned with the true
    labels, the sample weights and the documents' ids."""

    kind: str
    inputs: dict
    labels: np.ndarray
    weights: np.ndarray
    doc_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


class ExampleStore:
    """Labelled examples under `root` (module docstring). One writer at a time; readers any time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._written = itertools.count()

    def append(self, records: list[dict]) -> Path | None:
        """Write labelled_example records (as `schemas.codec.decode` reads them) as one new part
        file; nothing for no records. Returns the part's path."""
        if not records:
            return None
        return self._write(pa.Table.from_pylist([_row(record) for record in records], schema=SCHEMA))

    def parts(self) -> list[Path]:
        """The part files, oldest first."""
        return sorted(self.root.glob(PART_GLOB))

    def current(self) -> pd.DataFrame:
        """The examples in force: one row per doc_id (sorted by doc_id), every labelled_example
        field as a column; `probabilities` and `features` as dicts, `image_features` as float32 arrays."""
        return self._resolve(self.parts())

    def split(self, held_out_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The examples in force as (train, held-out), by `is_held_out`."""
        examples = self.current()
        held_out = examples["doc_id"].map(lambda doc_id: is_held_out(doc_id, held_out_share)).astype(bool)
        return examples[~held_out].reset_index(drop=True), examples[held_out].reset_index(drop=True)

    def training_rows(self, kind: str, now_ms: int, half_life_days: float = 30.0, held_out_share: float = 0.2,
                      side: str = "train") -> TrainingRows:
        """One side of the split as `kind`'s model inputs, labels and recency weights.

        A row counts for the kind whose inputs it carries: text, a TEXT document with its
        model_text; scan, a scan with OCR text and layout features; image, any scan with layout
        features (the layout model is the fallback for every scan). Examples without them (from
        predictions before prediction.v3) are left out. Context is the `features` map in
        SENDER_FEATURES order (a missing feature is 0); the age of an example is that of its
        document (`predicted_ms`, when upstream received it).
        """
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, not {side!r}")
        examples = self.split(held_out_share)[SIDES.index(side)]
        rows = examples[_carries_inputs(examples, kind)]
        inputs = {"context": _context(rows["features"])}
        if "text" in INPUT_NAMES[kind]:
            inputs["text"] = rows["model_text"].tolist()
        if "image_features" in INPUT_NAMES[kind]:
            inputs["image_features"] = np.stack(rows["image_features"].tolist()) if len(rows) else np.zeros((0, N_IMAGE), np.float32)
        return TrainingRows(kind, {name: inputs[name] for name in INPUT_NAMES[kind]}, rows["true_label"].to_numpy(dtype=object),
                            recency_weights(rows["predicted_ms"].to_numpy(), now_ms, half_life_days), rows["doc_id"].tolist())

    def compact(self) -> Path | None:
        """Rewrite the store as one part holding the rows in force, then remove the parts it
        replaced (parts appended meanwhile stay). A crash in between leaves duplicates that
        resolve to the same rows."""
        replaced = self.parts()
        if not replaced:
            return None
        written = self._write(pa.Table.from_pandas(self._resolve(replaced), schema=SCHEMA, preserve_index=False))
        for part in replaced:
            part.unlink()
        return written

    def _resolve(self, parts: list[Path]) -> pd.DataFrame:
        frames = [pq.read_table(part, schema=SCHEMA).to_pandas() for part in parts]
        if not frames:
            return _with_dicts(SCHEMA.empty_table().to_pandas())
        examples = pd.concat([frame.assign(_part=i, _row=np.arange(len(frame))) for i, frame in enumerate(frames)], ignore_index=True)
        examples = examples.sort_values(["doc_id", "revision", "truth_sent_ms", "_part", "_row"], kind="stable")
        in_force = examples.drop_duplicates("doc_id", keep="last").drop(columns=["_part", "_row"]).reset_index(drop=True)
        return _with_dicts(in_force)

    def _write(self, table: pa.Table) -> Path:
        name = f"part-{time.time_ns():019d}-{os.getpid()}-{next(self._written)}.parquet"
        temporary = self.root / f".{name}.tmp"
        pq.write_table(table, temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, self.root / name)
        return self.root / name


def _row(record: dict) -> dict:
    """A record with every field, the schema's defaults for those it leaves out (a record of an
    older version); a missing field without a default is an error."""
    row = {}
    for field in codec.schema(RECORD_TYPE).schema["fields"]:
        if field["name"] not in record and "default" not in field:
            raise ValueError(f"a {RECORD_TYPE} needs {field['name']!r}: {record.get('doc_id')!r} has none")
        row[field["name"]] = record.get(field["name"], field.get("default"))
    return row


def _with_dicts(examples: pd.DataFrame) -> pd.DataFrame:
    """Parquet maps read back as lists of pairs: make them dicts again."""
    for column in MAP_COLUMNS:
        examples[column] = examples[column].map(dict)
    return examples


def _carries_inputs(examples: pd.DataFrame, kind: str) -> pd.Series:
    has_text = examples["model_text"].notna()
    has_layout = examples["image_features"].map(len) == N_IMAGE
    is_scan = examples["content_type"] == "IMAGE"
    return {"text": ~is_scan & has_text, "scan": is_scan & has_text & has_layout, "image": is_scan & has_layout}[kind]


def _context(features: pd.Series) -> np.ndarray:
    """The `features` maps as the context matrix, SENDER_FEATURES order, missing -> 0."""
    context = np.zeros((len(features), N_CONTEXT), dtype=np.float32)
    for i, mapping in enumerate(features):
        context[i] = [mapping.get(name, 0.0) for name in SENDER_FEATURES]
    return context
