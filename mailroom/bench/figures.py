"""The bench's figures: percentiles, the sustained-throughput window, a variant's Result, the goal
line (the peer, and what shadow scoring costs), and the deploy-to-serving times from model events."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable

from models.ocr import NO_TEXT, READ

SHADOW = "mailroom-shadow"  # the scoring job with the champion also in the CHALLENGER slot, sample 1.0
AT_LEAST_ONCE = "mailroom-at-least-once"  # the scoring job with --delivery at-least-once: output visible without waiting for a checkpoint
NO_OCR = "mailroom-no-ocr"  # the scoring job with --no-ocr: the layout model decides every scan (the fallback-only path)
CLUSTER = "mailroom-cluster"  # the scoring job on a session cluster of its own: one TaskManager process (one slot) per subtask
SCANS = "mailroom-scans"  # the scoring job over the scans alone: its scan reader's pages per second
OCR_CLI = "tesseract-cli"  # the `tesseract` command line, one process per page: the reading limit
OCR_READER = "scan-reader"  # udfs.reading.ScanReader in one process, the engine loaded once


def percentiles(values, points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p95": ..., "p99": ...} by linear interpolation; None when there are no values.

    >>> percentiles(range(1, 101))["p50"]
    50.5
    """
    import numpy as np

    values = np.asarray(list(values), dtype=float)
    if not values.size:
        return {f"p{p}": None for p in points}
    return {f"p{p}": round(float(v), 1) for p, v in zip(points, np.percentile(values, points))}


def falling_behind(latencies_in_send_order: list[int], min_ms: int = 1000, factor: float = 3.0) -> bool:
    """Whether a paced phase's latency grew while it ran: the median of its last quarter (in send order) more than
    `factor` times the first quarter's and over `min_ms`. Then the row could not hold the half of its docs/s it was
    offered, and the sustained window overstated its rate (e.g. subtasks that finished a backlog unevenly).

    >>> falling_behind([300, 320, 310, 330, 290, 310, 305, 315])
    False
    >>> falling_behind([300, 600, 1200, 1800, 2600, 3400, 4300, 5200])
    True
    """
    quarter = len(latencies_in_send_order) // 4
    if quarter < 2:
        return False
    first, last = statistics.median(latencies_in_send_order[:quarter]), statistics.median(latencies_in_send_order[-quarter:])
    return last > min_ms and last > factor * first


@dataclass(frozen=True)
class Window:
    """The records processed between two processing timestamps (epoch ms)."""

    start_ms: int
    end_ms: int
    records: int

    @property
    def rate(self) -> float:
        return self.records / ((self.end_ms - self.start_ms) / 1000)


def sustained_window(times_ms, low: float = 0.1, high: float = 0.9) -> Window | None:
    """The window from the `low` to the `high` quantile of the records' processing timestamps.

    It counts the records stamped after its start and up to its end, so a micro-batch stamped
    at one instant counts once it is done. None if the quantiles do not span any time.

    >>> sustained_window([1000] * 100 + [2000] * 100 + [3000] * 100).rate  # 100 per second
    100.0
    """
    import numpy as np

    times = np.sort(np.asarray(list(times_ms), dtype=np.int64))
    if times.size < 2:
        return None
    start, end = int(times[int(low * (times.size - 1))]), int(times[math.ceil(high * (times.size - 1))])
    if end <= start:
        return None
    return Window(start, end, int(np.count_nonzero((times > start) & (times <= end))))


