"""udfs/joining.py: matching in either order, waits, late and orphan truths, duplicates and
corrections, and the books balancing (every input ends as exactly one counted outcome), for
predictions (with their slot) and for shadow pairs (ShadowJoiner: the same rules)."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import pytest

from schemas.labels import DEPARTMENTS, LABELS
from schemas import codec
from udfs.joining import (Corrected, DuplicatePrediction, DuplicateTruth, JoinConfig, Joiner, LabelledShadow, LateTruth, Matched,
                          OrphanTruth, PairState, Predicted, ShadowJoiner, StaleTruth, Unmatched, labelled_examples,
                          labelled_shadow_pairs)

T0 = 1_750_000_000_000
MINUTE = 60_000
CONFIG = JoinConfig()
WAIT, EARLY = CONFIG.truth_wait_ms, CONFIG.prediction_wait_ms
END_OF_TIME = 2**63 - 1  # Flink's final watermark of a bounded input


def prediction(doc_id: str, label: str = "invoice", received_ms: int = T0, model=("mailroom-text", "3")) -> dict:
    return {"doc_id": doc_id, "sender": "s@x.example", "content_type": "TEXT", "label": label,
            "probabilities": {label: 0.8, "other": 0.2}, "model_name": model[0], "model_version": model[1],
            "feature_set_id": "sender-v1", "department": DEPARTMENTS[label], "received_ms": received_ms,
            "scored_ms": received_ms + 50, "latency_ms": 50, "features": {"sender_docs_1h": 2.0}}


def truth(doc_id: str, label: str = "invoice", sent_ms: int = T0 + MINUTE, kind: str = "CONFIRM") -> dict:
    return {"doc_id": doc_id, "label": label, "department": DEPARTMENTS[label], "sent_ms": sent_ms, "kind": kind, "comment": None}


PAIR = ("text", "mailroom-text", "3", "mailroom-text", "4")


def shadow(doc_id: str, champion: str = "invoice", challenger: str = "offer", received_ms: int = T0) -> dict:
    """A shadow_prediction record of PAIR."""
    return {"doc_id": doc_id, "kind": "text", "received_ms": received_ms, "scored_ms": received_ms + 50, "champion_model": "mailroom-text",
            "champion_version": "3", "champion_label": champion, "champion_probabilities": {champion: 1.0}, "champion_latency_ms": 1.0,
            "challenger_model": "mailroom-text", "challenger_version": "4", "challenger_label": challenger,
            "challenger_probabilities": {challenger: 1.0}, "challenger_latency_ms": 1.0}


class Harness:
    """Drives a Joiner as the Flink adapter does: state per doc_id, event-time timers that fire
    (in time order) when the watermark passes them, state cleared when the joiner says None.
    `prediction` takes a prediction record, or a shadow pair with a ShadowJoiner."""

    def __init__(self, config: JoinConfig = CONFIG, joiner_type: type[Joiner] = Joiner):
        self.joiner = joiner_type(config)
        self.states: dict[str, PairState] = {}
        self.timers: set[tuple[int, str]] = set()
        self.events: list = []

    def prediction(self, record: dict, at_ms: int | None = None) -> list:
        at_ms = record["received_ms"] if at_ms is None else at_ms
        return self._keep(record["doc_id"], *self.joiner.on_prediction(self.states.get(record["doc_id"]), record, at_ms))

    def truth(self, record: dict, at_ms: int | None = None) -> list:
        at_ms = record["sent_ms"] if at_ms is None else at_ms
        return self._keep(record["doc_id"], *self.joiner.on_truth(self.states.get(record["doc_id"]), record, at_ms))

    def advance(self, watermark: int) -> list:
        fired = []
        while due := sorted(t for t in self.timers if t[0] <= watermark):
            timer_ms, key = due[0]
            self.timers.discard(due[0])
            fired += self._keep(key, *self.joiner.on_timer(self.states.get(key), timer_ms))
        return fired

    def _keep(self, key: str, state: PairState | None, events: list) -> list:
        if state is None:
            self.states.pop(key, None)
        else:
            self.states[key] = state
            if state.next_timer_ms() is not None:
                self.timers.add((state.next_timer_ms(), key))
        self.events += events
        return events


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


# --- matching in either order ----------------------------------------------------------------


def test_prediction_then_truth_and_truth_then_prediction_give_the_same_pair():
    first, second = Harness(), Harness()
    first.prediction(prediction("d1", "invoice"))
    first.truth(truth("d1", "offer", kind="CORRECT"))
    second.truth(truth("d1", "offer", kind="CORRECT"))
    second.prediction(prediction("d1", "invoice"))
    assert kinds(first.events) == kinds(second.events) == ["Predicted", "Matched"]
    pair = first.events[1].pair
    assert pair == second.events[1].pair
    assert (pair.predicted, pair.actual, pair.correct, pair.model) == ("invoice", "offer", False, ("mailroom-text", "3", "champion"))
    assert (pair.predicted_ms, pair.truth_sent_ms, pair.matched_ms, pair.revision) == (T0, T0 + MINUTE, T0 + MINUTE, 0)
    assert pair.features == {"sender_docs_1h": 2.0} and pair.probabilities == {"invoice": 0.8, "other": 0.2}


def test_a_truth_slightly_before_its_prediction_in_event_time_matches_with_the_later_time():
    h = Harness()
    h.truth(truth("d1", sent_ms=T0 - 10 * MINUTE))
    h.prediction(prediction("d1", received_ms=T0))
    assert kinds(h.events) == ["Predicted", "Matched"] and h.events[1].pair.matched_ms == T0


def test_inserting_the_prediction_anywhere_among_the_truths_gives_the_same_events():
    rng = random.Random(7)
    for _ in range(200):
        truths = [truth("d", rng.choice(LABELS[:3]), T0 + rng.randint(0, 10) * MINUTE, rng.choice(["CONFIRM", "CORRECT"]))
                  for _ in range(rng.randint(1, 6))]
        runs = []
        for position in range(len(truths) + 1):
            h = Harness()
            for t in truths[:position]:
                h.truth(t)
            h.prediction(prediction("d", "invoice"))
            for t in truths[position:]:
                h.truth(t)
            runs.append([e for e in h.events if not isinstance(e, Predicted)])
        assert all(run == runs[0] for run in runs)


def test_the_verdict_in_force_does_not_depend_on_arrival_order():
    rng = random.Random(11)
    for _ in range(300):
        truths = [truth("d", rng.choice(LABELS[:3]), T0 + rng.randint(0, 5) * MINUTE, rng.choice(["CONFIRM", "CORRECT"]))
                  for _ in range(rng.randint(1, 6))]
        best = max(truths, key=lambda t: (t["kind"] == "CORRECT", t["sent_ms"], t["label"]))
        rng.shuffle(truths)
        h = Harness()
        h.prediction(prediction("d"))
        for t in truths:
            h.truth(t)
        final = [e for e in h.events if isinstance(e, (Matched, Corrected))][-1]
        assert (final.pair if isinstance(final, Matched) else final.new).actual == best["label"]
        assert kinds(h.events).count("Matched") == 1


# --- waits: unmatched, late, orphan ----------------------------------------------------------


def test_a_prediction_without_truth_is_unmatched_when_its_wait_ends_then_forgotten():
    h = Harness()
    h.prediction(prediction("d1"))
    assert h.states["d1"].next_timer_ms() == T0 + WAIT
    assert h.advance(T0 + WAIT - 1) == []
    expired = h.advance(T0 + WAIT)
    assert kinds(expired) == ["Unmatched"] and expired[0].expired_ms == T0 + WAIT
    assert h.states["d1"].closed and h.states["d1"].next_timer_ms() == T0 + WAIT + CONFIG.remember_closed_ms
    h.advance(END_OF_TIME)
    assert h.states == {}


def test_a_truth_after_the_wait_is_late_and_never_matched():
    h = Harness()
    h.prediction(prediction("d1"))
    h.advance(T0 + WAIT)
    h.truth(truth("d1", sent_ms=T0 + WAIT + MINUTE))
    assert kinds(h.events) == ["Predicted", "Unmatched", "LateTruth"]
    assert h.events[-1].model == ("mailroom-text", "3", "champion")


def test_lateness_is_decided_by_event_time_even_before_the_timer_fires():
    h = Harness()
    h.prediction(prediction("d1"))
    h.truth(truth("d1", sent_ms=T0 + WAIT))  # the watermark has not reached the deadline yet
    h.advance(END_OF_TIME)
    assert kinds(h.events) == ["Predicted", "LateTruth", "Unmatched"]


def test_a_correction_after_the_wait_is_late_and_the_pair_stays():
    h = Harness()
    h.prediction(prediction("d1", "invoice"))
    h.truth(truth("d1", "invoice"))
    h.advance(T0 + WAIT)
    h.truth(truth("d1", "offer", sent_ms=T0 + WAIT + 1, kind="CORRECT"))
    assert kinds(h.events) == ["Predicted", "Matched", "LateTruth"]


def test_a_truth_for_an_unknown_id_is_an_orphan_after_its_wait():
    h = Harness()
    h.truth(truth("ghost", sent_ms=T0))
    assert h.advance(T0 + EARLY - 1) == []
    orphaned = h.advance(T0 + EARLY)
    assert kinds(orphaned) == ["OrphanTruth"] and orphaned[0].model is None
    assert h.states == {}
    h.prediction(prediction("ghost", received_ms=T0 + EARLY + 1))  # too late for that truth: a new wait
    h.advance(END_OF_TIME)
    assert kinds(h.events) == ["OrphanTruth", "Predicted", "Unmatched"]


def test_a_truth_long_before_its_prediction_is_an_orphan_whatever_the_watermark():
    h = Harness()
    h.truth(truth("d1", sent_ms=T0 - EARLY))
    h.prediction(prediction("d1", received_ms=T0))
    assert kinds(h.events) == ["Predicted", "OrphanTruth"]


def test_early_truths_orphan_one_by_one():
    h = Harness()
    h.truth(truth("d1", "invoice", sent_ms=T0))
    h.truth(truth("d1", "offer", sent_ms=T0 + 30 * MINUTE, kind="CORRECT"))
    assert kinds(h.advance(T0 + EARLY)) == ["OrphanTruth"]
    h.prediction(prediction("d1", received_ms=T0 + EARLY + MINUTE))
    assert kinds(h.events)[1:] == ["Predicted", "Matched"] and h.events[-1].pair.actual == "offer"


# --- duplicates and corrections --------------------------------------------------------------


def test_an_identical_truth_twice_is_a_duplicate():
    h = Harness()
    h.prediction(prediction("d1"))
    h.truth(truth("d1"))
    h.truth(truth("d1"))
    assert kinds(h.events) == ["Predicted", "Matched", "DuplicateTruth"]
    assert h.events[-1].pair == h.events[1].pair


def test_a_wrong_confirm_then_a_correct_is_a_correction():
    h = Harness()
    h.prediction(prediction("d1", "invoice"))
    h.truth(truth("d1", "invoice", T0 + MINUTE, "CONFIRM"))
    h.truth(truth("d1", "offer", T0 + 2 * MINUTE, "CORRECT"))
    correction = h.events[-1]
    assert isinstance(correction, Corrected)
    assert (correction.old.actual, correction.new.actual) == ("invoice", "offer")
    assert (correction.old.revision, correction.new.revision) == (0, 1)
    assert correction.new.matched_ms == T0 + 2 * MINUTE and correction.truth.label == "offer"


def test_a_confirm_does_not_overrule_a_correct_unless_configured():
    records = [truth("d1", "offer", T0 + MINUTE, "CORRECT"), truth("d1", "invoice", T0 + 2 * MINUTE, "CONFIRM")]
    strict, newest = Harness(), Harness(JoinConfig(correct_outranks_confirm=False))
    for h in (strict, newest):
        h.prediction(prediction("d1", "invoice"))
        for record in records:
            h.truth(record)
    assert kinds(strict.events) == ["Predicted", "Matched", "StaleTruth"]
    assert kinds(newest.events) == ["Predicted", "Matched", "Corrected"] and newest.events[-1].new.actual == "invoice"


def test_an_older_correction_arriving_last_is_stale():
    h = Harness()
    h.prediction(prediction("d1", "invoice"))
    h.truth(truth("d1", "offer", T0 + 5 * MINUTE, "CORRECT"))
    h.truth(truth("d1", "complaint", T0 + 2 * MINUTE, "CORRECT"))
    assert kinds(h.events) == ["Predicted", "Matched", "StaleTruth"]
    assert h.events[-1].pair.actual == "offer"


def test_a_higher_ranked_duplicate_becomes_the_verdict_silently():
    h = Harness()
    h.prediction(prediction("d1", "invoice"))
    h.truth(truth("d1", "offer", T0 + 1 * MINUTE, "CORRECT"))
    h.truth(truth("d1", "offer", T0 + 9 * MINUTE, "CORRECT"))  # duplicate label, newer
    h.truth(truth("d1", "complaint", T0 + 5 * MINUTE, "CORRECT"))  # newer than the first, older than the second
    assert kinds(h.events) == ["Predicted", "Matched", "DuplicateTruth", "StaleTruth"]


def test_further_predictions_are_duplicates_while_open_and_after_closing():
    h = Harness()
    h.prediction(prediction("d1", "invoice"))
    h.prediction(prediction("d1", "offer", model=("mailroom-text", "4")))
    h.advance(T0 + WAIT)
    h.prediction(prediction("d1", "offer"))
    assert kinds(h.events) == ["Predicted", "DuplicatePrediction", "Unmatched", "DuplicatePrediction"]
    assert h.events[1].model == ("mailroom-text", "4", "champion")


# --- slots -----------------------------------------------------------------------------------


def test_a_prediction_names_its_slot_and_a_v1_prediction_reads_as_the_champion():
    old = {k: v for k, v in prediction("d1").items() if k != "features"}
    decoded = codec.decode(codec.encode("prediction", {**old, "features": {}}, version=1), expected="prediction").record
    _, events = Joiner().on_prediction(None, decoded, T0)
    assert decoded["slot"] == "champion" and events[0].model == ("mailroom-text", "3", "champion")
    h = Harness()
    h.prediction({**prediction("d2", "offer", model=("mailroom-text", "2")), "slot": "fallback", "fallback_reason": "v3 missed it"})
    h.truth(truth("d2", "offer"))
    pair = h.events[1].pair
    assert (pair.slot, pair.model, pair.correct) == ("fallback", ("mailroom-text", "2", "fallback"), True)


# --- shadow pairs: the same rules ------------------------------------------------------------


def test_a_shadow_pair_and_its_truth_join_in_either_order():
    first, second = Harness(joiner_type=ShadowJoiner), Harness(joiner_type=ShadowJoiner)
    first.prediction(shadow("d1", "invoice", "offer"))
    first.truth(truth("d1", "offer", sent_ms=T0 + MINUTE))
    second.truth(truth("d1", "offer", sent_ms=T0 + MINUTE))
    second.prediction(shadow("d1", "invoice", "offer"))
    assert kinds(first.events) == kinds(second.events) == ["Predicted", "Matched"]
    pair = first.events[1].pair
    assert pair == second.events[1].pair and isinstance(pair, LabelledShadow)
    assert (pair.model, pair.actual, pair.champion_correct, pair.challenger_correct) == (PAIR, "offer", False, True)
    assert (pair.predicted_ms, pair.truth_sent_ms, pair.matched_ms, pair.revision) == (T0, T0 + MINUTE, T0 + MINUTE, 0)


def test_a_correction_retracts_a_shadow_pair_and_late_or_stray_truth_is_never_matched():
    h = Harness(joiner_type=ShadowJoiner)
    h.prediction(shadow("d1", "invoice", "offer"))
    h.truth(truth("d1", "offer", T0 + MINUTE))
    h.truth(truth("d1", "invoice", T0 + 2 * MINUTE, "CORRECT"))
    h.truth(truth("d1", "offer", T0 + 3 * MINUTE, "CONFIRM"))  # a CONFIRM does not overrule the CORRECT
    h.prediction(shadow("d2"))
    h.truth(truth("ghost", sent_ms=T0))  # a document outside the challenger's sample
    h.advance(T0 + WAIT)
    h.truth(truth("d2", sent_ms=T0 + WAIT))
    assert kinds(h.events) == ["Predicted", "Matched", "Corrected", "StaleTruth", "Predicted", "OrphanTruth", "Unmatched", "LateTruth"]
    corrected = h.events[2]
    assert (corrected.old.challenger_correct, corrected.new.champion_correct, corrected.new.revision) == (True, True, 1)
    assert {e.model for e in h.events} == {PAIR, None}
    h.advance(END_OF_TIME)
    assert h.states == {}


def test_labelled_shadow_pairs_carry_both_answers_the_truth_and_a_higher_revision_per_correction():
    h = Harness(joiner_type=ShadowJoiner)
    h.prediction({**shadow("d1", "invoice", "offer"), "champion_latency_ms": 2.5, "challenger_latency_ms": 4.0})
    h.truth(truth("d1", "offer", T0 + MINUTE))
    h.truth(truth("d1", "invoice", T0 + 2 * MINUTE, "CORRECT"))
    out = labelled_shadow_pairs(h.events)
    assert [(o.topic, o.key, o.record_type) for o in out] == [("labelled_shadow_pairs", "d1", "labelled_shadow_pair")] * 2
    first, second = (o.record for o in out)
    assert (first["true_label"], first["revision"], second["true_label"], second["revision"]) == ("offer", 0, "invoice", 1)
    assert (first["champion_label"], first["challenger_label"], first["champion_latency_ms"], first["challenger_latency_ms"]) == (
        "invoice", "offer", 2.5, 4.0)
    assert all(codec.decode(o.encode()).record == o.record for o in out)


# --- books balance ---------------------------------------------------------------------------


@pytest.mark.parametrize("joiner_type", [Joiner, ShadowJoiner], ids=["predictions", "shadow-pairs"])
def test_every_prediction_and_every_truth_ends_as_exactly_one_counted_outcome(joiner_type):
    rng = random.Random(3)
    inputs = []
    subject = prediction if joiner_type is Joiner else lambda doc, label, at: shadow(doc, label, rng.choice(LABELS), at)
    for i in range(400):
        doc, received = f"d{i}", T0 + i * MINUTE
        actual = rng.choice(LABELS)
        if rng.random() < 0.95:
            inputs.append(("prediction", subject(doc, rng.choice(LABELS), received)))
        if rng.random() < 0.03:
            inputs.append(("prediction", subject(doc, rng.choice(LABELS), received)))
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            delay = rng.choice([-2 * EARLY, -MINUTE, MINUTE, 3_600_000, 2 * WAIT])
            inputs.append(("truth", truth(doc, actual if rng.random() < 0.8 else rng.choice(LABELS), received + delay,
                                          rng.choice(["CONFIRM", "CORRECT"]))))
    rng.shuffle(inputs)  # any arrival order, and the watermark moves in between
    h = Harness(joiner_type=joiner_type)
    for step, (side, record) in enumerate(inputs):
        getattr(h, side)(record)
        if step % 50 == 0:
            h.advance(T0 + step * MINUTE - WAIT)
    h.advance(END_OF_TIME)

    count = Counter(kinds(h.events))
    predictions = sum(side == "prediction" for side, _ in inputs)
    truths = sum(side == "truth" for side, _ in inputs)
    assert count["Predicted"] + count["DuplicatePrediction"] == predictions
    assert count["Matched"] + count["Unmatched"] == count["Predicted"]
    assert sum(count[k] for k in ("Matched", "Corrected", "DuplicateTruth", "StaleTruth", "LateTruth", "OrphanTruth")) == truths
    assert min(count[k] for k in ("Matched", "Corrected", "DuplicateTruth", "StaleTruth", "LateTruth", "OrphanTruth", "Unmatched")) > 0
    assert h.states == {}


# --- state, timers, outputs ------------------------------------------------------------------


def test_state_is_plain_picklable_data_and_stale_timers_change_nothing():
    joiner = Joiner()
    state, _ = joiner.on_prediction(None, prediction("d1"), T0)
    state, _ = joiner.on_truth(state, truth("d1"), T0 + MINUTE)
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state
    assert joiner.on_timer(restored, T0 + 1) == (restored, [])
    assert joiner.on_timer(None, T0) == (None, [])


def test_labelled_examples_encode_with_their_schema():
    h = Harness()
    h.prediction(prediction("d1", "invoice"))
    h.truth(truth("d1", "invoice"))
    h.truth(truth("d1", "offer", T0 + 2 * MINUTE, "CORRECT"))
    examples = labelled_examples(h.events)
    assert [(o.topic, o.key, o.record["true_label"], o.record["revision"]) for o in examples] == [
        ("labelled_examples", "d1", "invoice", 0), ("labelled_examples", "d1", "offer", 1)]
    decoded = codec.decode(examples[1].encode(), expected="labelled_example")
    assert decoded.record == examples[1].record


def test_a_labelled_example_carries_the_model_inputs_of_its_prediction():
    text = {**prediction("t1", "invoice"), "model_text": "invoice for 40 chairs"}
    scan = {**prediction("s1", "offer", model=("mailroom-scan", "2")), "content_type": "IMAGE", "ocr_status": "READ",
            "model_text": "offer valid until", "image_features": [0.25, 0.5, 1.0]}
    layout = {**prediction("i1", "complaint", model=("mailroom-image", "1")), "content_type": "IMAGE", "ocr_status": "OVER_BUDGET",
              "model_text": None, "image_features": [0.75]}
    h = Harness()
    for record in (text, scan, layout):
        h.prediction(record)
        h.truth(truth(record["doc_id"], record["label"]))
    examples = {o.key: codec.decode(o.encode(), expected="labelled_example").record for o in labelled_examples(h.events)}
    inputs = {doc: (e["model_kind"], e["model_text"], e["image_features"], e["ocr_status"]) for doc, e in examples.items()}
    assert inputs == {"t1": ("text", "invoice for 40 chairs", [], None), "s1": ("scan", "offer valid until", [0.25, 0.5, 1.0], "READ"),
                      "i1": ("image", None, [0.75], "OVER_BUDGET")}
    assert examples["s1"]["features"] == {"sender_docs_1h": 2.0} and examples["s1"]["true_label"] == "offer"


def test_a_prediction_from_before_v3_gives_an_example_without_model_inputs():
    decoded = codec.decode(codec.encode("prediction", prediction("d1", model=("tfidf-logreg", "1")), version=2), expected="prediction").record
    h = Harness()
    h.prediction(decoded)
    h.truth(truth("d1"))
    (example,) = [o.record for o in labelled_examples(h.events)]
    assert (example["model_kind"], example["model_text"], example["image_features"], example["ocr_status"]) == ("", None, [], None)
    joiner = Joiner()  # join state stored before the join kept the model inputs
    state, _ = joiner.on_prediction(None, prediction("d2"), T0)
    for name in ("model_text", "image_features", "ocr_status"):
        del state.prediction.record[name]
    _, events = joiner.on_truth(state, truth("d2"), T0 + MINUTE)
    assert (events[0].pair.model_text, events[0].pair.image_features, events[0].pair.model_kind) == (None, (), "text")


def test_config_refuses_non_positive_waits():
    with pytest.raises(ValueError):
        JoinConfig(truth_wait_ms=0)


def test_every_event_names_its_model_except_orphans():
    h = Harness()
    h.prediction(prediction("d1"))
    h.truth(truth("d1"))
    h.truth(truth("d1"))
    h.truth(truth("d1", "offer", kind="CORRECT"))
    h.truth(truth("d1", "complaint", sent_ms=T0, kind="CONFIRM"))
    h.prediction(prediction("d1"))
    h.prediction(prediction("d2"))
    h.truth(truth("ghost"))
    h.advance(T0 + WAIT)
    h.truth(truth("d2", sent_ms=T0 + WAIT))
    models = {type(e): e.model for e in h.events}
    assert set(models) == {Predicted, Matched, DuplicateTruth, Corrected, StaleTruth, DuplicatePrediction, OrphanTruth, Unmatched, LateTruth}
    assert models.pop(OrphanTruth) is None
    assert set(models.values()) == {("mailroom-text", "3", "champion")}
