"""`mailroom accuracy`: online accuracy per model version, slot and class, and champion vs
challenger on the same documents, as the accuracy job reports them.

Reads the accuracy reports (accuracy_report) and shadow reports (shadow_report) from the metrics
topic (records of other types are skipped), or the dashboard hashes the job keeps in Redis
(--source redis: the latest window plus the last-N view and the joins' counts), and prints the
latest window of every model version and slot (champion, fallback, prior) and of every
champion/challenger pair as tables. --watch refreshes them; --plot FILE.png draws macro-F1 and
accuracy over the windows, and per-class recall.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from rich.console import Console, Group
from rich.table import Table

from config.settings import Settings
from schemas.redis_keys import accuracy_pattern, shadow_pattern
from schemas.topics import topic_name
from schemas import codec
from udfs.metrics import MetricsConfig

console = Console(width=160)
err = Console(stderr=True)

REDIS_NAMESPACE = MetricsConfig.redis_namespace
SHADOW_NAMESPACE = MetricsConfig.shadow_namespace
Model = tuple[str, str, str]  # model name, version, slot
Pair = tuple[str, str, str, str, str]  # kind, champion model, champion version, challenger model, challenger version
PAIR_FIELDS = ("kind", "champion_model", "champion_version", "challenger_model", "challenger_version")
NO_PAIRS = "no shadow pairs with ground truth yet"


# --- reading ---------------------------------------------------------------------------------


class MetricsRecords(NamedTuple):
    """What the metrics topic holds, in topic order."""

    reports: list[dict]  # accuracy_report
    shadow_reports: list[dict]  # shadow_report
    skipped: int  # records of a type this command does not show
    unreadable: int  # messages that do not decode


def read_metrics(settings: Settings, topic: str, timeout_s: float = 10) -> MetricsRecords:
    """The accuracy and shadow reports in the metrics topic; other record types are skipped, undecodable messages counted."""
    from mailroom.kafkautil import read_topic

    by_type: dict[str, list[dict]] = {"accuracy_report": [], "shadow_report": []}
    skipped = unreadable = 0
    for message in read_topic(settings, topic, timeout_s=timeout_s):
        try:
            decoded = codec.decode(message.value)
        except codec.DecodeError:
            unreadable += 1
            continue
        if decoded.record_type in by_type:
            by_type[decoded.record_type].append(decoded.record)
        else:
            skipped += 1
    return MetricsRecords(by_type["accuracy_report"], by_type["shadow_report"], skipped, unreadable)


def read_dashboard(client, namespace: str = REDIS_NAMESPACE, pattern=accuracy_pattern) -> dict[str, dict]:
    """Redis key -> its hash decoded (window and recent as dicts, counts as a dict); `pattern`
    (accuracy_pattern or shadow_pattern) says which hashes."""
    entries = {}
    for key in sorted(client.scan_iter(match=pattern(namespace))):
        raw = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        entries[key.decode()] = {
            **raw,
            "window": json.loads(raw["window"]) if raw.get("window") else None,
            "recent": json.loads(raw["recent"]) if raw.get("recent") else None,
            "counts": json.loads(raw.get("counts") or "{}"),
        }
    return entries


def _latest(reports: list[dict], key) -> dict:
    """The report of the latest window per key(report) (the last computed, on a tie), sorted by key."""
    latest: dict = {}
    for report in reports:
        current = latest.get(key(report))
        if current is None or (report["window_end_ms"], report["reported_ms"]) >= (current["window_end_ms"], current["reported_ms"]):
            latest[key(report)] = report
    return dict(sorted(latest.items()))


def latest_by_model(reports: list[dict]) -> dict[Model, dict]:
    """The report of the latest window of every model version and slot (the last computed, on a tie)."""
    return _latest(reports, lambda r: (r["model_name"], r["model_version"], r["slot"]))


def latest_by_pair(shadow_reports: list[dict]) -> dict[Pair, dict]:
    """The shadow report of the latest window of every champion/challenger pair (the last computed, on a tie)."""
    return _latest(shadow_reports, lambda r: tuple(r[f] for f in PAIR_FIELDS))


# --- showing ---------------------------------------------------------------------------------


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _times(reports: list[dict]) -> list[datetime]:
    return [datetime.fromtimestamp(r["window_end_ms"] / 1000, timezone.utc) for r in reports]


def _name(model: Model) -> str:
    return f"{model[0]} v{model[1]} ({model[2]})"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(latest: dict[Model, dict]) -> Table:
    """One row per model version and slot: the figures of its latest window."""
    table = Table(title="Online accuracy, latest window per model version and slot (windows over the documents' receipt time, UTC)")
    for column in ("model", "version", "slot", "window", "predictions", "labelled", "coverage", "accuracy", "macro-F1"):
        table.add_column(column, justify="left" if column in ("model", "version", "slot", "window") else "right")
    for model, report in latest.items():
        table.add_row(*model, f"{_utc(report['window_start_ms'])} - {_utc(report['window_end_ms'])[11:]}", str(report["predictions"]),
                      str(report["count"]), f"{report['label_coverage']:.0%}", _figure(report["accuracy"]), _figure(report["macro_f1"]))
    return table


def dashboard_table(dashboard: dict[Model, dict]) -> Table:
    """From Redis, per model version and slot: the last-N view and the join's counts."""
    table = Table(title="Last labelled pairs (in order of feedback) and the join's counts, since the job started")
    for column in ("model", "version", "slot", "last-N pairs", "accuracy", "macro-F1", "unlabelled", "corrected", "duplicate", "late",
                   "alerting"):
        table.add_column(column, justify="left" if column in ("model", "version", "slot") else "right")
    for model, entry in dashboard.items():
        recent, counts = entry.get("recent") or {}, entry["counts"]
        table.add_row(*model, str(recent.get("count", 0)), _figure(recent.get("accuracy")), _figure(recent.get("macro_f1")),
                      str(counts.get("Unmatched", 0)), str(counts.get("Corrected", 0)), str(counts.get("DuplicateTruth", 0)),
                      str(counts.get("LateTruth", 0)), "[red]yes[/red]" if entry.get("alerting") == "1" else "no")
    return table