@dataclass
class Result:
    """One row of the table: a variant's figures."""

    variant: str
    input: str
    parallelism: int | None
    docs: int
    docs_per_s: float | None
    offered_per_s: float | None = None
    latency_ms: dict | None = None  # receipt -> arrival in a department topic
    scored_latency_ms: dict | None = None  # receipt -> scored (before any commit)
    cpu_s: float | None = None
    cpu_ms_per_doc: float | None = None  # within the throughput window
    peak_rss_mb: float | None = None
    wall_s: float | None = None
    first_output_s: float | None = None  # process start -> first record processed
    own_cores: float | None = None  # the variant's processes, on average while they ran
    machine_busy_cores: float | None = None  # machine-wide (the broker, the bench, other users too)
    shadow: dict | None = None  # mailroom-shadow: shadow_check of the shadow-predictions topic
    checkpoint_interval_ms: int | None = None  # the scoring job's, when the run set it (a sweep)
    taskmanagers: int | None = None  # mailroom-cluster: the TaskManager processes its subtasks ran on
    buffer_timeout_ms: int | None = None  # the scoring job's network buffer timeout, when the run set it
    max_batch_delay_ms: int | None = None  # the scoring job's (and the peer's) micro-batch wait, when the run set it
    latency_by_kind_ms: dict | None = None  # "text" / "scans" -> latency_ms's percentiles of those documents alone
    embedded_jvm_opts: str | None = None  # the embedded jobs' JVM options, when the run set them (a sweep)
    ocr_engines: int | None = None  # the scoring job's Tesseract engines per scan reader, when the run set them (a sweep)
    ocr_inverted_retry: str | None = None  # the scoring job's --ocr-inverted-retry (on/off), when the run set it (a sweep)
    taskmanager_jvm_opts: str | None = None  # mailroom-cluster: the TaskManagers' JVM options, when the run set them (a sweep)
    scans_read: dict | None = None  # OCR status -> scans that arrived with it; a row whose scans were not read is not comparable
    fell_behind: bool | None = None  # its latency grew through the paced phase: its docs/s overstates what it holds (falling_behind)

    @property
    def tuning(self) -> str:
        return tuning_label(self.checkpoint_interval_ms, self.buffer_timeout_ms, self.max_batch_delay_ms, self.embedded_jvm_opts,
                            self.ocr_engines, self.ocr_inverted_retry, self.taskmanager_jvm_opts)

    @property
    def label(self) -> str:
        return " ".join(part for part in (f"{self.variant} {self.input}", f"p{self.parallelism}" if self.parallelism else "", self.tuning)
                        if part)


def tuning_label(checkpoint_interval_ms: int | None, buffer_timeout_ms: int | None, max_batch_delay_ms: int | None,
                 embedded_jvm_opts: str | None = None, ocr_engines: int | None = None, ocr_inverted_retry: str | None = None,
                 taskmanager_jvm_opts: str | None = None) -> str:
    """The scoring job's knobs a run set (None: not set).

    >>> tuning_label(500, None, 20)
    'ckpt 500 ms batch 20 ms'
    >>> tuning_label(None, None, None, "")
    'jvm (defaults)'
    >>> tuning_label(None, None, 20, None, 2)
    'batch 20 ms ocr engines 2'
    >>> tuning_label(None, None, None, None, None, "off")
    'inverted retry off'
    >>> tuning_label(None, None, None, taskmanager_jvm_opts="-XX:+UseSerialGC")
    'tm jvm (-XX:+UseSerialGC)'
    """
    knobs = (("ckpt", checkpoint_interval_ms), ("buffer", buffer_timeout_ms), ("batch", max_batch_delay_ms))
    parts = [f"{name} {ms} ms" for name, ms in knobs if ms is not None]
    if embedded_jvm_opts is not None:
        parts.append(f"jvm ({embedded_jvm_opts or 'defaults'})")  # not [...]: rich would read it as markup
    if ocr_engines is not None:
        parts.append(f"ocr engines {ocr_engines}")
    if ocr_inverted_retry is not None:
        parts.append(f"inverted retry {ocr_inverted_retry}")
    if taskmanager_jvm_opts is not None:
        parts.append(f"tm jvm ({taskmanager_jvm_opts or 'defaults'})")
    return " ".join(parts)


STAGES = ("decode the record", "scan: decode the page, layout features", "scan: OCR", "sender features", "score the batch, encode outputs")


