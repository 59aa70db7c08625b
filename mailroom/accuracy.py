"""`mailroom accuracy`: online accuracy per model version and class, as the accuracy job reports it.

Reads the accuracy reports (accuracy_report.v1) from the metrics topic, or the dashboard hashes
the job keeps in Redis (--source redis: the latest window plus the last-N view and the join's
counts), and prints the latest window of every model version as tables. --watch refreshes
them; --plot FILE.png draws macro-F1 and accuracy over the windows, and per-class recall.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table

from config.settings import Settings
from schemas.redis_keys import accuracy_pattern
from schemas.topics import topic_name
from schemas import codec
from udfs.metrics import MetricsConfig

console = Console(width=160)
err = Console(stderr=True)

REDIS_NAMESPACE = MetricsConfig.redis_namespace
Model = tuple[str, str]


# --- reading ---------------------------------------------------------------------------------


def read_reports(settings: Settings, topic: str, timeout_s: float = 10) -> tuple[list[dict], int]:
    """(accuracy reports in topic order, messages that were not accuracy reports)."""
    from mailroom.kafkautil import read_topic

    reports, unreadable = [], 0
    for message in read_topic(settings, topic, timeout_s=timeout_s):
        try:
            reports.append(codec.decode(message.value, expected="accuracy_report").record)
        except codec.DecodeError:
            unreadable += 1
    return reports, unreadable


def read_dashboard(client, namespace: str = REDIS_NAMESPACE) -> dict[str, dict]:
    """Redis key -> its hash decoded (window and recent as dicts, counts as a dict)."""
    entries = {}
    for key in sorted(client.scan_iter(match=accuracy_pattern(namespace))):
        raw = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        entries[key.decode()] = {
            **raw,
            "window": json.loads(raw["window"]) if raw.get("window") else None,
            "recent": json.loads(raw["recent"]) if raw.get("recent") else None,
            "counts": json.loads(raw.get("counts") or "{}"),
        }
    return entries


def latest_by_model(reports: list[dict]) -> dict[Model, dict]:
    """The report of the latest window of every model version (the last computed, on a tie)."""
    latest: dict[Model, dict] = {}
    for report in reports:
        model = (report["model_name"], report["model_version"])
        current = latest.get(model)
        if current is None or (report["window_end_ms"], report["reported_ms"]) >= (current["window_end_ms"], current["reported_ms"]):
            latest[model] = report
    return dict(sorted(latest.items()))


# --- showing ---------------------------------------------------------------------------------


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _times(reports: list[dict]) -> list[datetime]:
    return [datetime.fromtimestamp(r["window_end_ms"] / 1000, timezone.utc) for r in reports]


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(latest: dict[Model, dict]) -> Table:
    """One row per model version: the figures of its latest window."""
    table = Table(title="Online accuracy, latest window per model version (windows over the documents' receipt time, UTC)")
    for column in ("model", "version", "window", "predictions", "labelled", "coverage", "accuracy", "macro-F1"):
        table.add_column(column, justify="left" if column in ("model", "version", "window") else "right")
    for model, report in latest.items():
        table.add_row(*model, f"{_utc(report['window_start_ms'])} - {_utc(report['window_end_ms'])[11:]}", str(report["predictions"]),
                      str(report["count"]), f"{report['label_coverage']:.0%}", _figure(report["accuracy"]), _figure(report["macro_f1"]))
    return table


def dashboard_table(dashboard: dict[Model, dict]) -> Table:
    """From Redis, per model version: the last-N view and the join's counts."""
    table = Table(title="Last labelled pairs (in order of feedback) and the join's counts, since the job started")
    for column in ("model", "version", "last-N pairs", "accuracy", "macro-F1", "unlabelled", "corrected", "duplicate", "late", "alerting"):
        table.add_column(column, justify="left" if column in ("model", "version") else "right")
    for model, entry in dashboard.items():
        recent, counts = entry.get("recent") or {}, entry["counts"]
        table.add_row(*model, str(recent.get("count", 0)), _figure(recent.get("accuracy")), _figure(recent.get("macro_f1")),
                      str(counts.get("Unmatched", 0)), str(counts.get("Corrected", 0)), str(counts.get("DuplicateTruth", 0)),
                      str(counts.get("LateTruth", 0)), "[red]yes[/red]" if entry.get("alerting") == "1" else "no")
    return table


