"""The pure parts of `mailroom bench`: figures, the report's shape, the shadow cost, the deploy-to-serving
reduction of model events, the peer's scoring loop."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from mailroom.bench.cli import _half_rate
from mailroom.bench.figures import (AT_LEAST_ONCE, CLUSTER, SHADOW, DeployFigures, Result, deploy_summary, deploy_timing, first_serving,
                                    goal, goal_line, percentiles, report, shadow_check, shadow_cost, shadow_line, spread, sustained_window,
                                    targets)
from mailroom.bench.output import deploy_table, plot, table, targets_table
from mailroom.bench.variants import _in_colour
from mailroom.memory import StackMemory, read_record, write_record
from mailroom.bench.peer import PeerScorer
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


# --- shadow scoring -------------------------------------------------------------------------------


def _with_shadow() -> list[Result]:
    plain_p99 = {"p50": 400.0, "p95": 800.0, "p99": 1000.0}
    return _results() + [
        Result(SHADOW, "mixed 30% scans", 1, 1000, 200, 100, {"p50": 500.0, "p95": 1100.0, "p99": 1500.0}, plain_p99, 45.0, 4.0, 1300.0,
               shadow=shadow_check([f"d{i}" for i in range(1100)], [f"d{i}" for i in range(1100)])),
        Result("mailroom", "mixed 30% scans", 2, 1000, 500, 250, plain_p99, plain_p99),
        Result(SHADOW, "mixed 30% scans", 2, 1000, 400, 200, None, None),  # no latency figures
    ]


def test_shadow_cost_is_plain_over_shadow_throughput_and_shadow_over_plain_p99_per_parallelism():
    results = _with_shadow()
    p1 = {"throughput": 1.5, "p99": 0.52, "cpu_per_doc": 1.29, "scored_p99": 2.38}  # CPU 4.0 vs 3.1 ms/doc, scored p99 1,000 vs 420 ms
    assert shadow_cost(results) == {"p1": p1, "p2": {"throughput": 1.25, "p99": None, "cpu_per_doc": None, "scored_p99": None}}
    assert shadow_cost(_results()) == {}  # no shadow row
    assert shadow_cost([r for r in results if not (r.variant == "mailroom" and r.parallelism == 2)]) == {"p1": p1}


def test_the_goal_line_says_what_shadow_costs_and_the_pair_count():
    line = goal_line(_with_shadow())
    assert line.startswith("Goal: Mailroom's scoring job sustains 0.75x at p1")  # the peer comparison stays first
    shadow = line.splitlines()[-1]
    assert shadow == shadow_line(_with_shadow())
    assert shadow.startswith("Shadow at 100% costs 1.50x throughput, 0.52x p99 at p1 (300 vs 200 docs/s; p99 2,900 vs 1,500 ms at half load; "
                             "CPU/doc 1.29x, scored p99 2.38x); 1,100 shadow pairs for 1,100 documents (one each); 1.25x throughput, ? p99 at p2")
    assert shadow.endswith("well under 2x.")
    assert shadow_line(_results()) is None and "Shadow" not in goal_line(_results())
    without_peer = [r for r in _with_shadow() if r.variant != "peer"]
    assert goal_line(without_peer).splitlines()[0].startswith("Goal line: needs the peer") and "Shadow at 100%" in goal_line(without_peer)


def test_shadow_check_wants_one_pair_per_scored_document():
    assert shadow_check(["a", "b", "c"], ["c", "a", "b"]) == {"documents": 3, "pairs": 3, "paired": 3, "missing": 0, "twice": 0,
                                                             "unexpected": 0, "ok": True}
    checked = shadow_check(["a", "b", "c"], ["a", "a", "b", "x"])
    assert checked == {"documents": 3, "pairs": 4, "paired": 2, "missing": 1, "twice": 1, "unexpected": 1, "ok": False}
    alone = [r for r in _with_shadow() if r.variant == SHADOW and r.parallelism == 1]
    assert shadow_line(alone) == ("Shadow at 100% (no mailroom row at the same parallelism to compare with): "
                                  "1,100 shadow pairs for 1,100 documents (one each) at p1.")
    assert "without a pair" in shadow_line([Result("mailroom", "m", 1, 3, 10, latency_ms={"p99": 1.0}),
                                            Result(SHADOW, "m", 1, 3, 5, latency_ms={"p99": 2.0}, shadow=checked)])


# --- deploy to serving ----------------------------------------------------------------------------


def _event(subtask: int, version: str, at_ms: int, slot: str = "CHAMPION", outcome: str = "SERVING", kind: str = "text") -> dict:
    return {"job": "scoring", "subtask": subtask, "kind": kind, "slot": slot, "outcome": outcome, "model_name": f"mailroom-{kind}",
            "version": version, "serving_version": version, "reason": None, "at_ms": at_ms}


def test_first_serving_keeps_each_subtasks_first_report_of_the_version_after_the_send():
    events = [(_event(0, "1", 900), 2_000),  # at start, before the deploy: not it
              (_event(0, "1", 1_000, slot="PREVIOUS"), 3_000),  # the deploy's PREVIOUS record
              (_event(1, "2", 1_150, outcome="REFUSED"), 3_000),
              (_event(0, "2", 1_120), 3_000), (_event(0, "2", 1_400), 5_000),  # a replay later: the first one counts
              (_event(1, "2", 1_300, kind="image"), 3_000),
              (_event(1, "2", 1_250), 3_100)]
    assert first_serving(events, "text", "CHAMPION", "2", since_ms=1_000) == {0: (1_120, 3_000), 1: (1_250, 3_100)}
    assert first_serving(events, "text", "CHAMPION", "1", since_ms=1_000) == {}
    assert first_serving(events, "text", "PREVIOUS", "1", since_ms=0) == {0: (1_000, 3_000)}


def test_deploy_timing_and_summary_per_subtask_and_of_the_slowest():
    first = deploy_timing("2", 1_000, {1: (1_250, 3_100), 0: (1_120, 3_000)}, call_ms=812.4)
    assert first == {"version": "2", "sent_ms": 1_000, "serving_ms": {0: 120, 1: 250}, "visible_ms": {0: 2_000, 1: 2_100},
                     "serving_max_ms": 250, "visible_max_ms": 2_100, "call_ms": 812}
    deploys = [first, deploy_timing("1", 10_000, {0: (10_300, 11_000), 1: (10_100, 12_500)}, 700),
               deploy_timing("2", 20_000, {0: (20_200, 21_000), 1: (20_180, 22_000)}, 650)]
    summary = deploy_summary(deploys)
    assert summary["deploys"] == 3
    assert summary["per_subtask_ms"] == {0: {"min": 120, "median": 200, "max": 300}, 1: {"min": 100, "median": 180, "max": 250}}
    assert summary["serving_max_ms"] == {"min": 200, "median": 250, "max": 300}
    assert summary["visible_max_ms"] == {"min": 2_000, "median": 2_100, "max": 2_500}
    assert summary["call_ms"] == {"min": 650, "median": 700, "max": 812}
    assert deploy_summary([])["serving_max_ms"] == spread([]) == {"min": None, "median": None, "max": None}


def test_deploys_in_the_report_and_their_table():
    figures = DeployFigures("text", 2, 150, [deploy_timing("2", 0, {0: (100, 2_000), 1: (130, 2_100)}, 500),
                                             deploy_timing("1", 0, {0: (90, 1_900), 1: (160, 2_200)}, 450)])
    data = json.loads(json.dumps(report(_with_shadow(), {"run_id": "r1"}, [], [figures])))
    assert data["shadow_cost"]["p1"]["throughput"] == 1.5 and data["shadow_cost"]["p1"]["p99"] == 0.52
    assert [r["shadow"] for r in data["results"] if r["variant"] == SHADOW][0]["ok"] is True
    (deploy,) = data["deploy_to_serving"]
    assert deploy["parallelism"] == 2 and deploy["offered_per_s"] == 150 and len(deploy["deploys"]) == 2
    assert deploy["summary"]["serving_max_ms"] == {"min": 130, "median": 145, "max": 160}
    assert deploy["summary"]["per_subtask_ms"]["1"]["max"] == 160  # JSON keys are strings
    rendered = deploy_table([figures, DeployFigures("text", 1, None, [deploy_timing("2", 0, {0: (80, 1_000)}, 400)])])
    assert rendered.row_count == 5 + 4  # p2: two subtasks, slowest, visible, call; p1: one subtask and the three
    assert list(rendered.columns[3].cells) [:5] == ["subtask 0", "subtask 1", "all serving (max)", "all visible (max)", "deploy call"]
    assert list(rendered.columns[1].cells)[5] == "idle"


def test_deploys_load_is_half_of_mailrooms_sustained_rate_at_that_parallelism():
    results = _with_shadow()
    assert _half_rate(results, 1) == 150 and _half_rate(results, 2) == 250
    assert _half_rate(results, 4) is None


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "bench.png"
    plot(_with_shadow(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the peer's loop, with a stand-in for BatchScorer ------------------------------------------


def peer_config(batch_size: int) -> SimpleNamespace:
    """What PeerScorer reads of a ScoringConfig (no OCR: the stand-in scorer scores only texts)."""
    from models.ocr import OcrConfig

    return SimpleNamespace(batch_size=batch_size, max_batch_delay_ms=200, ocr=OcrConfig(), read_scans=False, ocr_cache_dir=None)


class LabelsEverythingAnInvoice:
    """Stands in for BatchScorer: same call, same output shape, no models."""

    def __init__(self):
        self.batches = []

    def score(self, batch, now_ms):
        self.batches.append(batch)
        return ScoredBatch([("finance", b"the department document", codec.encode("prediction", {
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
    peer = PeerScorer(peer_config(batch_size=2), scorer=stand_in)
    assert peer.add(_routed("a"), now_ms=1_000) == []
    scored = peer.add(_routed("b"), now_ms=1_050)
    assert [department for department, _, _ in scored] == ["finance", "finance"]
    assert [codec.decode(p, expected="prediction").record["doc_id"] for _, _, p in scored] == ["a", "b"]
    (history,) = peer.histories.values()  # both documents come from the same sender
    assert history.docs == 2 and list(history.labels) == ["invoice", "invoice"]
    assert peer.add(_routed("c"), now_ms=2_000) == []
    features = dict(zip(SENDER_FEATURES, peer.pending[0].features))
    assert features["sender_label_share_invoice"] == 1.0 and features["sender_seen_log"] > 0


def test_peer_flushes_a_partial_batch_when_its_oldest_document_waited_long_enough():
    peer = PeerScorer(peer_config(batch_size=100), scorer=LabelsEverythingAnInvoice())
    assert peer.wait_ms(now_ms=0) == 100  # idle: poll at most this long
    peer.add(_routed("a"), now_ms=1_000)
    assert peer.wait_ms(now_ms=1_150) == 50
    assert peer.wait_ms(now_ms=1_300) == 0
    assert len(peer.flush(now_ms=1_300)) == 1
    assert peer.flush(now_ms=1_400) == [] and peer.wait_ms(now_ms=1_400) == 100


def test_peer_batches_by_size_with_the_shared_policy():
    stand_in = LabelsEverythingAnInvoice()
    peer = PeerScorer(peer_config(batch_size=3), scorer=stand_in)
    flushed = [len(peer.add(_routed(f"d{i}"), now_ms=1_000 + i)) for i in range(7)]
    assert flushed == [0, 0, 3, 0, 0, 3, 0]
    assert [len(batch) for batch in stand_in.batches] == [3, 3]
    assert len(peer.pending) == 1 and peer.batcher.size(0) == 1


def test_peer_wait_counts_down_from_the_first_pending_document():
    peer = PeerScorer(peer_config(batch_size=10), scorer=LabelsEverythingAnInvoice())
    assert peer.wait_ms(now_ms=500, idle_ms=30) == 30 and not peer.is_due(now_ms=500)
    peer.add(_routed("a"), now_ms=1_000)
    assert peer.wait_ms(now_ms=1_000) == 200
    peer.add(_routed("b"), now_ms=1_120)  # a later document does not restart the clock
    assert peer.wait_ms(now_ms=1_120) == 80 and not peer.is_due(now_ms=1_199)
    assert peer.wait_ms(now_ms=5_000) == 0 and peer.is_due(now_ms=1_200)


def test_peer_flush_empties_the_batch_and_restarts_the_clock():
    stand_in = LabelsEverythingAnInvoice()
    peer = PeerScorer(peer_config(batch_size=10), scorer=stand_in)
    peer.add(_routed("a"), now_ms=1_000)
    peer.add(_routed("b"), now_ms=1_010)
    assert len(peer.flush(now_ms=1_050)) == 2 and [len(b) for b in stand_in.batches] == [2]
    assert peer.pending == [] and peer.batcher.size(0) == 0 and peer.wait_ms(now_ms=1_050) == 100
    peer.add(_routed("c"), now_ms=3_000)
    assert peer.wait_ms(now_ms=3_050) == 150
    assert peer.flush(now_ms=3_100) and peer.flush(now_ms=3_100) == [] and stand_in.batches[-1][0].doc_id == "c"


def test_kafka_python_checksums_with_the_locked_c_crc32c():
    """kafka-python checksums every record batch; in pure Python that is ~12 ms per 150 KB scan here, with the
    locked crc32c package ~5 us. It must find the package by itself, and agree with its pure-Python checksum."""
    from kafka.record import default_records, util
    from kafka.record._crc32c import crc as pure_python

    assert util.crc32c_c is not None  # the crc32c wheel from the lock
    data = bytearray(os.urandom(5000))
    assert default_records.calc_crc32c(memoryview(data)[61:]) == pure_python(memoryview(data)[61:])

def _rows_for_targets(**rates) -> list[Result]:
    rows = [Result("peer", "m", 1, 9, rates.get("peer1", 10.0)), Result("peer", "m", 2, 9, rates.get("peer2", 18.0)),
            Result("mailroom", "m", 1, 9, rates.get("mailroom1", 12.0), latency_ms={"p99": rates.get("eo_p99", 1200.0)}),
            Result("mailroom", "m", 2, 9, rates.get("mailroom2", 13.0)),
            Result(AT_LEAST_ONCE, "m", 1, 9, 12.0, latency_ms={"p99": rates.get("alo_p99", 250.0)}),
            Result("router", "scans", 1, 9, rates.get("router_gray", 300.0)), Result("router", "scans in colour", 1, 9, 100.0),
            Result("router", "text", 1, 9, 900.0)]
    if "cluster2" in rates:
        rows.append(Result(CLUSTER, "m", 2, 9, rates["cluster2"], taskmanagers=2))
    return rows


def test_targets_compare_rows_of_one_run_and_say_which_are_met():
    memory = {"run_id": "run1", "at": "2026-12-02 01:00 UTC", "peak_rss_mb": 3500.0}
    found = {t.figure: t for t in targets(_rows_for_targets(cluster2=21.0), memory)}
    assert found["scoring job / peer at p1: docs/s"].measured == 1.2 and found["scoring job / peer at p1: docs/s"].met
    at_p2 = found["scoring job / peer at p2: docs/s"]  # the two-TaskManager row, not the MiniCluster's 13
    assert at_p2.measured == round(21 / 18, 2) and "two TaskManagers" in at_p2.detail and at_p2.met
    assert found["p2 on two TaskManagers / p1 on the MiniCluster"].measured == 1.75
    assert found["p99 at half load, exactly-once"].met is False and found["p99 at half load, at-least-once"].met is True
    router = next(t for t in found.values() if t.figure.startswith("router, scans"))
    assert router.measured == 3.0 and router.met
    peak = found["peak RSS of the whole embedded stack during `make run`"]
    assert peak.measured == 3500.0 and peak.met is False and "run1" in peak.detail


def test_targets_without_their_rows_are_not_measured_and_p2_falls_back_to_the_minicluster():
    found = {t.figure: t for t in targets(_rows_for_targets())}
    assert found["p2 on two TaskManagers / p1 on the MiniCluster"].met is None
    assert found["scoring job / peer at p2: docs/s"].measured == round(13 / 18, 2) and "MiniCluster" in found["scoring job / peer at p2: docs/s"].detail
    assert found["peak RSS of the whole embedded stack during `make run`"].met is None
    assert {t.met for t in targets([])} == {None}


def test_the_targets_table_and_the_report_hold_every_target():
    rows = _rows_for_targets(cluster2=30.0)
    shown = _render(targets_table(targets(rows)))
    assert "2.50x" in shown and "not measured" in shown and "1,200 ms" in shown
    data = json.loads(json.dumps(report(rows, {"run_id": "r"}, [], stack_memory=None)))
    assert len(data["targets"]) == 7 and data["stack_memory"] is None
    assert "2 on 2 TM" in _render(table(rows))


def test_the_table_shows_the_p99_of_text_and_of_scans_apart():
    row = Result(AT_LEAST_ONCE, "routed", 1, 10, 16.0, latency_ms={"p50": 80.0, "p95": 500.0, "p99": 770.0},
                 latency_by_kind_ms={"text": {"p99": 212.0}, "scans": {"p99": 1_480.0}})
    rendered = table([row, Result("limit", "routed", None, 10, 9_000.0)])
    assert list(rendered.columns[9].cells) == ["212/1,480", "-"] and rendered.columns[9].header == "p99 text/scans"


def _render(renderable) -> str:
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(renderable)
    return console.export_text()


def test_scans_in_colour_take_the_routers_full_path_and_gray_ones_pass_as_sent():
    """The bench's "scans in colour" input: the same page, which the router must decode and re-encode."""
    from models.generator import generate
    from udfs.cleaning import clean_image

    scan = next(d for d in generate(40, seed=3, scan_share=0.5) if d["content_type"] == "image")
    limits = dict(max_pixels=40_000_000, max_side=4000)
    (as_sent,), _ = clean_image(scan["image"], "PNG", **limits)
    assert as_sent == scan["image"]
    colour = _in_colour(scan)["image"]
    (cleaned,), _ = clean_image(colour, "PNG", **limits)
    assert colour != scan["image"] and cleaned != colour
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(colour)).mode == "RGB" and Image.open(io.BytesIO(cleaned)).mode == "L"


