"""The dashboard's panels, from the data `sources.gather` collected: plain functions, no I/O.

A panel is a dict the page draws with one generic renderer: `{"id", "title", "kind": "chart",
"traces", "layout"}` (Plotly traces) or `{"kind": "table", "columns", "rows"}`, with `"empty"`
set to a sentence saying what is missing when there is nothing to draw (the page then shows
the sentence, not an empty chart).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from models.population import psi
from schemas import metric_names as m

RANGE_S = 15 * 60  # the charts over time show the last 15 minutes
STEP_S = 10
DRIFT_WINDOW = "1h"  # live distributions over the last hour, against the training data's
ACCURACY_HISTORY_MS = 24 * 3_600_000  # accuracy reports shown: those of the last day
MIN_DRIFT_DOCUMENTS = 50  # fewer live documents in a distribution than this: its PSI is noise, not shown

# name -> PromQL; names ending in _range are range queries over RANGE_S
QUERIES = {
    "documents_in_range": f"sum(rate({m.DOCUMENTS_IN.prometheus}[1m]))",
    "delivered_range": f"sum by (department) (rate({m.DELIVERED.prometheus}[1m]))",
    "latency_range": f"max by (quantile) ({m.LATENCY_MS.prometheus})",
    "fallbacks_range": f'sum by (kind, slot) (increase({m.PREDICTIONS.prometheus}{{slot=~"fallback|prior"}}[1m]))',
    # each job's own total (a counter per run of a job; a stopped job's last value stays for the hour)
    "dead_letters": f"sum by (reason) (max_over_time({m.DEAD_LETTERS.prometheus}[1h]))",
    "predictions": f"sum by (kind, slot) ({m.PREDICTIONS.prometheus})",
    "model_version": f"max by (kind, slot) ({m.MODEL_VERSION.prometheus})",
    "batch_score_ms": f"max ({m.BATCH_SCORE_MS.prometheus})",
    "population": f"sum by (kind, feature, bin) (increase({m.POPULATION.prometheus}[{DRIFT_WINDOW}]))",
    "content": f"sum by (type) (increase({m.CONTENT.prometheus}[{DRIFT_WINDOW}]))",
    "predicted": f"sum by (label) (increase({m.PREDICTED.prometheus}[{DRIFT_WINDOW}]))",
    "judge_pairs": f"max by (kind) ({m.JUDGE_PAIRS})",
}
EVENT_SYMBOLS = {"register": "circle-open", "promote": "star", "rollback": "x", "challenger": "diamond", "retire": "square-open",
                 "PROMOTE": "star", "REFUSE": "triangle-down", "ROLL_BACK": "x", "KEEP": "circle", "SERVING": "circle",
                 "REFUSED": "triangle-down", "RETIRED": "square-open", "fallback": "triangle-up"}


@dataclass
class Inputs:
    """Everything one refresh of the page needs; a source that could not be read is None."""

    now_ms: int
    prometheus: dict[str, list] | None = None  # QUERIES name -> query result
    firing: list[dict] | None = None  # Prometheus alerts (pending or firing)
    feed: dict[str, list[dict]] | None = None  # TopicFeed.snapshot()
    accuracy: dict[str, dict] | None = None  # Redis accuracy hashes (mailroom.accuracy.read_dashboard)
    shadow: dict[str, dict] | None = None  # Redis champion/challenger hashes
    models: dict[str, dict] = field(default_factory=dict)  # kind -> {"card": champion card, "history": registry events}
    problems: list[str] = field(default_factory=list)  # sources that did not answer, and why


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def _chart(panel_id: str, title: str, traces: list, empty: str, **layout) -> dict:
    return {"id": panel_id, "title": title, "kind": "chart", "traces": traces, "layout": layout, "empty": None if traces else empty}


def _table(panel_id: str, title: str, columns: list[str], rows: list[list], empty: str) -> dict:
    return {"id": panel_id, "title": title, "kind": "table", "columns": columns, "rows": rows, "empty": None if rows else empty}


def _lines(series, name_of) -> list[dict]:
    """Plotly line traces from a range result, one per series, skipping series that are all zero."""
    traces = []
    for labels, points in sorted(series or [], key=lambda s: name_of(s[0])):
        if any(v for _, v in points):
            traces.append({"type": "scatter", "mode": "lines+markers", "marker": {"size": 4}, "name": name_of(labels),
                           "x": [_iso(t * 1000) for t, _ in points], "y": [round(v, 3) for _, v in points]})
    return traces


def _last_minutes(inputs: Inputs) -> dict:
    """An x axis over the charts' time range, so that a short run is shown in its place in it."""
    return {"type": "date", "range": [_iso(inputs.now_ms - RANGE_S * 1000), _iso(inputs.now_ms)]}


