"""models/examples_store.py: the examples in force (corrections, duplicates, late old revisions),
a stable held-out side, training rows per kind with recency weights, compaction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.examples_store import SCHEMA, ExampleStore, is_held_out, recency_weights
from models.features import SENDER_FEATURES
from models.modelio import N_CONTEXT, N_IMAGE, sklearn_matrix
from schemas import codec
from schemas.labels import DEPARTMENTS, LABELS
from schemas.units import DAY_MS

T0 = 1_750_000_000_000
MINUTE = 60_000


def example(doc_id: str, label: str = "invoice", revision: int = 0, sent_ms: int = T0 + MINUTE, kind: str = "text", **fields) -> dict:
    """A labelled_example record as the codec reads it."""
    scan = kind in ("scan", "image")
    record = {
        "doc_id": doc_id, "model_name": f"mailroom-{kind}", "model_version": "3", "feature_set_id": "sender-v1",
        "content_type": "IMAGE" if scan else "TEXT", "sender": "s@x.example", "predicted_label": "invoice", "true_label": label,
        "truth_kind": "CONFIRM" if revision == 0 else "CORRECT", "truth_department": DEPARTMENTS[label],
        "probabilities": {"invoice": 0.8, "other": 0.2}, "features": {"sender_docs_1h": 2.0, "sender_seen_log": 1.5},
        "predicted_ms": T0, "truth_sent_ms": sent_ms, "matched_ms": sent_ms, "revision": revision, "model_kind": kind,
        "model_text": None if kind == "image" else f"text of {doc_id}", "image_features": [0.5] * N_IMAGE if scan else [],
        "ocr_status": ("READ" if kind == "scan" else "OVER_BUDGET") if scan else None,
    }
    return {**record, **fields}


def in_force(store: ExampleStore) -> dict[str, tuple]:
    return {r.doc_id: (r.true_label, r.revision, r.truth_kind) for r in store.current().itertuples()}


def test_a_correction_wins_over_the_confirm_before_it(tmp_path):
    store = ExampleStore(tmp_path)
    store.append([example("d1", "invoice", 0, T0 + MINUTE)])
    store.append([example("d1", "offer", 1, T0 + 2 * MINUTE), example("d2", "complaint")])
    assert in_force(store) == {"d1": ("offer", 1, "CORRECT"), "d2": ("complaint", 0, "CONFIRM")}


def test_an_older_revision_arriving_later_loses(tmp_path):
    store = ExampleStore(tmp_path)
    store.append([example("d1", "offer", 1, T0 + 2 * MINUTE)])
    store.append([example("d1", "invoice", 0, T0 + MINUTE)])
    assert in_force(store) == {"d1": ("offer", 1, "CORRECT")}


def test_duplicates_are_one_row_and_a_tied_revision_goes_to_the_later_verdict(tmp_path):
    store = ExampleStore(tmp_path)
    store.append([example("d1"), example("d1"), example("d2", "offer", 1, T0 + 5 * MINUTE)])
    store.append([example("d1"), example("d2", "complaint", 1, T0 + 3 * MINUTE)])
    current = store.current()
    assert list(current["doc_id"]) == ["d1", "d2"] and in_force(store)["d2"] == ("offer", 1, "CORRECT")
    assert current.loc[0, "features"] == {"sender_docs_1h": 2.0, "sender_seen_log": 1.5}


def test_decoded_records_of_either_version_are_stored_with_the_newest_fields(tmp_path):
    store = ExampleStore(tmp_path)
    newest = example("d1", kind="scan")
    v1 = {name: value for name, value in example("d2").items()
          if name in {f["name"] for f in codec.schema("labelled_example", 1).schema["fields"]}}
    store.append([codec.decode(codec.encode("labelled_example", newest)).record, v1])
    rows = store.current().set_index("doc_id")
    assert (rows.loc["d1", "model_kind"], rows.loc["d1", "model_text"], list(rows.loc["d1", "image_features"])) == (
        "scan", "text of d1", [0.5] * N_IMAGE)
    assert (rows.loc["d2", "model_kind"], rows.loc["d2", "model_text"], len(rows.loc["d2", "image_features"])) == ("", None, 0)
    with pytest.raises(ValueError, match="true_label"):
        store.append([{k: v for k, v in example("d3").items() if k != "true_label"}])
    assert SCHEMA.names == [f["name"] for f in codec.schema("labelled_example").schema["fields"]]


def test_an_empty_store_has_no_examples_and_no_rows(tmp_path):
    store = ExampleStore(tmp_path)
    assert store.append([]) is None and store.compact() is None
    assert len(store.current()) == 0 and list(store.current().columns) == SCHEMA.names
    rows = store.training_rows("scan", T0)
    assert len(rows) == 0 and rows.inputs["image_features"].shape == (0, N_IMAGE) and rows.inputs["context"].shape == (0, N_CONTEXT)


# --- the held-out side -------------------------------------------------------------------------


def test_the_held_out_side_is_stable_and_only_grows_with_the_share(tmp_path):
    store = ExampleStore(tmp_path)
    store.append([example(f"d{i}") for i in range(1000)])
    train, held_out = store.split(0.2)
    assert set(train["doc_id"]).isdisjoint(held_out["doc_id"]) and len(train) + len(held_out) == 1000
    assert 150 < len(held_out) < 250
    store.append([example(f"d{i}", "offer", 1, T0 + 2 * MINUTE) for i in range(0, 1000, 3)] + [example(f"e{i}") for i in range(500)])
    again_train, again_held_out = ExampleStore(tmp_path).split(0.2)  # another reader, more examples, corrections
    assert set(held_out["doc_id"]) == {d for d in again_held_out["doc_id"] if d.startswith("d")}
    assert set(train["doc_id"]) == {d for d in again_train["doc_id"] if d.startswith("d")}
    assert set(held_out["doc_id"]) <= set(store.split(0.3)[1]["doc_id"])
    assert all(is_held_out(d, 0.2) for d in held_out["doc_id"]) and not any(is_held_out(d, 0.2) for d in train["doc_id"])


def test_training_rows_come_from_the_train_side_only(tmp_path):
    store = ExampleStore(tmp_path)
    store.append([example(f"d{i}") for i in range(300)])
    train, held_out = store.split(0.2)
    assert store.training_rows("text", T0).doc_ids == list(train["doc_id"])
    assert store.training_rows("text", T0, side="held_out").doc_ids == list(held_out["doc_id"])
    with pytest.raises(ValueError):
        store.training_rows("text", T0, side="test")


# --- training rows -----------------------------------------------------------------------------


def test_training_rows_have_the_inputs_of_each_kind(tmp_path):
    store = ExampleStore(tmp_path)
    store.append([example("t1", "invoice"), example("s1", "offer", kind="scan"), example("i1", "complaint", kind="image"),
                  example("old", "other", model_kind="", model_text=None)])  # no inputs: before prediction.v3
    rows = {kind: store.training_rows(kind, T0, held_out_share=0.0) for kind in ("text", "scan", "image")}
    assert {kind: r.doc_ids for kind, r in rows.items()} == {"text": ["t1"], "scan": ["s1"], "image": ["i1", "s1"]}
    assert set(rows["text"].inputs) == {"text", "context"} and rows["text"].inputs["text"] == ["text of t1"]
    assert list(rows["scan"].inputs) == ["text", "image_features", "context"]
    assert list(rows["image"].inputs) == ["image_features", "context"] and rows["image"].inputs["image_features"].shape == (2, N_IMAGE)
    assert list(rows["image"].labels) == ["complaint", "offer"]
    context = rows["text"].inputs["context"]
    assert context.dtype == np.float32 and context.shape == (1, N_CONTEXT)
    expected = [{"sender_docs_1h": 2.0, "sender_seen_log": 1.5}.get(name, 0.0) for name in SENDER_FEATURES]
    assert context[0].tolist() == expected
    for kind, r in rows.items():  # the shape the models take
        assert sklearn_matrix(kind, r.inputs).shape[0] == len(r)


def test_recent_examples_weigh_more_halving_every_half_life(tmp_path):
    store = ExampleStore(tmp_path)
    ages = {"now": 0, "one": 10 * DAY_MS, "two": 20 * DAY_MS, "future": -DAY_MS}
    store.append([example(doc_id, predicted_ms=T0 - age) for doc_id, age in ages.items()])
    rows = store.training_rows("text", T0, half_life_days=10, held_out_share=0.0)
    weights = dict(zip(rows.doc_ids, rows.weights))
    assert weights == pytest.approx({"now": 1.0, "one": 0.5, "two": 0.25, "future": 1.0})
    assert recency_weights(np.array([T0 - 5 * DAY_MS]), T0, 10)[0] == pytest.approx(0.5 ** 0.5)


# --- compaction --------------------------------------------------------------------------------


def test_compaction_keeps_the_examples_in_force(tmp_path):
    store = ExampleStore(tmp_path)
    for i in range(5):
        store.append([example(f"d{j}", LABELS[(i + j) % len(LABELS)], i, T0 + i * MINUTE, kind=("text", "scan", "image")[j % 3])
                      for j in range(20)])
    store.append([example("d0", "other", 0, T0)])  # a late old revision
    before = store.current()
    assert len(store.parts()) == 6
    store.compact()
    assert len(store.parts()) == 1
    pd.testing.assert_frame_equal(store.current(), before)
    store.append([example("d1", "offer", 9, T0 + 9 * MINUTE)])
    assert in_force(store)["d1"] == ("offer", 9, "CORRECT") and len(store.current()) == 20
    assert not list(tmp_path.glob(".*"))  # no temporary files left
