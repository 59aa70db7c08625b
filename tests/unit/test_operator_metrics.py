"""The operator metrics' plain side: counts, the flush policy, what a routed message, a read
scan, a scored batch, a join and an alert state contribute."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from schemas.metric_names import (
    ALERT_OPEN, BATCH_DOCUMENTS, BATCH_SCORE_MS, BATCH_SIZE, BATCHES, CONTENT, DEAD_LETTERS, DELIVERED, DOCUMENTS_IN, JOIN_OUTCOMES,
    LATENCY_MS, MODEL_VERSION, OCR_PAGES, OCR_SCANS, POPULATION, PREDICTED, PREDICTIONS, ROUTED, SHADOW_DISAGREEMENTS, SHADOW_PAIRS,
)
from models.features import SENDER_FEATURES
from udfs.dead_letters import Reason, SourceRecord
from udfs.joining import LateTruth, Matched, OrphanTruth, Predicted, Truth
from udfs.model_slots import ModelSlots
from udfs.operator_metrics import (
    AlertStates, FlushPolicy, MetricCounts, batch_counts, join_counts, quantiles, reading_counts, route_counts, routed_counts,
    version_counts,
)
from udfs.routing import Destination, RoutingResult
from udfs.scoring import Decision, PendingDocument, ScoredBatch


def test_counts_add_up_by_label_values_and_take_empties_them():
    counts = MetricCounts()
    counts.add(ROUTED, "text")
    counts.add(ROUTED, "text", n=2)
    counts.add(ROUTED, "scans", n=0)  # nothing to push
    counts.set(BATCH_SIZE, value=7.0)
    counts.set(BATCH_SIZE, value=9)
    increments, last = counts.take()
    assert increments == {(ROUTED, ("text",)): 3} and last == {(BATCH_SIZE, ()): 9}
    assert isinstance(last[(BATCH_SIZE, ())], int) and not counts


@pytest.mark.parametrize("call", [lambda c: c.add(ROUTED), lambda c: c.add(BATCH_SIZE), lambda c: c.set(ROUTED, "text", value=1)])
def test_counts_refuse_wrong_labels_or_kind(call):
    with pytest.raises(ValueError):
        call(MetricCounts())


def test_flush_policy_pushes_after_the_interval_or_enough_records_never_when_nothing_is_pending():
    policy = FlushPolicy(interval_ms=1000, max_records=3)
    policy.started(0)
    assert not policy.due(5000)  # a timer with nothing counted
    assert [policy.record(t) for t in (100, 200, 300)] == [False, False, True]  # N records
    assert not policy.record(400) and not policy.due(1299)
    assert policy.due(1300)  # a timer a second after the last push
    assert policy.record(2400)  # one record, but a second has passed


def test_route_counts_count_every_message_and_the_dead_letters_reason():
    counts = MetricCounts()
    route_counts(counts, RoutingResult(Destination.TEXT, b"", "d1"))
    route_counts(counts, RoutingResult(Destination.DEAD_LETTER, b"", None, Reason.UNDECODABLE))
    routed_counts(counts, Destination.TEXT.value)
    routed_counts(counts, Destination.SCANS.value)
    routed_counts(counts, None)
    assert counts.take()[0] == {(DOCUMENTS_IN, ()): 2, (DEAD_LETTERS, ("UNDECODABLE",)): 1, (ROUTED, ("text",)): 1,
                                (ROUTED, ("scans",)): 1, (DEAD_LETTERS, ("DUPLICATE_ID",)): 1}


def test_reading_counts():
    counts = MetricCounts()
    reading_counts(counts, 2, "READ")
    reading_counts(counts, 0, "OVER_BUDGET")
    assert counts.take()[0] == {(OCR_PAGES, ()): 2, (OCR_SCANS, ("READ",)): 1, (OCR_SCANS, ("OVER_BUDGET",)): 1}


def test_quantiles_are_nearest_rank_ints():
    assert quantiles([5]) == {"p50": 5, "p95": 5, "p99": 5}
    assert quantiles([10, 20, 30, 40]) == {"p50": 20, "p95": 40, "p99": 40}
    assert quantiles([]) == {}


def _doc(doc_id: str, content_type: str, text: str | None, received_ms: int, seen: int = 0) -> PendingDocument:
    features = [0.0] * len(SENDER_FEATURES)
    features[SENDER_FEATURES.index("sender_seen_log")] = float(np.log1p(seen))
    return PendingDocument(doc_id, "s@x", content_type, text, None, received_ms, features, SourceRecord(b"", "t", 0, 0))


def test_batch_counts_of_a_scored_batch():
    docs = [_doc("a", "TEXT", "x" * 50, 1_000), _doc("b", "TEXT", "x" * 500, 1_900, seen=5), _doc("c", "IMAGE", None, 1_500)]
    scored = ScoredBatch(decisions=[Decision(docs[0], "text", "champion", "invoice", "finance"),
                                    Decision(docs[1], "text", "fallback", "cv", "hr"),
                                    Decision(docs[2], "image", "champion", "invoice", "triage")],
                         shadow_pairs=Counter(text=2), shadow_disagreements=Counter(text=1))
    increments, last = batch_counts(scored, size=4, score_ms=12.6, now_ms=2_000).take()  # one of the 4 failed
    assert last == {(BATCH_SIZE, ()): 4, (BATCH_SCORE_MS, ()): 13,
                    (LATENCY_MS, ("p50",)): 500, (LATENCY_MS, ("p95",)): 1000, (LATENCY_MS, ("p99",)): 1000}
    assert increments[(BATCHES, ())] == 1 and increments[(BATCH_DOCUMENTS, ())] == 4
    assert {k[1]: n for k, n in increments.items() if k[0] is DELIVERED} == {("finance",): 1, ("hr",): 1, ("triage",): 1}
    assert {k[1]: n for k, n in increments.items() if k[0] is PREDICTED} == {("invoice",): 2, ("cv",): 1}
    assert {k[1]: n for k, n in increments.items() if k[0] is PREDICTIONS} == {("text", "champion"): 1, ("text", "fallback"): 1,
                                                                               ("image", "champion"): 1}
    assert {k[1]: n for k, n in increments.items() if k[0] is CONTENT} == {("TEXT",): 2, ("IMAGE",): 1}
    population = {k[1]: n for k, n in increments.items() if k[0] is POPULATION}
    assert population[("text", "text_length", "0-100")] == 1 and population[("text", "text_length", "300-1000")] == 1
    assert population[("text", "sender_seen", "3-10")] == 1 and population[("image", "label", "invoice")] == 1
    assert not any(k[0] == "image" and k[1] == "text_length" for k in population)  # the layout model reads no text
    assert increments[(SHADOW_PAIRS, ("text",))] == 2 and increments[(SHADOW_DISAGREEMENTS, ("text",))] == 1


class _Scorer:
    def __init__(self, version):
        self.name, self.version = "m", version


def test_version_counts_name_every_slot_of_every_kind():
    slots = ModelSlots({"text": _Scorer("3"), "image": _Scorer("1")}, load=None)
    last = version_counts(slots.versions()).take()[1]
    assert last[(MODEL_VERSION, ("text", "champion"))] == 3 and last[(MODEL_VERSION, ("image", "champion"))] == 1
    assert last[(MODEL_VERSION, ("text", "challenger"))] == 0 and len(last) == 6


def test_join_counts_one_outcome_per_event_not_for_predictions():
    truth = Truth({"label": "cv"}, 5)
    counts = MetricCounts()
    join_counts(counts, [Predicted(None), Matched(None), OrphanTruth(truth), LateTruth(truth, ("m", "1", "champion")), Matched(None)])
    assert counts.take()[0] == {(JOIN_OUTCOMES, ("matched",)): 2, (JOIN_OUTCOMES, ("orphan",)): 1, (JOIN_OUTCOMES, ("late",)): 1}


def test_alert_open_follows_the_newest_version_of_a_model_in_a_slot():
    alerts = AlertStates()
    assert alerts.update("text-clf", "2", "champion", True) == 1
    assert alerts.update("text-clf", "3", "champion", False) == 0  # the new champion
    assert alerts.update("text-clf", "2", "champion", True) == 0  # the old one's windows draining
    assert alerts.update("text-clf", "2", "fallback", True) == 1
    assert alerts.counts("text-clf", "3", "champion", True).take()[1] == {(ALERT_OPEN, ("text-clf", "champion")): 1}