def _no_prometheus(inputs: Inputs) -> str | None:
    return None if inputs.prometheus is not None else "Prometheus does not answer: start it with `mailroom stack up`"


def throughput(inputs: Inputs) -> dict:
    empty = _no_prometheus(inputs) or "no documents in the last 15 minutes: start the jobs and send documents (`mailroom run`)"
    p = inputs.prometheus or {}
    traces = _lines(p.get("documents_in_range"), lambda _: "in (router)")
    traces += _lines(p.get("delivered_range"), lambda labels: labels.get("department", "?"))
    return _chart("throughput", "Documents per second: in, and per department", traces, empty, yaxis={"title": "documents/s"},
                  xaxis=_last_minutes(inputs))


def latency(inputs: Inputs) -> dict:
    empty = _no_prometheus(inputs) or "no documents scored in the last 15 minutes"
    traces = _lines((inputs.prometheus or {}).get("latency_range"), lambda labels: labels.get("quantile", "?"))
    return _chart("latency", "Latency from receipt to the department topic (ms, per scoring batch)", traces, empty,
                  yaxis={"title": "ms (log)", "type": "log"}, xaxis=_last_minutes(inputs))


def dead_letters(inputs: Inputs) -> dict:
    empty = _no_prometheus(inputs) or "no dead letters in the last hour"
    rows = sorted(((labels.get("reason", "?"), value) for labels, value in (inputs.prometheus or {}).get("dead_letters") or [] if value),
                  key=lambda r: -r[1])
    traces = [{"type": "bar", "x": [r for r, _ in rows], "y": [v for _, v in rows], "name": "dead letters"}] if rows else []
    return _chart("dead_letters", "Dead letters by reason, last hour", traces, empty, yaxis={"title": "records"})


NO_TRUTH = "no ground truth yet: the accuracy job reports once departments' feedback has arrived (`mailroom feedback`, `mailroom inbox`)"


def _model_name(entry: dict) -> str:
    return f"{entry['model_name']} v{entry['model_version']} ({entry['slot']})"


def accuracy_over_time(inputs: Inputs) -> dict:
    """Accuracy and macro-F1 per model version and slot: each reported window, and the last-N view now."""
    reports = [r for r in (inputs.feed or {}).get("accuracy_report", []) if r["reported_ms"] >= inputs.now_ms - ACCURACY_HISTORY_MS]
    by_model: dict[str, list[dict]] = {}
    for report in sorted(reports, key=lambda r: (r["window_end_ms"], r["reported_ms"])):
        if report["count"]:
            by_model.setdefault(_model_name(report), []).append(report)
    traces = []
    for name, series in sorted(by_model.items()):
        for metric, dash in (("macro_f1", "solid"), ("accuracy", "dot")):  # one legend entry per model: macro-F1 solid, accuracy dotted
            traces.append({"type": "scatter", "mode": "lines+markers", "name": name, "legendgroup": name, "showlegend": metric == "macro_f1",
                           "line": {"dash": dash}, "x": [_iso(r["window_end_ms"]) for r in series], "y": [r[metric] for r in series],
                           "hovertemplate": f"{name} {metric.replace('_', '-')}: %{{y:.3f}}<extra></extra>"})
    for entry in (inputs.accuracy or {}).values():
        recent = entry.get("recent") or {}
        if entry.get("model_name") and recent.get("count"):
            traces.append({"type": "scatter", "mode": "markers", "marker": {"size": 12, "symbol": "diamond"},
                           "name": f"{_model_name(entry)} macro-F1, last {recent['count']} labelled",
                           "x": [_iso(inputs.now_ms)], "y": [recent["macro_f1"]]})
    return _chart("accuracy", "Online macro-F1 (solid) and accuracy (dotted) per model version and slot, last 24 h", traces, NO_TRUTH,
                  yaxis={"range": [0, 1.02]})


