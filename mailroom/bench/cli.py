"""`mailroom bench`: the subcommand, its checks and the run of the chosen variants."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from config.settings import PROJECT_DIR, Settings
from mailroom.bench.corpus import build_corpus
from mailroom.memory import read_record
from mailroom.bench.figures import AT_LEAST_ONCE, CLUSTER, NO_OCR, SCANS, SHADOW, DeployFigures, Result, StageProfile, report, targets
from mailroom.bench.output import console, deploy_table, err, plot, stage_table, table, targets_table
from mailroom.bench.variants import (OCR_PAGES, QUICK_OCR_PAGES, ROUTER_INPUTS, BenchError, Run, profile_scoring, run_deploys, run_limit, run_reading_limits,
                                     run_router, run_stream, scans_only, stage_profile)

VARIANTS = ("limit", "stages", "router", "reading", "peer", "mailroom", AT_LEAST_ONCE, CLUSTER, NO_OCR, SHADOW, "deploy")
DOCS, QUICK_DOCS = 12_000, 400
DEPLOYS, QUICK_DEPLOYS = 5, 3  # champion deploys of the deploy measurement
PACED_S, QUICK_PACED_S = 20.0, 5.0  # how long the paced producer offers load
STAGE_DOCS, QUICK_STAGE_DOCS = 600, 100  # documents the stage profile times (their scans read by OCR, nothing cached)
ROUTER_TEXT_DOCS, QUICK_ROUTER_TEXT_DOCS = 20_000, 2_000  # text documents are repeated up to this many (the router is fast on text)


def _bench_doc() -> str:
    """The package docstring: the command's description and the report's method."""
    from mailroom import bench

    return bench.__doc__


def _check_ready(settings: Settings, needs_kafka: bool):
    """The scoring config from the registry; and Kafka answering, if needed. BenchError otherwise."""
    from models.registry import RegistryError
    from udfs.scoring import ScoringConfig

    try:
        config = ScoringConfig.from_registry(settings.registry_dir)
    except RegistryError as exc:
        raise BenchError(f"No champion models in {settings.registry_dir} ({exc}). Train them: `mailroom train` (`--quick`: a few seconds).")
    if needs_kafka:
        from mailroom.stack import Kafka

        if not Kafka(settings).status().running:
            raise BenchError(f"Kafka does not answer at {settings.bootstrap_servers}. Start the stack: `mailroom stack up`.")
    return config


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 <= args.scan_share < 1:
        err.print("[red]error:[/red] --scan-share must be at least 0 and below 1")
        return 2
    docs = args.docs or (QUICK_DOCS if args.quick else DOCS)
    variants = [v for v in VARIANTS if v in args.variants]
    try:
        config = _check_ready(settings, needs_kafka=not args.profile and not set(variants) <= {"limit", "stages"})
    except BenchError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    started = time.monotonic()
    corpus = build_corpus(docs, args.seed, args.scan_share)
    if args.profile:
        rate, text = profile_scoring(corpus, config)
        console.print(f"scoring logic (decode, SenderFeatures, BatchScorer) in plain Python, {len(corpus.routed):,} documents "
                      f"({corpus.mix}): {rate:,.0f} docs/s without the profiler")
        console.print(text, highlight=False, markup=False)
        return 0
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(settings, corpus, out_dir, run_id, tuple(args.parallelism or ((1,) if args.quick else (1, 2))),
              QUICK_PACED_S if args.quick else PACED_S, QUICK_ROUTER_TEXT_DOCS if args.quick else ROUTER_TEXT_DOCS,
              args.deploys or (QUICK_DEPLOYS if args.quick else DEPLOYS))
    run.log_dir.mkdir(exist_ok=True)
    steps: list[tuple[str, Callable[[], Result | DeployFigures]]] = []
    if "limit" in variants:
        steps.append(("limit", lambda: run_limit(run)))
    if "stages" in variants:
        steps.append(("stages of the scoring logic", lambda: stage_profile(corpus, config, QUICK_STAGE_DOCS if args.quick else STAGE_DOCS)))
    if "router" in variants:
        steps += [(f"router {kind}", lambda kind=kind: run_router(run, kind)) for kind in ROUTER_INPUTS
                  if any((d["content_type"] == "image") == (kind != "text") for d in corpus.documents)]
    if "reading" in variants:  # the tesseract CLI and the in-process reader, then the scoring job over the scans alone at each p
        steps.append(("reading: CLI and in-process", lambda: run_reading_limits(run, QUICK_OCR_PAGES if args.quick else OCR_PAGES)))
        steps += [(f"{SCANS} p{p}", lambda p=p: run_stream(replace(run, corpus=scans_only(corpus)), SCANS, p)) for p in run.parallelism]
    if "peer" in variants:  # at each batch wait of a sweep: the same policy as the job's
        steps += [(f"peer p{p} {tuned.tuning}".rstrip(), lambda p=p, tuned=tuned: run_stream(tuned, "peer", p))
                  for p in run.parallelism for tuned in (replace(run, max_batch_delay_ms=ms) for ms in args.max_batch_delay_ms or [None])]
    for p in run.parallelism:  # at-least-once, mailroom-no-ocr and mailroom-shadow beside mailroom at the same parallelism
        steps += [(f"{variant} p{p} {tuned.tuning}".rstrip(), lambda variant=variant, p=p, tuned=tuned: run_stream(tuned, variant, p))
                  for variant in ("mailroom", AT_LEAST_ONCE, CLUSTER, NO_OCR, SHADOW) for tuned in tunings(run, args)
                  if variant in variants]
    results: list[Result] = []
    if "deploy" in variants:  # under half of mailroom's sustained rate at that parallelism, if measured above; else idle
        steps += [(f"deploy p{p}", lambda p=p: run_deploys(run, p, _half_rate(results, p))) for p in run.parallelism]
    deploys: list[DeployFigures] = []
    profiles: list[StageProfile] = []
    errors = []
    for name, step in steps:
        console.print(f"[bold]{name}[/bold]")
        try:
            figures = step()
            if isinstance(figures, list):
                results += figures
            elif isinstance(figures, StageProfile):
                profiles.append(figures)
            else:
                (deploys if isinstance(figures, DeployFigures) else results).append(figures)
        except BenchError as exc:
            errors.append(str(exc))
            err.print(f"[red]{name} failed:[/red] {exc}")
    meta = {"run_id": run_id, "seconds": round(time.monotonic() - started), "docs": len(corpus.documents), "routed": len(corpus.routed),
            "seed": args.seed, "scan_share": round(corpus.scan_share, 3), "batch_size": config.batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms, "paced_s": run.paced_s,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "method": _bench_doc().split("How it measures")[1].split("Peer and mailroom")[0].strip()}
    meta["stages"] = [{"seconds": p.seconds, "docs": p.docs} for p in profiles]
    stack_memory = read_record(settings)
    (out_dir / "bench.json").write_text(json.dumps(report(results, meta, errors, deploys, stack_memory), indent=2))
    if results:
        plot(results, out_dir / "bench.png")
        console.print(table(results))
        console.print(targets_table(targets(results, stack_memory)))
    for profile in profiles:
        console.print(stage_table(profile, results))
    if deploys:
        console.print(deploy_table(deploys))
    console.print(f"raw figures: {out_dir / 'bench.json'}; plot: {out_dir / 'bench.png'}; logs: {run.log_dir}")
    return 1 if errors else 0


def tunings(run: Run, args: argparse.Namespace) -> list[Run]:
    """The run at every combination of the swept knobs (--checkpoint-interval-ms, --buffer-timeout-ms,
    --max-batch-delay-ms, --embedded-jvm-opts, --ocr-engines, --ocr-inverted-retry, --taskmanager-jvm-opts; a knob not given:
    the job's default), side by side."""
    return [replace(run, checkpoint_interval_ms=ckpt, buffer_timeout_ms=buffer, max_batch_delay_ms=batch, embedded_jvm_opts=jvm, ocr_engines=engines,
                    ocr_inverted_retry=inverted, taskmanager_jvm_opts=tm_jvm)
            for ckpt, buffer, batch, jvm, engines, inverted, tm_jvm in itertools.product(
                args.checkpoint_interval_ms or [None], args.buffer_timeout_ms or [None], args.max_batch_delay_ms or [None],
                args.embedded_jvm_opts or [None], args.ocr_engines or [None], args.ocr_inverted_retry or [None],
                args.taskmanager_jvm_opts or [None])]


def _half_rate(results: list[Result], parallelism: int) -> float | None:
    """Half of mailroom's sustained rate at `parallelism`, if this run measured it (the paced phase's load)."""
    rates = [r.docs_per_s for r in results if r.variant == "mailroom" and r.parallelism == parallelism and r.docs_per_s]
    return rates[0] / 2 if rates else None


def register(sub) -> None:
    parser = sub.add_parser("bench", help="throughput, latency, CPU and memory: Mailroom vs onnxruntime alone and a hand-written peer",
                            description=_bench_doc().split("\n`python -m")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="Needs champion models (`mailroom train`) and, unless only limit or --profile, the stack (`mailroom stack up`).")
    parser.add_argument("--docs", type=int, metavar="N", help=f"documents to generate (default {DOCS:,}: limit, router, peer and mailroom take 7-8 minutes on 2 cores, "
                        f"mailroom-shadow and deploy add a scoring job's run each per parallelism; --quick: {QUICK_DOCS})")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke: few documents, a short paced phase, parallelism 1")
    parser.add_argument("--scan-share", type=float, default=0.3, help="expected share of scanned documents (default %(default)s)")
    parser.add_argument("--seed", type=int, default=11, help="the generator's seed (default %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="V",
                        help=f"which variants to run, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--parallelism", nargs="+", type=int, metavar="P",
                        help="parallelisms of peer, mailroom, mailroom-shadow and deploy (default 1 2; --quick 1)")
    parser.add_argument("--deploys", type=int, metavar="N", help=f"champion deploys the deploy measurement times (default {DEPLOYS}; "
                        f"--quick {QUICK_DEPLOYS}), alternating two versions")
    parser.add_argument("--checkpoint-interval-ms", type=int, nargs="+", metavar="MS", help="the scoring job's checkpoint interval in the "
                        "mailroom variants (default: flink-conf/config.yaml's); several: a sweep, each variant at each interval, with "
                        "the shortest that keeps throughput (exactly-once output waits for the checkpoint that commits it)")
    parser.add_argument("--buffer-timeout-ms", type=int, nargs="+", metavar="MS", help="the scoring job's network buffer timeout in "
                        "the mailroom variants (default: flink-conf/config.yaml's): at low load a record may wait this long at each "
                        "hop between operators; several: a sweep")
    parser.add_argument("--max-batch-delay-ms", type=int, nargs="+", metavar="MS", help="how long a partial micro-batch waits in "
                        "the mailroom variants and the peer (default: ScoringConfig's); several: a sweep. The knobs' sweeps "
                        "combine: every combination runs")
    parser.add_argument("--embedded-jvm-opts", nargs="+", metavar="OPTS", help="the JVM options of the mailroom variants' embedded "
                        "MiniClusters (default: MAILROOM_EMBEDDED_JVM_OPTS's; \"\": the JVM's own defaults); several: a sweep, "
                        "e.g. --embedded-jvm-opts \"\" \"-Xms64m -Xmx1g -XX:+UseSerialGC\"")
    parser.add_argument("--ocr-engines", type=int, nargs="+", metavar="N", help="the scoring job's Tesseract engines per scan reader, "
                        "reading side by side (default: the job's); several: a sweep, e.g. --ocr-engines 1 2")
    parser.add_argument("--ocr-inverted-retry", nargs="+", choices=["on", "off"], metavar="ON_OFF", help="whether the scoring "
                        "job's engines read a poorly read line again as white on black (default: the job's, on); both: a sweep, "
                        "--ocr-inverted-retry on off")
    parser.add_argument("--taskmanager-jvm-opts", nargs="+", type=str.strip, metavar="OPTS", help="the JVM options of "
                        "mailroom-cluster's TaskManagers (default: MAILROOM_TASKMANAGER_JVM_OPTS's; \"\": none, the JVM's own "
                        "collector); several: a sweep, e.g. --taskmanager-jvm-opts \"\" \"-XX:+UseSerialGC \" (a single option "
                        "needs a space in its quotes, or it is read as an option of mailroom bench)")
    parser.add_argument("--profile", action="store_true", help="instead: profile the scoring logic in plain Python (cProfile, no Kafka) "
                        "and print the top functions by cumulative time")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "bench-results", help="results directory (default: %(default)s)")
    parser.set_defaults(func=_cmd)
