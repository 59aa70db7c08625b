"""The pure parts of `mailroom bench`: figures, the report's shape, the peer's scoring loop."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from mailroom.bench.figures import Result, goal, goal_line, percentiles, report, sustained_window
from mailroom.bench.output import plot, table
from mailroom.bench.peer import PeerScorer, fast_kafka_crc
from mailroom.bench.sampling import Usage
from schemas import codec
from tests.unit.badinputs import valid_text_document
from models.features import SENDER_FEATURES
from udfs.scoring import ScoredBatch
from udfs.routing import Router, RouterConfig


def test_percentiles_interpolate_linearly():
    assert percentiles(range(1, 101)) == {"p50": 50.5, "p95": 95.0, "p99": 99.0}
    assert percentiles([7]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert percentiles([], points=(50, 90)) == {"p50": None, "p90": None}


def test_sustained_window_counts_micro_batches_once_they_are_done():
    # ten batches of 100 documents, one per second: 100 docs/s whatever the quantiles cut
    times = [1_000 * (i // 100) for i in range(1000)]
    window = sustained_window(times)
    assert (window.start_ms, window.end_ms, window.records) == (0, 9_000, 900)
    assert window.rate == 100.0


def test_sustained_window_leaves_out_a_slow_start_and_stragglers():
    times = [0] + [10_000 + 10 * i for i in range(1000)] + [60_000]  # start-up and one straggler
    assert sustained_window(times).rate == pytest.approx(100.0, rel=0.01)


def test_sustained_window_needs_time_to_pass():
    assert sustained_window([]) is None
    assert sustained_window([5]) is None
    assert sustained_window([5] * 50) is None


def test_usage_interpolates_cpu_between_samples():
    usage = Usage([(0.0, 10.0, 100.0, 50.0), (1.0, 11.0, 300.0, 51.5), (2.0, 13.0, 200.0, 53.0)])
    assert usage.cpu_s == 3.0
    assert usage.peak_rss_mb == 300.0
    assert usage.machine_busy_cores == 1.5 and usage.own_cores == 1.5
    assert usage.cpu_between(0.5, 1.5) == pytest.approx(1.5)
    assert Usage().cpu_s is None and Usage().peak_rss_mb is None and Usage().machine_busy_cores is None and Usage().own_cores is None


def _results() -> list[Result]:
    latency = {"p50": 120.0, "p95": 300.0, "p99": 420.0}
    return [
        Result("limit", "mixed 30% scans", None, 1000, 50_000, cpu_ms_per_doc=0.02),
        Result("router", "text", 1, 20_000, 3_600, cpu_s=30.0, cpu_ms_per_doc=0.4, peak_rss_mb=900.0, wall_s=16.0, first_output_s=11.0),
        Result("peer", "mixed 30% scans", 1, 1000, 400, 200, latency, latency, 12.0, 2.4, 250.0),
        Result("peer", "mixed 30% scans", 2, 1000, 600, 300, latency, latency, 14.0, 2.6, 500.0),
        Result("mailroom", "mixed 30% scans", 1, 1000, 300, 150, {"p50": 1500.0, "p95": 2500.0, "p99": 2900.0}, latency, 40.0, 3.1, 1200.0),
    ]


def test_goal_compares_mailroom_and_peer_at_the_same_parallelism_only():
    results = _results()
    assert goal(results) == {"p1": 0.75}
    assert "0.75x at p1 (300 vs 400 docs/s)" in goal_line(results)
    assert "exactly-once" in goal_line(results)
    assert goal(results[:2]) == {}
    assert "needs the peer and mailroom" in goal_line(results[:2])


def test_report_is_json_with_one_entry_per_result():
    results = _results()
    data = json.loads(json.dumps(report(results, {"run_id": "r1", "docs": 1000}, ["router scans failed"])))
    assert data["run_id"] == "r1" and data["errors"] == ["router scans failed"]
    assert data["goal"] == {"p1": 0.75}
    assert [r["label"] for r in data["results"]] == ["limit mixed 30% scans", "router text p1", "peer mixed 30% scans p1",
                                                     "peer mixed 30% scans p2", "mailroom mixed 30% scans p1"]
    first = data["results"][0]
    assert first["docs_per_s"] == 50_000 and first["latency_ms"] is None
    assert data["results"][4]["latency_ms"] == {"p50": 1500.0, "p95": 2500.0, "p99": 2900.0}


def test_table_has_a_row_per_result_and_the_goal_line_as_caption():
    rendered = table(_results())
    assert rendered.row_count == 5
    assert [c.header for c in rendered.columns][:5] == ["variant", "input", "p", "docs", "docs/s"]
    assert rendered.caption.startswith("Goal: ")


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "bench.png"
    plot(_results(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the peer's loop, with a stand-in for BatchScorer ------------------------------------------


class LabelsEverythingAnInvoice:
    """Stands in for BatchScorer: same call, same output shape, no models."""

    def __init__(self):
        self.batches = []

    def score(self, batch, now_ms):
        self.batches.append(batch)
        return ScoredBatch([("finance", codec.encode("prediction", {
            "doc_id": doc.doc_id, "sender": doc.sender, "content_type": doc.content_type, "label": "invoice",
            "probabilities": {"invoice": 1.0}, "model_name": "stand-in", "model_version": "0", "feature_set_id": "sender-v1",
            "department": "finance", "received_ms": doc.received_ms, "scored_ms": now_ms, "latency_ms": now_ms - doc.received_ms,
        })) for doc in batch])


def _routed(doc_id: str) -> bytes:
    result = Router(RouterConfig()).route(valid_text_document(doc_id), "docs", 0, 0, now_ms=1_750_000_100_000)
    assert result.destination.value == "routed_text", result.message
    return result.value


def test_peer_scores_full_batches_and_feeds_labels_back_into_the_sender_history():
    stand_in = LabelsEverythingAnInvoice()
    peer = PeerScorer(SimpleNamespace(batch_size=2, max_batch_delay_ms=200), scorer=stand_in)
    assert peer.add(_routed("a"), now_ms=1_000) == []
    scored = peer.add(_routed("b"), now_ms=1_050)
    assert [department for department, _ in scored] == ["finance", "finance"]
    assert [codec.decode(p, expected="prediction").record["doc_id"] for _, p in scored] == ["a", "b"]
    (history,) = peer.histories.values()  # both documents come from the same sender
    assert history.docs == 2 and list(history.labels) == ["invoice", "invoice"]
    assert peer.add(_routed("c"), now_ms=2_000) == []
    features = dict(zip(SENDER_FEATURES, peer.pending[0].features))
    assert features["sender_label_share_invoice"] == 1.0 and features["sender_seen_log"] > 0


def test_peer_flushes_a_partial_batch_when_its_oldest_document_waited_long_enough():
    peer = PeerScorer(SimpleNamespace(batch_size=100, max_batch_delay_ms=200), scorer=LabelsEverythingAnInvoice())
    assert peer.wait_ms(now_ms=0) == 100  # idle: poll at most this long
    peer.add(_routed("a"), now_ms=1_000)
    assert peer.wait_ms(now_ms=1_150) == 50
    assert peer.wait_ms(now_ms=1_300) == 0
    assert len(peer.flush(now_ms=1_300)) == 1
    assert peer.flush(now_ms=1_400) == [] and peer.wait_ms(now_ms=1_400) == 100


def test_peer_batches_by_size_with_the_shared_policy():
    stand_in = LabelsEverythingAnInvoice()
    peer = PeerScorer(SimpleNamespace(batch_size=3, max_batch_delay_ms=200), scorer=stand_in)
    flushed = [len(peer.add(_routed(f"d{i}"), now_ms=1_000 + i)) for i in range(7)]
    assert flushed == [0, 0, 3, 0, 0, 3, 0]
    assert [len(batch) for batch in stand_in.batches] == [3, 3]
    assert len(peer.pending) == 1 and peer.batcher.size(0) == 1


def test_peer_wait_counts_down_from_the_first_pending_document():
    peer = PeerScorer(SimpleNamespace(batch_size=10, max_batch_delay_ms=200), scorer=LabelsEverythingAnInvoice())
    assert peer.wait_ms(now_ms=500, idle_ms=30) == 30 and not peer.is_due(now_ms=500)
    peer.add(_routed("a"), now_ms=1_000)
    assert peer.wait_ms(now_ms=1_000) == 200
    peer.add(_routed("b"), now_ms=1_120)  # a later document does not restart the clock
    assert peer.wait_ms(now_ms=1_120) == 80 and not peer.is_due(now_ms=1_199)
    assert peer.wait_ms(now_ms=5_000) == 0 and peer.is_due(now_ms=1_200)


def test_peer_flush_empties_the_batch_and_restarts_the_clock():
    stand_in = LabelsEverythingAnInvoice()
    peer = PeerScorer(SimpleNamespace(batch_size=10, max_batch_delay_ms=200), scorer=stand_in)
    peer.add(_routed("a"), now_ms=1_000)
    peer.add(_routed("b"), now_ms=1_010)
    assert len(peer.flush(now_ms=1_050)) == 2 and [len(b) for b in stand_in.batches] == [2]
    assert peer.pending == [] and peer.batcher.size(0) == 0 and peer.wait_ms(now_ms=1_050) == 100
    peer.add(_routed("c"), now_ms=3_000)
    assert peer.wait_ms(now_ms=3_050) == 150
    assert peer.flush(now_ms=3_100) and peer.flush(now_ms=3_100) == [] and stand_in.batches[-1][0].doc_id == "c"


def test_fast_kafka_crc_computes_the_same_checksum():
    from kafka.record import default_records
    from kafka.record._crc32c import crc as pure_python

    fast_kafka_crc()
    data = bytearray(os.urandom(5000))
    assert default_records.calc_crc32c(memoryview(data)[61:]) == pure_python(memoryview(data)[61:])