def _latest_champion_windows(inputs: Inputs) -> dict[str, dict]:
    """Model name -> the report of its latest window with labelled documents, for each champion."""
    latest: dict[str, dict] = {}
    for report in (inputs.feed or {}).get("accuracy_report", []):
        if report["slot"] == "champion" and report["count"]:
            name = _model_name(report)
            if name not in latest or report["window_end_ms"] >= latest[name]["window_end_ms"]:
                latest[name] = report
    return latest


def per_class(inputs: Inputs) -> dict:
    """Precision, recall and F1 per class: the latest window of each champion, else its last-N view."""
    latest = _latest_champion_windows(inputs)
    if not latest:
        for entry in (inputs.accuracy or {}).values():
            if entry.get("slot") == "champion" and (entry.get("recent") or {}).get("count"):
                latest[_model_name(entry) + " last N"] = entry["recent"]
    traces = []
    for name, figures in sorted(latest.items()):
        classes = [c for c in figures["per_class"] if c["support"]]
        traces.append({"type": "bar", "name": f"{name} F1", "x": [c["label"] for c in classes], "y": [c["f1"] for c in classes],
                       "customdata": [c["support"] for c in classes], "hovertemplate": "%{x}: F1 %{y:.3f} (%{customdata} labelled)"})
    return _chart("per_class", "F1 per class, latest window", traces, NO_TRUTH, yaxis={"range": [0, 1.02]}, barmode="group")


def predicted_vs_actual(inputs: Inputs) -> dict:
    """The confusion matrix of the latest window of the champion with the most labelled documents."""
    latest = _latest_champion_windows(inputs)
    if not latest:
        return _chart("confusion", "Predicted vs actual, latest window", [], NO_TRUTH)
    name, report = max(latest.items(), key=lambda item: (item[1]["count"], item[0]))
    trace = {"type": "heatmap", "z": report["confusion"], "x": report["labels"], "y": report["labels"], "colorscale": "Blues",
             "hovertemplate": "actual %{y}, predicted %{x}: %{z}<extra></extra>"}
    return _chart("confusion", f"Predicted vs actual: {name}, latest window ({report['count']} labelled)", [trace], NO_TRUTH,
                  xaxis={"title": "predicted"}, yaxis={"title": "actual", "autorange": "reversed", "automargin": True})


def champion_vs_challenger(inputs: Inputs) -> dict:
    """Both models on the same labelled documents, per pair (Redis, the accuracy job's shadow hashes)."""
    traces = []
    for entry in (inputs.shadow or {}).values():
        figures = entry.get("recent") or entry.get("window") or {}
        if not figures.get("count"):
            continue
        pair = f"{entry['kind']}: v{entry['champion_version']} vs v{entry['challenger_version']} ({figures['count']} labelled)"
        for side in ("champion", "challenger"):
            version = entry[f"{side}_version"]
            traces.append({"type": "bar", "name": f"{side} v{version}", "x": [f"{pair} accuracy", f"{pair} macro-F1"],
                           "y": [figures[side]["accuracy"], figures[side]["macro_f1"]]})
    return _chart("shadow", "Champion vs challenger on the same labelled documents", traces,
                  "no challenger has labelled shadow pairs yet: deploy one with `mailroom models deploy KIND VERSION --slot challenger`",
                  barmode="group", yaxis={"range": [0, 1.02]})