def test_stack_memory_counts_each_process_of_the_trees_once_and_keeps_the_peak(tmp_path):
    import subprocess
    import sys

    hold = "import sys, time; block = bytearray(160 * 2**20); block[::4096] = b'x' * len(block[::4096]); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        memory = StackMemory({"holder": child.pid, "this test": os.getpid()})  # the child is in both trees: counted once
        memory.sample()
        assert memory.at_peak["holder"] > 160 and memory.at_peak["this test"] < memory.peak_mb - 160
        child.kill()
        child.wait()
        memory.sample()  # the peak stays
        assert memory.peak_mb > 160 and "holder" in memory.at_peak and "GiB" in memory.summary()
    finally:
        child.kill()
    settings = SimpleNamespace(run_dir=tmp_path)
    assert read_record(settings) is None
    write_record(settings, "run1", memory)
    assert read_record(settings)["peak_rss_mb"] == round(memory.peak_mb, 1) and read_record(settings)["run_id"] == "run1"


def _knobs(**given) -> SimpleNamespace:
    """`mailroom bench` arguments with the given sweeps, every other knob not given."""
    return SimpleNamespace(**{**dict.fromkeys(("checkpoint_interval_ms", "buffer_timeout_ms", "max_batch_delay_ms", "embedded_jvm_opts",
                                                "ocr_engines", "ocr_inverted_retry", "taskmanager_jvm_opts")), **given})