def class_table(report: dict) -> Table:
    """Precision, recall, F1 and support per class of one report."""
    table = Table(title=f"{report['model_name']} v{report['model_version']}: per class, {_utc(report['window_start_ms'])} - "
                        f"{_utc(report['window_end_ms'])[11:]} UTC, {report['count']} labelled")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in report["per_class"]:
        recall = f"[red]{row['recall']:.3f}[/red]" if row["support"] and row["recall"] < 0.5 else f"{row['recall']:.3f}"
        table.add_row(row["label"], f"{row['precision']:.3f}", recall, f"{row['f1']:.3f}", str(row["support"]))
    return table


def plot_reports(reports: list[dict], path: Path) -> int:
    """macro-F1 and accuracy over the windows per model version, and per-class recall per
    model version, as a PNG. Returns the number of model versions drawn."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in a terminal

    series: dict[Model, list[dict]] = {}
    for report in sorted(reports, key=lambda r: (r["window_end_ms"], r["reported_ms"])):
        if report["count"]:
            series.setdefault((report["model_name"], report["model_version"]), []).append(report)
    figure = Figure(figsize=(11, 3.2 * (1 + len(series))), layout="constrained")
    axes = figure.subplots(1 + len(series), 1, sharex=True, squeeze=False)[:, 0]
    for model, rows in series.items():
        line, = axes[0].plot(_times(rows), [r["macro_f1"] for r in rows], label=f"{model[0]} v{model[1]} macro-F1")
        axes[0].plot(_times(rows), [r["accuracy"] for r in rows], linestyle="--", color=line.get_color(), label=f"{model[0]} v{model[1]} accuracy")
    axes[0].set_title("macro-F1 (solid) and accuracy (dashed) per window")
    for ax, (model, rows) in zip(axes[1:], series.items()):
        labels = list(dict.fromkeys(c["label"] for r in rows for c in r["per_class"]))
        for label in labels:
            points = [(t, c["recall"]) for t, r in zip(_times(rows), rows) for c in r["per_class"] if c["label"] == label and c["support"]]
            ax.plot([t for t, _ in points], [v for _, v in points], marker=".", label=label)
        ax.set_title(f"{model[0]} v{model[1]}: recall per class")
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


def _view(args: argparse.Namespace, settings: Settings) -> tuple[Group, str]:
    """The tables to show and a one-line note."""
    if args.source == "redis":
        client = settings.redis_client()
        try:
            entries = read_dashboard(client, args.namespace)
        finally:
            client.close()
        dashboard = {(e["model_name"], e["model_version"]): e for e in entries.values() if e.get("model_name")}
        if args.model:
            dashboard = {model: e for model, e in dashboard.items() if model[0] == args.model}
        latest = {model: e["window"] for model, e in sorted(dashboard.items()) if e["window"]}
        orphans = sum(e["counts"].get("OrphanTruth", 0) for e in entries.values())
        note = f"{len(dashboard)} model version(s) in Redis ({args.namespace}:*); truths for unknown documents: {orphans}"
    else:
        reports, unreadable = read_reports(settings, args.topic or topic_name("metrics", settings.topic_prefix))
        latest, dashboard = latest_by_model(reports), None
        note = f"{len(reports)} report(s) in the metrics topic" + (f", {unreadable} unreadable message(s) skipped" if unreadable else "")
        if args.plot:
            drawn = plot_reports([r for r in reports if not args.model or r["model_name"] == args.model], args.plot)
            note += f"; plot of {drawn} model version(s) written to {args.plot}"
    if args.model:
        latest = {model: report for model, report in latest.items() if model[0] == args.model}
    tables = [summary_table(latest)] + ([dashboard_table(dashboard)] if dashboard else [])
    tables += [class_table(report) for report in latest.values() if report["count"]]
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
        "accuracy", help="online accuracy per model version and class (tables, --watch, --plot)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", choices=["kafka", "redis"], default="kafka",
                        help="kafka: every report in the metrics topic (default); redis: the job's dashboard hashes")
    parser.add_argument("--topic", help="with --source kafka: the metrics topic (default: the declared one)")
    parser.add_argument("--namespace", default=REDIS_NAMESPACE, help="with --source redis: key prefix (default %(default)s)")
    parser.add_argument("--model", metavar="NAME", help="only this model name (all its versions)")
    parser.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS", help="refresh every SECONDS (default 5) until Ctrl-C")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw macro-F1, accuracy and per-class recall over the windows")
    parser.set_defaults(func=_cmd)