def judge_state(inputs: Inputs) -> dict:
    """The judge's latest decision per kind, and the labelled pairs gathered for the challenger on trial."""
    decisions = (inputs.feed or {}).get("model_decision", [])
    pairs = {labels.get("kind"): value for labels, value in (inputs.prometheus or {}).get("judge_pairs") or []}
    latest: dict[str, dict] = {}
    for record in sorted(decisions, key=lambda r: r["decided_ms"]):
        latest[record["kind"]] = record
    rows = []
    for kind in sorted(set(latest) | set(pairs)):
        record = latest.get(kind)
        rows.append([kind, record["decision"] if record else "-", record["decided_by"] if record else "-",
                     f"v{record['challenger_version']}" if record and record.get("challenger_version") else "-",
                     _iso(record["decided_ms"]) if record else "-", "; ".join(record["reasons"])[:200] if record else "",
                     int(pairs[kind]) if kind in pairs else "-"])
    return _table("judge", "The judge: latest decision per kind",
                  ["kind", "decision", "by", "challenger", "when (UTC)", "reasons", "pairs gathered"], rows,
                  "no decisions yet: the judge decides once a challenger has enough labelled shadow pairs (`mailroom judge`)")


def model_events(inputs: Inputs) -> dict:
    """Deploys, promotions, refusals, rollbacks and fallbacks on one time axis."""
    points: dict[str, list[tuple[str, str]]] = {}

    def add(group: str, at_iso: str, text: str) -> None:
        points.setdefault(group, []).append((at_iso, text))

    seen = set()
    for event in (inputs.feed or {}).get("model_event", []):
        key = (event["kind"], event["slot"], event["outcome"], event["version"])
        if key not in seen:  # every scoring subtask reports the same change: show it once
            seen.add(key)
            add(event["outcome"], _iso(event["at_ms"]), f"{event['kind']} {event['slot']} v{event['version']} {event['reason'] or ''}")
    for record in (inputs.feed or {}).get("model_decision", []):
        add(record["decision"], _iso(record["decided_ms"]), f"{record['kind']} v{record.get('challenger_version') or ''} "
            f"by {record['decided_by']}")
    for kind, model in inputs.models.items():
        for event in model.get("history", []):
            if event.get("event") in ("register", "promote", "rollback", "challenger", "retire") and event.get("at"):
                add(event["event"], event["at"], f"{kind} v{event.get('version')} {event.get('reason') or ''}")
    for labels, series in (inputs.prometheus or {}).get("fallbacks_range") or []:
        for t, value in series:
            if value >= 1:
                add("fallback", _iso(t * 1000), f"{labels.get('kind')}: {value:.0f} decided by the {labels.get('slot')}")
    traces = [{"type": "scatter", "mode": "markers", "name": group, "marker": {"size": 11, "symbol": EVENT_SYMBOLS.get(group, "circle")},
               "x": [at for at, _ in items], "y": [group] * len(items), "text": [text[:160] for _, text in items], "hoverinfo": "x+text"}
              for group, items in sorted(points.items())]
    return _chart("events", "Model events: deploys, promotions, refusals, rollbacks, fallbacks", traces,
                  "no model events yet: the registry has no models (`mailroom train`) and no scoring job has reported",
                  yaxis={"type": "category", "automargin": True})


def _shares(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def _scan_share_reference(models: dict[str, dict]) -> dict[str, float] | None:
    """TEXT/IMAGE shares of the mailbox the champions were trained on (the generated corpus's scan share)."""
    for model in models.values():
        share = (((model.get("card") or {}).get("training_data") or {}).get("generated") or {}).get("scan_share")
        if share is not None:
            return {"IMAGE": share, "TEXT": 1 - share}
    return None


def drift(inputs: Inputs) -> dict:
    """Population stability index of each monitored input and of the decided labels, per model kind,
    live (last hour) against that kind's training rows (the card's `population`); the scan share
    against the training mailbox's."""
    p = inputs.prometheus or {}
    live: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in p.get("population") or []:
        live.setdefault((labels.get("kind", "?"), labels.get("feature", "?")), {})[labels.get("bin", "?")] = value
    references = {(kind, feature): {m.reported_label(b): share for b, share in shares.items()} for kind, model in inputs.models.items()
                  for feature, shares in ((model.get("card") or {}).get("population") or {}).items()}
    scan_share = _scan_share_reference(inputs.models)
    if scan_share is not None:
        live[("all", "scan share")] = {labels.get("type", "?"): value for labels, value in p.get("content") or []}
        references[("all", "scan share")] = scan_share
    names, values, texts = [], [], []
    for key in sorted(live):
        counts = live[key]
        if sum(counts.values()) >= MIN_DRIFT_DOCUMENTS and key in references:
            names.append(f"{key[0]}: {key[1]}")
            values.append(round(psi(references[key], counts), 4))
            texts.append(", ".join(f"{b} {s:.0%}" for b, s in sorted(_shares(counts).items())))
    traces = [{"type": "bar", "x": names, "y": values, "text": [f"{v:.3f}" for v in values], "hovertext": texts, "name": "PSI"}] if names else []
    empty = _no_prometheus(inputs) or ("the champions' cards have no training distributions: retrain with `mailroom train`" if not references
                                       else f"fewer than {MIN_DRIFT_DOCUMENTS} documents scored by a model in the last hour")
    layout = {"yaxis": {"title": "PSI (0.1 moderate, 0.25 shift)", "rangemode": "tozero"},
              "shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": level, "y1": level,
                          "line": {"dash": "dot", "color": color}} for level, color in ((0.1, "orange"), (0.25, "red"))]}
    return _chart("drift", "Drift against the training data (population stability index, last hour)", traces, empty, **layout)


