"""The dashboard's panels from hand-made inputs: what each draws, and the empty state that says what is missing."""

from __future__ import annotations

from mailroom.dashboard.panels import NO_TRUTH, PANELS, QUERIES, Inputs, page_state
from models.population import psi
from schemas import metric_names as m

NOW = 1_800_000_000_000


def _by_id(inputs: Inputs) -> dict[str, dict]:
    return {panel["id"]: panel for panel in page_state(inputs)["panels"]}


def _report(version: str, end_ms: int, macro_f1: float, slot: str = "champion") -> dict:
    return {"model_name": "mailroom-text", "model_version": version, "slot": slot, "window_start_ms": end_ms - 3_600_000,
            "window_end_ms": end_ms, "reported_ms": end_ms, "count": 40, "predictions": 50, "accuracy": macro_f1 + 0.01,
            "macro_f1": macro_f1, "label_coverage": 0.8, "labels": ["invoice", "offer"], "confusion": [[18, 2], [0, 20]],
            "per_class": [{"label": "invoice", "precision": 1.0, "recall": 0.9, "f1": 0.95, "support": 20},
                          {"label": "offer", "precision": 0.8, "recall": 1.0, "f1": 0.89, "support": 20},
                          {"label": "complaint", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}]}


def test_with_nothing_every_panel_says_what_is_missing():
    panels = _by_id(Inputs(now_ms=NOW, problems=["Prometheus does not answer"]))
    assert [p.__name__ for p in PANELS] and len(panels) == len(PANELS)
    assert all(panel["empty"] for panel in panels.values()), [p["id"] for p in panels.values() if not p["empty"]]
    assert "Prometheus does not answer" in panels["throughput"]["empty"]
    assert panels["accuracy"]["empty"] == NO_TRUTH and panels["per_class"]["empty"] == NO_TRUTH


def test_prometheus_series_become_traces_and_bars():
    t0 = NOW / 1000 - 60
    prometheus = {name: [] for name in QUERIES}
    prometheus["documents_in_range"] = [({}, [(t0, 0.0), (t0 + 10, 12.5)])]
    prometheus["delivered_range"] = [({"department": "finance"}, [(t0, 3.0)]), ({"department": "hr"}, [(t0, 0.0)])]  # all zero: left out
    prometheus["dead_letters"] = [({"reason": "UNDECODABLE"}, 4.0), ({"reason": "DUPLICATE"}, 0.0)]
    prometheus["model_version"] = [({"kind": "text", "slot": "champion"}, 3.0)]
    prometheus["predictions"] = [({"kind": "text", "slot": "champion"}, 120.0)]
    panels = _by_id(Inputs(now_ms=NOW, prometheus=prometheus, firing=[]))
    assert [t["name"] for t in panels["throughput"]["traces"]] == ["in (router)", "finance"]
    assert panels["dead_letters"]["traces"][0]["x"] == ["UNDECODABLE"] and panels["dead_letters"]["traces"][0]["y"] == [4.0]
    assert panels["serving"]["rows"] == [["text", "champion", "v3", "", 120, ""]]
    assert panels["alerts"]["empty"] == "no open alerts"


def test_accuracy_over_time_and_per_class_come_from_the_reports_then_the_last_n_view():
    feed = {"accuracy_report": [_report("1", NOW - 600_000, 0.9), _report("1", NOW - 300_000, 0.8), _report("2", NOW - 300_000, 0.95, "fallback")]}
    panels = _by_id(Inputs(now_ms=NOW, feed=feed))
    names = [(t["name"], t["showlegend"]) for t in panels["accuracy"]["traces"]]
    assert names == [("mailroom-text v1 (champion)", True), ("mailroom-text v1 (champion)", False),
                     ("mailroom-text v2 (fallback)", True), ("mailroom-text v2 (fallback)", False)]
    assert panels["accuracy"]["traces"][0]["y"] == [0.9, 0.8]
    per_class = panels["per_class"]["traces"]
    assert len(per_class) == 1 and per_class[0]["x"] == ["invoice", "offer"]  # the latest champion window; classes without support left out
    confusion = panels["confusion"]["traces"][0]
    assert confusion["z"] == [[18, 2], [0, 20]] and confusion["x"] == ["invoice", "offer"] and "v1 (champion)" in panels["confusion"]["title"]
    recent = {k: v for k, v in _report("1", NOW, 0.7).items() if k in ("per_class", "count", "accuracy", "macro_f1")}
    redis = {"mailroom:accuracy:mailroom-text:1": {"model_name": "mailroom-text", "model_version": "1", "slot": "champion",
                                                   "recent": recent, "window": None, "counts": {}, "alerting": "1"}}
    panels = _by_id(Inputs(now_ms=NOW, accuracy=redis, firing=[]))
    assert panels["accuracy"]["traces"][0]["y"] == [0.7] and panels["per_class"]["traces"][0]["name"].endswith("last N F1")
    assert panels["alerts"]["rows"][0][0] == "AccuracyBelowThreshold"