@dataclass
class StageProfile:
    """Where a document's time goes in the scoring logic (plain Python, one thread, nothing cached): seconds per
    stage summed over `docs` documents of each kind (text, scan)."""

    seconds: dict  # kind -> stage -> s
    docs: dict  # kind -> documents

    def ms_per_doc(self, kind: str, stage: str) -> float | None:
        n, spent = self.docs.get(kind, 0), self.seconds.get(kind, {}).get(stage, 0.0)
        return 1000 * spent / n if n and spent else None  # None: the stage is not a step of this kind

    def mixed_ms_per_doc(self) -> float | None:
        """The logic's ms per document over the whole mix."""
        n = sum(self.docs.values())
        return 1000 * sum(sum(stages.values()) for stages in self.seconds.values()) / n if n else None

    def rows(self, job_cpu_ms_per_doc: float | None = None) -> list[tuple[str, float | None, float | None, float | None]]:
        """(stage, text ms/doc, scan ms/doc, share of the mix), then the whole logic and, given the job's CPU ms per
        document over the same mix, what the rest of the job costs (Flink, the bridge, Kafka, serialisation).

        >>> p = StageProfile({"text": {"decode the record": 0.1, "sender features": 0.1}, "scan": {"scan: OCR": 1.0}}, {"text": 100, "scan": 10})
        >>> [(stage, text, scan, round(share, 3)) for stage, text, scan, share in p.rows(20.0)][-2:]
        [('all of the logic', 2.0, 100.0, 0.545), ('the rest of the job (Flink, bridge, Kafka)', None, None, 0.455)]
        """
        mixed = self.mixed_ms_per_doc() or 0.0
        n = sum(self.docs.values()) or 1
        total = max(job_cpu_ms_per_doc or 0.0, mixed) or 1.0
        out = []
        for stage in STAGES:
            spent = sum(stages.get(stage, 0.0) for stages in self.seconds.values())
            if spent:
                out.append((stage, self.ms_per_doc("text", stage), self.ms_per_doc("scan", stage), 1000 * spent / n / total))
        text = sum(self.seconds.get("text", {}).values()) * 1000 / self.docs["text"] if self.docs.get("text") else None
        scan = sum(self.seconds.get("scan", {}).values()) * 1000 / self.docs["scan"] if self.docs.get("scan") else None
        out.append(("all of the logic", text, scan, mixed / total))
        if job_cpu_ms_per_doc:
            out.append(("the rest of the job (Flink, bridge, Kafka)", None, None, max(job_cpu_ms_per_doc - mixed, 0.0) / total))
        return out


def _head_to_head(results: list[Result]) -> dict[int, tuple[float, float]]:
    """parallelism -> (mailroom docs/s, peer docs/s), for each parallelism both ran at."""
    rates: dict = {}
    for r in results:  # a checkpoint-interval sweep: the first interval's row
        if r.docs_per_s:
            rates.setdefault((r.variant, r.parallelism), r.docs_per_s)
    both = sorted(p for variant, p in rates if variant == "mailroom" and ("peer", p) in rates)
    return {p: (rates["mailroom", p], rates["peer", p]) for p in both}


def goal(results: list[Result]) -> dict[str, float]:
    """Mailroom's sustained throughput over the peer's, per parallelism both ran at."""
    return {f"p{p}": round(mailroom / peer, 2) for p, (mailroom, peer) in _head_to_head(results).items()}


READ_STATUSES = (READ, NO_TEXT)  # the engine read the page (NO_TEXT: and found none); any other status: it did not


def unread_scans(results: list[Result]) -> str:
    """A warning naming each row with scans its engines did not read (over budget, failed, ...), "" if none: such a row
    did less work per document than the others, and its throughput compares nothing.

    >>> unread_scans([Result("mailroom", "mixed", 1, 10, 5.0, scans_read={"READ": 3}),
    ...               Result("peer", "mixed", 1, 10, 5.0, scans_read={"READ": 1, "OVER_BUDGET": 2})])
    'scans not read: peer mixed p1 (OVER_BUDGET 2 of 3)'
    """
    rows = [f"{r.label} ({', '.join(f'{status} {n}' for status, n in sorted(r.scans_read.items()) if status not in READ_STATUSES)} "
            f"of {sum(r.scans_read.values())})" for r in results
            if r.scans_read and any(status not in READ_STATUSES for status in r.scans_read)]
    return f"scans not read: {'; '.join(rows)}" if rows else ""


def rows_that_fell_behind(results: list[Result]) -> str:
    """A warning naming each row that fell behind at half its own rate, "" if none."""
    rows = [r.label for r in results if r.fell_behind]
    return (f"fell behind at half load (latency grew through the paced phase; its docs/s overstates what it holds): "
            f"{'; '.join(rows)}") if rows else ""