def alerts(inputs: Inputs) -> dict:
    """Prometheus' pending and firing alerts, and the accuracy job's open alerts."""
    rows = [[a.get("labels", {}).get("alertname", "?"), a.get("state", "?"), a.get("labels", {}).get("severity", ""),
             (a.get("annotations", {}).get("summary") or a.get("annotations", {}).get("description") or "")[:200], a.get("activeAt", "")[:19]]
            for a in inputs.firing or []]
    for entry in (inputs.accuracy or {}).values():
        if entry.get("alerting") == "1":
            window = entry.get("window") or {}
            rows.append(["AccuracyBelowThreshold", "open", "critical",
                         f"{_model_name(entry)}: accuracy {window.get('accuracy', 0):.3f}, macro-F1 {window.get('macro_f1', 0):.3f}",
                         _iso(int(entry["updated_ms"]))[:19] if entry.get("updated_ms") else ""])
    empty = "no open alerts" if inputs.firing is not None else "no open accuracy alerts (Prometheus' alerts unknown: it does not answer)"
    return _table("alerts", "Open alerts", ["alert", "state", "severity", "summary", "since (UTC)"], rows, empty)


def serving(inputs: Inputs) -> dict:
    """What serves in each slot: version, deployed when, documents decided, the last batch's scoring time."""
    p = inputs.prometheus or {}
    versions = {(labels.get("kind"), labels.get("slot")): int(value) for labels, value in p.get("model_version") or [] if value}
    served = {(labels.get("kind"), labels.get("slot")): int(value) for labels, value in p.get("predictions") or []}
    score_ms = next((value for _, value in p.get("batch_score_ms") or []), None)
    rows = []
    for kind, slot in sorted(set(versions) | set(served)):
        deployed = ""
        for event in (inputs.models.get(kind) or {}).get("history", []):
            if event.get("event") in ("promote", "rollback", "challenger") and event.get("version") == versions.get((kind, slot)):
                deployed = event.get("at", "")[:19]
        rows.append([kind, slot, f"v{versions[(kind, slot)]}" if (kind, slot) in versions else "-", deployed,
                     served.get((kind, slot), 0), "" if score_ms is None else f"{score_ms:.0f}"])
    empty = _no_prometheus(inputs) or "no scoring job has reported: start one (`mailroom run`, `mailroom job scoring`)"
    return _table("serving", "Models serving", ["kind", "slot", "version", "deployed (UTC)", "documents decided",
                                                "last batch scored in (ms)"], rows, empty)


PANELS = (throughput, latency, dead_letters, accuracy_over_time, per_class, predicted_vs_actual, champion_vs_challenger, judge_state,
          model_events, drift, alerts, serving)


def page_state(inputs: Inputs) -> dict:
    """Every panel, and what could not be read."""
    return {"updated": _iso(inputs.now_ms), "problems": inputs.problems, "panels": [panel(inputs) for panel in PANELS]}