def test_model_events_show_each_change_once_and_the_judge_its_latest_decision():
    event = {"job": "scoring", "subtask": 0, "kind": "text", "slot": "challenger", "outcome": "SERVING", "model_name": "mailroom-text",
             "version": "2", "serving_version": "2", "reason": None, "at_ms": NOW - 1000}
    decisions = [{"decision_id": str(i), "kind": "text", "decision": d, "decided_by": "judge", "challenger_version": "2", "champion_version": "1",
                  "reasons": ["McNemar p=0.01"], "figures": {}, "request_id": None, "decided_ms": NOW - 500 + i} for i, d in enumerate(("REFUSE", "PROMOTE"))]
    feed = {"model_event": [event, {**event, "subtask": 1}], "model_decision": decisions}
    prometheus = {"fallbacks_range": [({"kind": "text", "slot": "fallback"}, [(NOW / 1000 - 30, 0.0), (NOW / 1000, 5.0)])], "judge_pairs": []}
    panels = _by_id(Inputs(now_ms=NOW, feed=feed, prometheus=prometheus))
    groups = {t["name"]: len(t["x"]) for t in panels["events"]["traces"]}
    assert groups == {"SERVING": 1, "REFUSE": 1, "PROMOTE": 1, "fallback": 1}
    assert panels["judge"]["rows"][0][:3] == ["text", "PROMOTE", "judge"]


def test_champion_vs_challenger_bars_from_the_shadow_hashes():
    figures = {"count": 30, "champion": {"accuracy": 0.9, "macro_f1": 0.88}, "challenger": {"accuracy": 0.95, "macro_f1": 0.93}}
    shadow = {"k": {"kind": "text", "champion_version": "1", "challenger_version": "2", "recent": figures, "window": None}}
    traces = _by_id(Inputs(now_ms=NOW, shadow=shadow))["shadow"]["traces"]
    assert [t["name"] for t in traces] == ["champion v1", "challenger v2"] and traces[1]["y"] == [0.95, 0.93]


def test_drift_is_the_psi_of_live_counts_against_the_card():
    reference = {"text_length": {"0-100": 0.5, "100-300": 0.5}, "label": {"invoice": 1.0}}
    prometheus = {"population": [({"kind": "text", "feature": "text_length", "bin": "0_100"}, 90.0),  # bins as Flink reports them
                                 ({"kind": "text", "feature": "text_length", "bin": "100_300"}, 10.0),
                                 ({"kind": "text", "feature": "label", "bin": "invoice"}, 5.0),  # too few to judge: not shown
                                 ({"kind": "image", "feature": "label", "bin": "invoice"}, 500.0)],  # no image card: not shown
                  "content": [({"type": "TEXT"}, 70.0), ({"type": "IMAGE"}, 30.0)]}
    card = {"population": reference, "training_data": {"generated": {"scan_share": 0.3}}}
    panel = _by_id(Inputs(now_ms=NOW, prometheus=prometheus, models={"text": {"card": card, "history": []}}))["drift"]
    bars = dict(zip(panel["traces"][0]["x"], panel["traces"][0]["y"]))
    assert set(bars) == {"text: text_length", "all: scan share"}
    assert bars["all: scan share"] < 0.01 < 0.25 < bars["text: text_length"]
    assert abs(bars["text: text_length"] - psi(reference["text_length"], {"0-100": 90, "100-300": 10})) < 1e-3
    no_card = _by_id(Inputs(now_ms=NOW, prometheus=prometheus))["drift"]
    assert "no training distributions" in no_card["empty"]


def test_every_query_names_a_catalogued_metric():
    names = {metric.prometheus for metric in m.OPERATOR_METRICS} | {m.JUDGE_PAIRS}
    assert all(any(name in expr for name in names) for expr in QUERIES.values())