def goal_line(results: list[Result]) -> str:
    """The peer comparison, then (when both ran) what shadow scoring at 100% costs."""
    pairs = _head_to_head(results)
    if not pairs:
        line = "Goal line: needs the peer and mailroom at the same parallelism."
    else:
        parts = [f"{mailroom / peer:.2f}x at p{p} ({mailroom:,.0f} vs {peer:,.0f} docs/s)" for p, (mailroom, peer) in pairs.items()]
        line = ("Goal: Mailroom's scoring job sustains " + ", ".join(parts) + " the throughput of the hand-written peer, Kafka in to "
                "Kafka out - and gives exactly-once output and checkpointed sender state, which the peer lacks (it auto-commits "
                "offsets, loses its state on restart, and at p>1 splits each sender's history across processes).")
    extra = [text for text in (delivery_line(results), interval_line(results), shadow_line(results), ocr_line(results)) if text]
    return "\n".join([line, *extra])


def delivery_line(results: list[Result]) -> str | None:
    """p99 from receipt to a department topic at half load, exactly-once beside at-least-once, per parallelism both ran at.

    >>> rows = [Result("mailroom", "routed", 1, 10, 400, latency_ms={"p99": 1800.0}),
    ...         Result(AT_LEAST_ONCE, "routed", 1, 10, 410, latency_ms={"p99": 240.0})]
    >>> delivery_line(rows)
    'Delivery: p99 at half load, exactly-once vs at-least-once: p1 1,800 vs 240 ms (docs/s 400 vs 410).'
    """
    rows = {(r.variant, r.parallelism): r for r in results}
    pairs = [(p, rows["mailroom", p], rows[AT_LEAST_ONCE, p]) for variant, p in sorted(rows, key=lambda k: (k[1] or 0, k[0]))
             if variant == "mailroom" and (AT_LEAST_ONCE, p) in rows]
    if not pairs:
        return None

    def p99(row: Result) -> str:
        value = (row.latency_ms or {}).get("p99")
        return "?" if value is None else f"{value:,.0f}"

    parts = [f"p{p} {p99(eo)} vs {p99(alo)} ms (docs/s {eo.docs_per_s or 0:,.0f} vs {alo.docs_per_s or 0:,.0f})" for p, eo, alo in pairs]
    return "Delivery: p99 at half load, exactly-once vs at-least-once: " + ", ".join(parts) + "."


def interval_line(results: list[Result], keep: float = 0.95) -> str | None:
    """A checkpoint-interval sweep of the mailroom variant, per parallelism: docs/s and p99 at each interval, and the
    shortest interval that keeps `keep` of the best throughput (exactly-once output waits for the checkpoint).

    >>> rows = [Result("mailroom", "routed", 1, 10, r, latency_ms={"p99": l}, checkpoint_interval_ms=i)
    ...         for i, r, l in ((2000, 100, 2400.0), (1000, 99, 1300.0), (500, 97, 800.0), (250, 80, 600.0))]
    >>> interval_line(rows)
    'Checkpoint interval, mailroom p1: 2000 ms 100 docs/s p99 2,400; 1000 ms 99 docs/s p99 1,300; 500 ms 97 docs/s p99 800; 250 ms 80 docs/s p99 600 (shortest keeping 95% of the best rate: 500 ms).'
    """
    lines = []
    groups = sorted({(r.parallelism or 0, r.buffer_timeout_ms or 0, r.max_batch_delay_ms or 0) for r in results})
    for p, buffer_ms, batch_ms in groups:  # the other knobs alike: only the interval differs within a line
        swept = sorted((r for r in results if r.variant == "mailroom" and ((r.parallelism or 0), r.buffer_timeout_ms or 0,
                        r.max_batch_delay_ms or 0) == (p, buffer_ms, batch_ms) and r.checkpoint_interval_ms and r.docs_per_s),
                       key=lambda r: -r.checkpoint_interval_ms)
        if len(swept) < 2:
            continue
        best = max(r.docs_per_s for r in swept)
        chosen = min(r.checkpoint_interval_ms for r in swept if r.docs_per_s >= keep * best)
        parts = [f"{r.checkpoint_interval_ms} ms {r.docs_per_s:,.0f} docs/s p99 {(r.latency_ms or {}).get('p99') or 0:,.0f}" for r in swept]
        others = "".join(f" {name} {ms} ms" for name, ms in (("buffer", buffer_ms), ("batch", batch_ms)) if ms)
        lines.append(f"Checkpoint interval, mailroom p{p}{others}: " + "; ".join(parts)
                     + f" (shortest keeping {keep:.0%} of the best rate: {chosen} ms).")
    return "\n".join(lines) or None