def test_a_sweep_runs_every_combination_of_the_knobs_and_the_peer_takes_only_the_batch_wait(tmp_path):
    from mailroom.bench.cli import tunings
    from mailroom.bench.variants import Run

    run = Run(None, None, tmp_path, "r", (1,), 1.0, 10)
    swept = tunings(run, _knobs(checkpoint_interval_ms=[1000, 500], max_batch_delay_ms=[200, 20]))
    assert [r.tuning for r in swept] == ["ckpt 1000 ms batch 200 ms", "ckpt 1000 ms batch 20 ms", "ckpt 500 ms batch 200 ms",
                                         "ckpt 500 ms batch 20 ms"]
    assert swept[3].job_args("mailroom") == ["--checkpoint-interval-ms", "500", "--max-batch-delay-ms", "20"]
    assert swept[3].job_args("peer") == ["--max-batch-delay-ms", "20"]
    assert tunings(run, _knobs()) == [run]
    jvms = tunings(run, _knobs(embedded_jvm_opts=["", "-Xmx1g"]))
    assert [r.tuning for r in jvms] == ["jvm (defaults)", "jvm (-Xmx1g)"] and jvms[1].job_args("mailroom") == []  # the JVM's: not job arguments
    engines = tunings(run, _knobs(ocr_engines=[1, 2]))
    assert [r.tuning for r in engines] == ["ocr engines 1", "ocr engines 2"]
    assert engines[1].job_args("mailroom") == ["--ocr-engines", "2"] and engines[1].job_args("peer") == []  # the peer reads on one engine
    inverted = tunings(run, _knobs(ocr_inverted_retry=["on", "off"]))
    assert [r.tuning for r in inverted] == ["inverted retry on", "inverted retry off"]
    assert inverted[1].job_args("mailroom") == ["--ocr-inverted-retry", "off"] and inverted[1].job_args("peer") == []
    taskmanagers = tunings(run, _knobs(taskmanager_jvm_opts=["", "-XX:+UseSerialGC"]))
    assert [r.slug for r in taskmanagers] == ["-tm-jvm-defaults", "-tm-jvm-XX-UseSerialGC"]  # each arm its own topics and cluster
    assert taskmanagers[1].job_args("mailroom-cluster") == []  # the TaskManagers': not job arguments
    assert run.job_args("mailroom") == [] and Result("mailroom", "routed", 1, 10, 5.0, buffer_timeout_ms=10).label == "mailroom routed p1 buffer 10 ms"


def test_the_table_names_rows_whose_scans_went_unread_or_that_fell_behind_at_half_load():
    fine = Result("mailroom", "mixed", 1, 900, 30.0, scans_read={"READ": 300, "NO_TEXT": 10}, fell_behind=False)
    assert "scans not read" not in table([fine]).caption and "fell behind" not in table([fine]).caption
    skipped = Result("mailroom-cluster", "mixed", 2, 900, 43.0, scans_read={"READ": 200, "OVER_BUDGET": 100}, fell_behind=True)
    caption = table([fine, skipped]).caption
    assert "scans not read: mailroom-cluster mixed p2 (OVER_BUDGET 100 of 300)" in caption
    assert "fell behind at half load" in caption and caption.count("mailroom-cluster mixed p2") == 2