def class_table(report: dict) -> Table:
    """Precision, recall, F1 and support per class of one report."""
    model = (report["model_name"], report["model_version"], report["slot"])
    table = Table(title=f"{_name(model)}: per class, {_utc(report['window_start_ms'])} - {_utc(report['window_end_ms'])[11:]} UTC, "
                        f"{report['count']} labelled")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in report["per_class"]:
        recall = f"[red]{row['recall']:.3f}[/red]" if row["support"] and row["recall"] < 0.5 else f"{row['recall']:.3f}"
        table.add_row(row["label"], f"{row['precision']:.3f}", recall, f"{row['f1']:.3f}", str(row["support"]))
    return table


def _pair_title(pair: dict) -> str:
    return (f"{pair['kind']}: champion {pair['champion_model']} v{pair['champion_version']} vs challenger "
            f"{pair['challenger_model']} v{pair['challenger_version']}")


def _difference(champion: float | None, challenger: float | None) -> str:
    """challenger - champion, green when the challenger is better, red when worse."""
    if champion is None or challenger is None:
        return "-"
    delta = challenger - champion
    return f"[green]{delta:+.3f}[/green]" if delta > 0 else f"[red]{delta:+.3f}[/red]" if delta < 0 else "0.000"


def pair_table(figures: dict, title: str) -> Table:
    """Champion and challenger side by side on the same labelled documents: the paired counts
    (caption), both accuracies and macro-F1s, and per-class F1. `figures`: a shadow report, or
    the last-N view of a pair's dashboard hash."""
    counts = (f"{figures['count']} labelled: both right {figures['both_right']}, only champion right {figures['only_champion_right']}, "
              f"only challenger right {figures['only_challenger_right']}, both wrong {figures['both_wrong']}")
    table = Table(title=title, caption=counts)
    for column in ("", "support", "champion", "challenger", "challenger - champion"):
        table.add_column(column, justify="left" if not column else "right")
    champion, challenger = figures["champion"], figures["challenger"]
    for name, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1")):
        table.add_row(name, str(figures["count"]), _figure(champion[key]), _figure(challenger[key]),
                      _difference(champion[key], challenger[key]), end_section=key == "macro_f1")
    f1 = {side: {c["label"]: c for c in figures[side]["per_class"]} for side in ("champion", "challenger")}
    labels = list(dict.fromkeys([*f1["champion"], *f1["challenger"]]))
    for label in labels:
        support = (f1["champion"].get(label) or f1["challenger"][label])["support"]
        ours, theirs = (f1[side][label]["f1"] if label in f1[side] else None for side in ("champion", "challenger"))
        table.add_row(f"F1 {label}", str(support), _figure(ours), _figure(theirs), _difference(ours, theirs))
    return table