# --- reading scans -------------------------------------------------------------------------------


def _per_core(row: Result | None) -> float | None:
    """Pages (documents) per CPU second of the row's own processes."""
    return None if row is None or not row.cpu_ms_per_doc else 1000 / row.cpu_ms_per_doc


def ocr_figures(results: list[Result]) -> dict:
    """Pages per CPU second of the tesseract CLI, the in-process reader and the scoring job over
    scans at each parallelism; the job's over the CLI's (`vs_cli`, the issue asks >= 0.9); the job's
    p2 rate over its p1 rate (`scaling`); and, per parallelism, OCR on (mailroom) against the
    fallback-only path (mailroom-no-ocr): docs/s and p99."""
    rows = {(r.variant, r.parallelism): r for r in results}
    cli, reader = rows.get((OCR_CLI, 1)), rows.get((OCR_READER, 1))
    jobs = {p: r for (variant, p), r in rows.items() if variant == SCANS}
    out: dict = {"cli_pages_per_cpu_s": _round(_per_core(cli)), "reader_pages_per_cpu_s": _round(_per_core(reader)),
                 "job_pages_per_cpu_s": {f"p{p}": _round(_per_core(r)) for p, r in sorted(jobs.items())}}
    if cli and 1 in jobs:
        out["vs_cli"] = _ratio(_per_core(jobs[1]), _per_core(cli))
    if 1 in jobs and 2 in jobs:
        out["scaling"] = _ratio(jobs[2].docs_per_s, jobs[1].docs_per_s)
    out["ocr_on_vs_off"] = {f"p{p}": {"docs_per_s": [rows["mailroom", p].docs_per_s, rows[NO_OCR, p].docs_per_s],
                                      "p99_ms": [(rows["mailroom", p].latency_ms or {}).get("p99"), (rows[NO_OCR, p].latency_ms or {}).get("p99")]}
                            for (variant, p) in rows if variant == "mailroom" and (NO_OCR, p) in rows}
    return out


