"""The bench's output: the consoles, the results table, the deploy-to-serving table and the plot."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mailroom.bench.figures import DeployFigures, Result, StageProfile, Target, goal_line, rows_that_fell_behind, unread_scans

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def table(results: list[Result]) -> Table:
    warnings = "".join(f"\n[red]{escape(line)}[/red]" for line in (unread_scans(results), rows_that_fell_behind(results)) if line)
    out = Table(title="mailroom bench", caption=goal_line(results) + "\ncores own/all: the variant's processes / the whole machine "
                "(2 cores); a gap well above the broker's and the bench's share means someone else was busy too."
                + warnings, caption_justify="left")
    columns = ("variant", "input", "p", "docs", "docs/s", "offered/s", "p50 ms", "p95 ms", "p99 ms", "p99 text/scans", "CPU s", "CPU ms/doc",
               "peak RSS MB", "cores own/all")
    for name in columns:
        out.add_column(name, justify="left" if name in ("variant", "input") else "right")
    for r in results:
        latency = r.latency_ms or {}
        out.add_row(" ".join(part for part in (r.variant, r.tuning) if part), r.input,
                    num(r.parallelism) + (f" on {r.taskmanagers} TM" if r.taskmanagers else ""), f"{r.docs:,}", num(r.docs_per_s), num(r.offered_per_s), num(latency.get("p50")), num(latency.get("p95")),
                    num(latency.get("p99")), _by_kind(r.latency_by_kind_ms), num(r.cpu_s, 1), num(r.cpu_ms_per_doc, 2), num(r.peak_rss_mb),
                    "-" if r.own_cores is None else f"{r.own_cores:.1f}/{r.machine_busy_cores:.1f}")
    return out


def _by_kind(latency: dict | None) -> str:
    """The p99 of the text documents / of the scans ("-": not measured)."""
    if not latency:
        return "-"
    return "/".join(num((latency.get(kind) or {}).get("p99")) for kind in ("text", "scans"))


def targets_table(rows: list[Target]) -> Table:
    """The figures to reach beside what this run measured."""
    out = Table(title="figures to reach (issue 13), this run side by side", caption_justify="left",
                caption="ratios from rows of this one run; the memory from the latest `make run` on this machine.")
    for name in ("figure", "goal", "measured", "met", "from"):
        out.add_column(name, justify="right" if name in ("measured", "met") else "left")
    for t in rows:
        unit = "x" if t.goal.endswith("x") else (" ms" if t.goal.endswith(" ms") else " MB")
        measured = "-" if t.measured is None else (f"{t.measured:.2f}x" if unit == "x" else f"{t.measured:,.0f}{unit}")
        met = "not measured" if t.met is None else ("[green]yes[/green]" if t.met else "[red]no[/red]")
        out.add_row(t.figure, t.goal, measured, met, t.detail)
    return out


def stage_table(profile: StageProfile, results: list[Result]) -> Table:
    """Where a document's time goes: the scoring logic's stages, beside what the scoring job spent per document."""
    job = next((r for r in results if r.variant == "mailroom" and r.parallelism == 1 and r.cpu_ms_per_doc), None)
    out = Table(title=f"where a document's time goes (scoring logic in plain Python, {sum(profile.docs.values()):,} documents, nothing cached)",
                caption_justify="left", caption=("share: of the scoring job's CPU ms per document at p1 "
                                                 f"({job.cpu_ms_per_doc:,.2f}, same mix)" if job else "share: of the logic's own time "
                                                 "(run the mailroom variant beside it for the job's)"))
    for name in ("stage", "text ms/doc", "scan ms/doc", "share"):
        out.add_column(name, justify="left" if name == "stage" else "right")
    for stage, text, scan, share in profile.rows(job.cpu_ms_per_doc if job else None):
        out.add_row(stage, num(text, 2), num(scan, 2), f"{share:.0%}")
    return out


def deploy_table(figures: list[DeployFigures]) -> Table:
    """Per parallelism: min / median / max over the deploys, per subtask and of the slowest one."""
    out = Table(title="deploy to serving (ms from the champion record's send)", caption_justify="left",
                caption="serving: the subtask's SERVING report (its clock); visible: that report read (read_committed, after the "
                        "checkpoint that commits it); call: `mailroom models deploy`'s checks, publish and registry move.")
    for name in ("p", "load docs/s", "deploys", "what", "min", "median", "max"):
        out.add_column(name, justify="left" if name == "what" else "right")
    for f in figures:
        summary = f.summary
        rows = [(f"subtask {s}", spread) for s, spread in summary["per_subtask_ms"].items()]
        rows += [("all serving (max)", summary["serving_max_ms"]), ("all visible (max)", summary["visible_max_ms"]),
                 ("deploy call", summary["call_ms"])]
        for i, (what, spread) in enumerate(rows):
            head = (num(f.parallelism), "idle" if f.offered_per_s is None else num(f.offered_per_s), str(summary["deploys"])) if i == 0 else ("", "", "")
            out.add_row(*head, what, num(spread["min"]), num(spread["median"]), num(spread["max"]), end_section=i == len(rows) - 1)
    return out


def num(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def plot(results: list[Result], path: Path) -> None:
    """Sustained throughput per variant (left, log scale) and latency percentiles (right)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.55 * len(results) + 2.5))
    rated = [r for r in results if r.docs_per_s]
    bars = left.barh([r.label for r in rated], [r.docs_per_s for r in rated], color="tab:blue")
    left.bar_label(bars, labels=[f"{r.docs_per_s:,.0f}" for r in rated], padding=3)
    if rated:
        left.set_xlim(10 ** math.floor(math.log10(min(r.docs_per_s for r in rated) / 3)), max(r.docs_per_s for r in rated) * 4)
    left.set(xscale="log", xlabel="documents/s", title="sustained throughput (pre-filled backlog)")
    left.invert_yaxis()
    timed = [r for r in results if r.latency_ms and r.latency_ms["p50"] is not None]
    rows = np.arange(len(timed))
    for offset, point in zip((-0.27, 0, 0.27), ("p50", "p95", "p99")):
        right.barh(rows + offset, [r.latency_ms[point] for r in timed], height=0.27, label=point)
    right.set_yticks(rows, [f"{r.label}\n@ {r.offered_per_s:,.0f} docs/s" for r in timed])
    right.set(xlabel="ms from receipt to a department topic", title="latency at half the sustained rate")
    right.invert_yaxis()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