def shadow_tables(latest: dict[Pair, dict]) -> list:
    """A pair_table per champion/challenger pair with labelled documents in its latest window, or the empty state."""
    tables = [pair_table(report, f"{_pair_title(report)}, {_utc(report['window_start_ms'])} - {_utc(report['window_end_ms'])[11:]} UTC, "
                                 f"{report['shadow_pairs']} shadow pairs ({report['label_coverage']:.0%} labelled)")
              for report in latest.values() if report["count"]]
    return tables or [NO_PAIRS]


def shadow_dashboard_tables(entries: dict[Pair, dict]) -> list:
    """From Redis, per pair: a pair_table over its last N labelled shadow pairs, with the shadow join's counts."""
    tables = []
    for entry in entries.values():
        recent, counts = entry.get("recent") or {}, entry["counts"]
        if recent.get("count"):
            tables.append(pair_table(recent, f"{_pair_title(entry)}: the last {recent['count']} labelled shadow pairs (in order of "
                                             f"feedback); unlabelled {counts.get('Unmatched', 0)}, corrected {counts.get('Corrected', 0)}, "
                                             f"late {counts.get('LateTruth', 0)}"))
    return tables or [NO_PAIRS]


def plot_reports(reports: list[dict], path: Path) -> int:
    """macro-F1 and accuracy over the windows per model version and slot, and per-class recall
    per model version and slot, as a PNG. Returns the number of model versions and slots drawn."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in a terminal

    series: dict[Model, list[dict]] = {}
    for report in sorted(reports, key=lambda r: (r["window_end_ms"], r["reported_ms"])):
        if report["count"]:
            series.setdefault((report["model_name"], report["model_version"], report["slot"]), []).append(report)
    figure = Figure(figsize=(11, 3.2 * (1 + len(series))), layout="constrained")
    axes = figure.subplots(1 + len(series), 1, sharex=True, squeeze=False)[:, 0]
    for model, rows in series.items():
        line, = axes[0].plot(_times(rows), [r["macro_f1"] for r in rows], label=f"{_name(model)} macro-F1")
        axes[0].plot(_times(rows), [r["accuracy"] for r in rows], linestyle="--", color=line.get_color(), label=f"{_name(model)} accuracy")
    axes[0].set_title("macro-F1 (solid) and accuracy (dashed) per window")
    for ax, (model, rows) in zip(axes[1:], series.items()):
        labels = list(dict.fromkeys(c["label"] for r in rows for c in r["per_class"]))
        for label in labels:
            points = [(t, c["recall"]) for t, r in zip(_times(rows), rows) for c in r["per_class"] if c["label"] == label and c["support"]]
            ax.plot([t for t, _ in points], [v for _, v in points], marker=".", label=label)
        ax.set_title(f"{_name(model)}: recall per class")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize="small", ncols=2)
    axes[-1].set_xlabel("window end (UTC, documents' receipt time)")
    if not series:
        axes[0].text(0.5, 0.5, "no labelled windows yet", ha="center", va="center", transform=axes[0].transAxes)
    figure.savefig(path, dpi=110)
    return len(series)


# --- command line ----------------------------------------------------------------------------


def _involves(pair: Pair, model: str | None) -> bool:
    return model is None or model in (pair[1], pair[3])


def _view(args: argparse.Namespace, settings: Settings) -> tuple[Group, str]:
    """The tables to show and a one-line note."""
    if args.source == "redis":
        client = settings.redis_client("dashboard")  # read only: SCAN + HGETALL
        try:
            entries = read_dashboard(client, args.namespace)
            pair_entries = read_dashboard(client, args.shadow_namespace, shadow_pattern)
        finally:
            client.close()
        dashboard = {(e["model_name"], e["model_version"], e.get("slot", "champion")): e for e in entries.values() if e.get("model_name")}
        if args.model:
            dashboard = {model: e for model, e in dashboard.items() if model[0] == args.model}
        latest = {model: e["window"] for model, e in sorted(dashboard.items()) if e["window"]}
        pairs = {tuple(e[f] for f in PAIR_FIELDS): e for e in pair_entries.values() if e.get("kind")}
        pairs = dict(sorted((pair, e) for pair, e in pairs.items() if _involves(pair, args.model)))
        shadows = shadow_dashboard_tables(pairs)
        orphans = sum(e["counts"].get("OrphanTruth", 0) for e in entries.values())
        note = (f"{len(dashboard)} model version(s) and slot(s) in Redis ({args.namespace}:*), {len(pairs)} champion/challenger pair(s) "
                f"({args.shadow_namespace}:*); truths for unknown documents: {orphans}")
    else:
        records = read_metrics(settings, args.topic or topic_name("metrics", settings.topic_prefix))
        latest, dashboard = latest_by_model(records.reports), None
        shadows = shadow_tables({pair: r for pair, r in latest_by_pair(records.shadow_reports).items() if _involves(pair, args.model)})
        note = f"{len(records.reports)} report(s) and {len(records.shadow_reports)} shadow report(s) in the metrics topic"
        note += f", {records.skipped} record(s) of other types skipped" if records.skipped else ""
        note += f", {records.unreadable} unreadable message(s) skipped" if records.unreadable else ""
        if args.plot:
            drawn = plot_reports([r for r in records.reports if not args.model or r["model_name"] == args.model], args.plot)
            note += f"; plot of {drawn} model version(s) and slot(s) written to {args.plot}"
    if args.model:
        latest = {model: report for model, report in latest.items() if model[0] == args.model}
    tables = [summary_table(latest)] + ([dashboard_table(dashboard)] if dashboard else [])
    tables += [class_table(report) for report in latest.values() if report["count"]]
    tables += shadows
    if not latest:
        note += "; no reports yet (is the accuracy job running, and has ground truth arrived?)"
    return Group(*tables), note


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError
    from redis.exceptions import RedisError

    if args.plot and args.source == "redis":
        err.print("[red]error:[/red] --plot draws the history in the metrics topic; Redis keeps only the latest window (drop --source redis)")
        return 2
    try:
        if not args.watch:
            view, note = _view(args, settings)
            console.print(view)
            console.print(note)
            return 0
        from rich.live import Live

        with Live(console=console, auto_refresh=False) as live:
            while True:
                view, note = _view(args, settings)
                live.update(Group(view, f"{note}; refreshed {datetime.now(timezone.utc):%H:%M:%S} UTC, every {args.watch:g} s (Ctrl-C stops)"),
                            refresh=True)
                time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    except (KafkaError, RedisError) as exc:
        where = settings.bootstrap_servers if args.source == "kafka" else f"{settings.host}:{settings.redis_port}"
        err.print(f"[red]error:[/red] {args.source} at {where}: {exc!r}. Is the stack up (`mailroom stack up`)?")
        return 1


def register(sub) -> None:
    parser = sub.add_parser(
        "accuracy", help="online accuracy per model version, slot and class; champion vs challenger (tables, --watch, --plot)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", choices=["kafka", "redis"], default="kafka",
                        help="kafka: every report in the metrics topic (default); redis: the job's dashboard hashes")
    parser.add_argument("--topic", help="with --source kafka: the metrics topic (default: the declared one)")
    parser.add_argument("--namespace", default=REDIS_NAMESPACE, help="with --source redis: key prefix (default %(default)s)")
    parser.add_argument("--shadow-namespace", default=SHADOW_NAMESPACE,
                        help="with --source redis: key prefix of the champion/challenger hashes (default %(default)s)")
    parser.add_argument("--model", metavar="NAME", help="only this model name (all its versions and slots, and the pairs it is in)")
    parser.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS", help="refresh every SECONDS (default 5) until Ctrl-C")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw macro-F1, accuracy and per-class recall over the windows")
    parser.set_defaults(func=_cmd)