def ocr_line(results: list[Result]) -> str | None:
    """The reading figures in words; None when no reading variant ran."""
    figures = ocr_figures(results)
    parts = []
    if figures["cli_pages_per_cpu_s"] or figures["reader_pages_per_cpu_s"]:
        parts.append(f"tesseract CLI {_num1(figures['cli_pages_per_cpu_s'])}, scan reader in-process {_num1(figures['reader_pages_per_cpu_s'])}"
                     + "".join(f", scoring job over scans {p} {_num1(v)}" for p, v in figures["job_pages_per_cpu_s"].items())
                     + " pages per CPU second")
    if "vs_cli" in figures:
        parts.append(f"the job reads {figures['vs_cli']:.2f}x the CLI's pages per core (the issue asks at least 0.9x)")
    if "scaling" in figures:
        parts.append(f"p2 reads {figures['scaling']:.2f}x p1's pages per second")
    for p, on_off in figures["ocr_on_vs_off"].items():
        (on, off), (p99_on, p99_off) = on_off["docs_per_s"], on_off["p99_ms"]
        parts.append(f"OCR on vs the fallback-only path at {p}: {_num(on)} vs {_num(off)} docs/s, p99 {_num(p99_on)} vs {_num(p99_off)} ms")
    return ("Reading scans: " + "; ".join(parts) + ".") if parts else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _num1(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


# --- shadow scoring ------------------------------------------------------------------------------


def _plain_and_shadow(results: list[Result]) -> dict[int, tuple[Result, Result]]:
    """parallelism -> (mailroom, mailroom-shadow), for each parallelism both ran at."""
    rows = {(r.variant, r.parallelism): r for r in results}
    return {p: (rows["mailroom", p], rows[SHADOW, p]) for variant, p in sorted(rows, key=lambda k: (k[1] or 0, k[0]))
            if variant == "mailroom" and (SHADOW, p) in rows}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if not numerator or not denominator else round(numerator / denominator, 2)


def shadow_cost(results: list[Result]) -> dict[str, dict[str, float | None]]:
    """Per parallelism both ran at, what a challenger in shadow on every document costs: `throughput`,
    mailroom's sustained rate over mailroom-shadow's (2.0: half the rate), and `p99`, mailroom-shadow's
    p99 latency at half its sustained rate over mailroom's at half of its own (2.0: twice as long).
    Beside them, mailroom-shadow's over mailroom's: `cpu_per_doc` (in the throughput window; less
    sensitive to what else runs on the machine) and `scored_p99` (receipt to scored, before the
    checkpoint wait that dominates `p99`)."""
    return {f"p{p}": {"throughput": _ratio(plain.docs_per_s, shadow.docs_per_s),
                      "p99": _ratio((shadow.latency_ms or {}).get("p99"), (plain.latency_ms or {}).get("p99")),
                      "cpu_per_doc": _ratio(shadow.cpu_ms_per_doc, plain.cpu_ms_per_doc),
                      "scored_p99": _ratio((shadow.scored_latency_ms or {}).get("p99"), (plain.scored_latency_ms or {}).get("p99"))}
            for p, (plain, shadow) in _plain_and_shadow(results).items()}


def shadow_line(results: list[Result]) -> str | None:
    """"Shadow at 100% costs X× throughput, Y× p99" per parallelism, with the pair count; for a
    mailroom-shadow row without mailroom beside it, only the pair count; None without either."""
    both = _plain_and_shadow(results)
    if not both:
        alone = [r for r in results if r.variant == SHADOW and r.shadow]
        if not alone:
            return None
        return "Shadow at 100% (no mailroom row at the same parallelism to compare with): " + "; ".join(
            f"{shadow_pairs_text(r.shadow)} at p{r.parallelism}" for r in alone) + "."

    def times(value: float | None) -> str:
        return "?" if value is None else f"{value:.2f}x"

    parts = []
    for p, (plain, shadow) in both.items():
        cost = shadow_cost(results)[f"p{p}"]
        p99 = [(r.latency_ms or {}).get("p99") for r in (plain, shadow)]
        part = (f"{times(cost['throughput'])} throughput, {times(cost['p99'])} p99 at p{p} "
                f"({_num(plain.docs_per_s)} vs {_num(shadow.docs_per_s)} docs/s; p99 {_num(p99[0])} vs {_num(p99[1])} ms at half load; "
                f"CPU/doc {times(cost['cpu_per_doc'])}, scored p99 {times(cost['scored_p99'])})")
        if shadow.shadow:
            part += f"; {shadow_pairs_text(shadow.shadow)}"
        parts.append(part)
    return "Shadow at 100% costs " + "; ".join(parts) + " - the issue asks for well under 2x."


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def shadow_check(scored_ids: Iterable[str], pair_ids: Iterable[str]) -> dict[str, int | bool]:
    """The shadow-predictions topic against the documents scored: with a challenger at sample 1.0,
    one paired record per document (`ok`). `missing`: scored without a pair; `twice`: paired more
    than once; `unexpected`: pairs of documents not scored."""
    scored, pairs = set(scored_ids), Counter(pair_ids)
    return {"documents": len(scored), "pairs": sum(pairs.values()), "paired": len(scored & pairs.keys()),
            "missing": len(scored - pairs.keys()), "twice": sum(1 for doc, n in pairs.items() if n > 1 and doc in scored),
            "unexpected": sum(n for doc, n in pairs.items() if doc not in scored),
            "ok": pairs.keys() == scored and all(n == 1 for n in pairs.values())}


def shadow_pairs_text(check: dict) -> str:
    text = f"{check['pairs']:,} shadow pairs for {check['documents']:,} documents"
    if check["ok"]:
        return text + " (one each)"
    problems = [f"{check[k]:,} {what}" for k, what in (("missing", "without a pair"), ("twice", "paired twice"),
                                                        ("unexpected", "pairs of unknown documents")) if check[k]]
    return text + f" ({', '.join(problems)})"


# --- deploy to serving ---------------------------------------------------------------------------


def first_serving(events: Iterable[tuple[dict, int]], kind: str, slot: str, version: str, since_ms: int) -> dict[int, tuple[int, int]]:
    """subtask -> (at_ms, arrived_ms) of its first model event, at or after `since_ms`, saying it
    serves `version` of `kind` in `slot`. `events`: (model_event record, arrival at the bench, epoch ms)."""
    first: dict[int, tuple[int, int]] = {}
    for event, arrived_ms in events:
        if (event["outcome"] == "SERVING" and event["kind"] == kind and event["slot"] == slot and event["version"] == version
                and event["at_ms"] >= since_ms and (event["subtask"] not in first or event["at_ms"] < first[event["subtask"]][0])):
            first[event["subtask"]] = (event["at_ms"], arrived_ms)
    return first


def deploy_timing(version: str, sent_ms: int, serving: dict[int, tuple[int, int]], call_ms: float) -> dict:
    """One deploy's figures: per subtask, ms from the champion record's send to its SERVING report
    (`serving_ms`, the subtask's own clock) and to that report's arrival at a read_committed
    consumer (`visible_ms`, after the checkpoint that commits it); the max over subtasks of each; and
    `call_ms`, how long the deploy call took (checks, publish, registry)."""
    serving_ms = {subtask: at_ms - sent_ms for subtask, (at_ms, _) in sorted(serving.items())}
    visible_ms = {subtask: arrived_ms - sent_ms for subtask, (_, arrived_ms) in sorted(serving.items())}
    return {"version": version, "sent_ms": sent_ms, "serving_ms": serving_ms, "visible_ms": visible_ms,
            "serving_max_ms": max(serving_ms.values(), default=None), "visible_max_ms": max(visible_ms.values(), default=None),
            "call_ms": round(call_ms)}


def spread(values: Iterable[float]) -> dict[str, float | None]:
    """{"min", "median", "max"}; None each when there are no values.

    >>> spread([300, 100, 200, 900])
    {'min': 100, 'median': 250.0, 'max': 900}
    """
    values = list(values)
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def deploy_summary(deploys: list[dict]) -> dict:
    """Min/median/max over the deploys: per subtask, of the slowest subtask, of the visible report, of the call."""
    subtasks = sorted({s for d in deploys for s in d["serving_ms"]})
    return {"deploys": len(deploys), "per_subtask_ms": {s: spread(d["serving_ms"][s] for d in deploys if s in d["serving_ms"]) for s in subtasks},
            "serving_max_ms": spread(d["serving_max_ms"] for d in deploys), "visible_max_ms": spread(d["visible_max_ms"] for d in deploys),
            "call_ms": spread(d["call_ms"] for d in deploys)}


@dataclass
class DeployFigures:
    """The deploy-to-serving measurement at one parallelism: one `deploy_timing` per deploy."""

    kind: str
    parallelism: int
    offered_per_s: float | None  # background load while deploying; None: idle
    deploys: list[dict] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        return deploy_summary(self.deploys)


# --- the figures to reach (issue 13) --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One figure to reach: what is compared, the goal, what this run measured (None: not measured) and how."""

    figure: str
    goal: str
    measured: float | None
    detail: str
    met: bool | None  # None: not measured


def _target(figure: str, goal: str, measured: float | None, detail: str, at_least: float | None = None,
            at_most: float | None = None) -> Target:
    met = None if measured is None else (measured >= at_least if at_least is not None else measured <= at_most)
    return Target(figure, goal, measured, detail, met)


def targets(results: list[Result], stack_memory: dict | None = None) -> list[Target]:
    """The figures to reach, each from this run's rows side by side (a sweep: its first interval's rows); the
    stack's memory from the latest `make run` (`stack_memory`: what mailroom.demo recorded, or None).

    >>> rows = [Result("peer", "m", 1, 9, 10.0), Result("mailroom", "m", 1, 9, 12.0, latency_ms={"p99": 900.0}),
    ...         Result(CLUSTER, "m", 2, 9, 21.0), Result("peer", "m", 2, 9, 20.0)]
    >>> [(t.figure.split(":")[0], t.measured, t.met) for t in targets(rows)][:4]
    [('scoring job / peer at p1', 1.2, True), ('scoring job / peer at p2', 1.05, True), ('p2 on two TaskManagers / p1 on the MiniCluster', 1.75, True), ('p99 at half load, exactly-once', 900.0, True)]
    """
    rows: dict = {}
    for r in results:
        rows.setdefault((r.variant, r.input if r.variant == "router" else None, r.parallelism), r)

    def rate(variant: str, p: int | None, input_: str | None = None) -> float | None:
        row = rows.get((variant, input_, p))
        return row.docs_per_s if row else None

    def p99(variant: str, p: int) -> float | None:
        row = rows.get((variant, None, p))
        return (row.latency_ms or {}).get("p99") if row else None

    def vs(a: float | None, b: float | None) -> str:
        return f"{_num(a)} vs {_num(b)} docs/s"

    out = [_target("scoring job / peer at p1: docs/s", ">= 1.0x", _ratio(rate("mailroom", 1), rate("peer", 1)),
                   f"MiniCluster {vs(rate('mailroom', 1), rate('peer', 1))}", at_least=1.0)]
    at_p2, where = (CLUSTER, "two TaskManagers") if rate(CLUSTER, 2) else ("mailroom", "MiniCluster")
    out.append(_target("scoring job / peer at p2: docs/s", ">= 1.0x", _ratio(rate(at_p2, 2), rate("peer", 2)),
                       f"{where} {vs(rate(at_p2, 2), rate('peer', 2))}", at_least=1.0))
    out.append(_target("p2 on two TaskManagers / p1 on the MiniCluster", ">= 1.7x", _ratio(rate(CLUSTER, 2), rate("mailroom", 1)),
                       vs(rate(CLUSTER, 2), rate("mailroom", 1)) + (f"; p1 on one TaskManager {_num(rate(CLUSTER, 1))}" if rate(CLUSTER, 1) else "")
                       + _cores_used(rows.get((CLUSTER, None, 2)), rows.get(("mailroom", None, 1))), at_least=1.7))
    out.append(_target("p99 at half load, exactly-once", "<= 1,000 ms", p99("mailroom", 1), "mailroom p1, receipt to a department topic",
                       at_most=1000))
    out.append(_target("p99 at half load, at-least-once", "<= 300 ms", p99(AT_LEAST_ONCE, 1), f"{AT_LEAST_ONCE} p1", at_most=300))
    out.append(_target("router, scans: gray PNGs passed as sent / the same pages decoded and re-encoded", ">= 2.0x",
                       _ratio(rate("router", 1, "scans"), rate("router", 1, "scans in colour")),
                       vs(rate("router", 1, "scans"), rate("router", 1, "scans in colour")), at_least=2.0))
    peak = (stack_memory or {}).get("peak_rss_mb")
    out.append(_target("peak RSS of the whole embedded stack during `make run`", "<= 3,072 MB", peak,
                       f"make run {stack_memory['run_id']} at {stack_memory['at']}" if stack_memory else "no record: run `make run`",
                       at_most=3072))
    return out


def _cores_used(p2: Result | None, p1: Result | None) -> str:
    """What the two rows' processes used of the machine's cores: a p1 that already uses them all leaves p2 nothing to add.

    >>> _cores_used(Result(CLUSTER, "m", 2, 9, 30.0, own_cores=1.62), Result("mailroom", "m", 1, 9, 34.0, own_cores=1.5))
    '; cores used 1.6 vs 1.5'
    """
    if not (p2 and p1 and p2.own_cores and p1.own_cores):
        return ""
    return f"; cores used {p2.own_cores:.1f} vs {p1.own_cores:.1f}"


def report(results: list[Result], meta: dict, errors: list[str], deploys: Iterable[DeployFigures] = (),
           stack_memory: dict | None = None) -> dict:
    """Everything the JSON file holds."""
    return {**meta, "results": [{"label": r.label, **asdict(r)} for r in results], "goal": goal(results),
            "targets": [asdict(t) for t in targets(results, stack_memory)], "stack_memory": stack_memory,
            "shadow_cost": shadow_cost(results), "reading": ocr_figures(results), "deploy_to_serving": [{**asdict(d), "summary": d.summary} for d in deploys],
            "errors": errors}
