"""`mailroom generate | train | models | bench-models`: the model commands. `models deploy | retire | status`
reach the running scoring job through the model-control topic (their logic: mailroom/control.py).

The registry directory comes from --registry, else `Settings.registry_dir`
($MAILROOM_REGISTRY_DIR, default <run_dir>/registry).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from config.settings import PROJECT_DIR, Settings

if TYPE_CHECKING:  # models.training imports sklearn: only where training happens
    from models.training import TrainConfig

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEFAULT_REAL_DIR = PROJECT_DIR.parent / "shared" / "data" / "real"
TRAINED_KINDS = ("text", "scan", "image")  # models.modelio.KINDS, without importing the models package here
QUICK_OCR_CAP = 200  # generated scans the scan model reads with --quick: ~12 s of OCR on two quiet cores, cold (~25 s on a busy machine)


def registry_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.registry).expanduser().resolve() if args.registry else settings.registry_dir


def _add_registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="DIR", help="model registry directory (default: $MAILROOM_REGISTRY_DIR, else <run dir>/registry)")


# --- generate --------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from models.generator import generate, write_directory, write_jsonl

    start = time.perf_counter()
    docs = generate(args.n, seed=args.seed, scan_share=args.scan_share)
    if args.jsonl:
        write_jsonl(docs, Path(args.jsonl))
        where = args.jsonl
    else:
        where = str(write_directory(docs, Path(args.out)))
    scans = sum(d["content_type"] == "image" for d in docs)
    console.print(f"{len(docs)} documents ({scans} scans) from seed {args.seed} -> {where} in {time.perf_counter() - start:.1f} s")
    return 0


# --- train -----------------------------------------------------------------------------------


def train_config(quick: bool = False, kinds: tuple[str, ...] = TRAINED_KINDS, n: int | None = None, real: bool = True,
                 real_dir: Path | None = None, real_cap: int | None = None, ocr_cap: int | None = None, **options: object) -> TrainConfig:
    """`mailroom train`'s TrainConfig: `n` generated documents (default 3000, quick 300) plus, if `real`, the documents in
    `real_dir` (default DEFAULT_REAL_DIR if it exists), at most `real_cap` per source (default 1200, quick 150; 0 = all);
    the scan model reads at most `ocr_cap` generated scans (default all, quick QUICK_OCR_CAP; 0 = all).
    `options` are the other TrainConfig fields (seed, scan_share, strategy, ocr_cache_dir, ...). ValueError if `real_dir`
    does not exist."""
    from models.training import TrainConfig
    from udfs.scoring import ScoringConfig

    if not real:
        real_dir = None
    elif real_dir is None:
        real_dir = DEFAULT_REAL_DIR if DEFAULT_REAL_DIR.exists() else None
    elif not real_dir.exists():
        raise ValueError(f"real data directory {real_dir} does not exist (use --no-real to train on generated data only)")
    return TrainConfig(generated=n if n is not None else (300 if quick else 3000), real_dir=real_dir,
                       real_cap_per_source=(150 if quick else 1200) if real_cap is None else (real_cap or None), quick=quick,
                       ocr_generated_cap=(QUICK_OCR_CAP if quick else None) if ocr_cap is None else (ocr_cap or None),
                       kinds=tuple(kinds), **{"triage_threshold": ScoringConfig.triage_threshold,
                                                               "text_triage_threshold": ScoringConfig.text_triage_threshold, **options})


def train_models(config: TrainConfig, registry_dir: Path | None, progress: bool = True) -> dict[str, int | None]:
    """Train as `config` says, print each model's evaluation, and register each model whose ONNX export agrees with sklearn
    in `registry_dir` (None: evaluate only). Returns kind -> registered version (None: its ONNX parity failed, not
    registered). ValueError if the data cannot be trained on."""
    from models.registry import Registry
    from models.training import publish, train

    console.print(f"training on {config.generated} generated documents (seed {config.seed})"
                  + (f" + real data from {config.real_dir} (at most {config.real_cap_per_source} per source)" if config.real_dir else " (no real data)"))
    run = train(config, progress=progress)
    if run.data["ocr"]:
        _print_ocr(run.data["ocr"])
    for warning in run.split_warnings:
        console.print(f"[yellow]split warning:[/yellow] {warning}")
    split = run.data["split"]
    console.print(f"split {split['strategy']} {split['ratio']:.0%}: {split['train']} train / {split['held_out']} held out; "
                  f"{split['merged_docs']} documents kept together with duplicates or near duplicates")
    registry = Registry(registry_dir) if registry_dir is not None else None
    registered: dict[str, int | None] = {}
    for kind, model in run.models.items():
        _print_search(model)
        _print_evaluation(f"{kind} model {model.candidate.name}: held-out evaluation", model.evaluation)
        _print_sources(f"{kind} model: held-out figures per source", model.per_source)
        if model.source_holdout:
            _print_sources(f"{kind} model: leave-one-source-out (trained without the source, scored on all of it)", model.source_holdout)
        if model.generated_only:
            _print_sources(f"{kind} model: trained on generated documents only, scored on each real source", model.generated_only)
        _print_calibration(model)
        if kind == "scan":
            _print_scan_sources(run)
        if registry is None:
            continue
        version, parity = publish(model, run, registry)
        registered[kind] = version
        if version is None:
            err.print(f"[red]{kind} model NOT registered: ONNX parity failed[/red] ({parity.as_dict()})")
            continue
        ref = registry.get(kind, version)
        champion = registry.champion(kind).version
        console.print(f"{kind} model registered as v{version} ({ref.onnx_path.stat().st_size / 1e6:.2f} MB ONNX; parity: max |diff| "
                      f"{parity.max_abs_diff:.1e} over {parity.n} inputs, {parity.label_mismatches} label mismatches); champion is v{champion}"
                      + ("" if champion == version else f" - promote with `mailroom models promote {kind} {version}`"))
    console.print(f"training took {run.seconds:.0f} s in total (" + ", ".join(f"{k} {m.seconds:.0f} s" for k, m in run.models.items()) + ")")
    return registered


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    try:
        config = train_config(quick=args.quick, kinds=tuple(args.kind) if args.kind else TRAINED_KINDS, n=args.n, real=not args.no_real,
                              real_dir=Path(args.real_dir) if args.real_dir else None, real_cap=args.real_cap, ocr_cap=args.ocr_cap, seed=args.seed,
                              scan_share=args.scan_share, strategy=args.split, ratio=args.ratio, group_by=args.group_by,
                              source_holdout=not args.no_source_holdout, ocr_cache_dir=settings.cache_dir / "ocr")
        registered = train_models(config, None if args.no_register else registry_dir(args, settings), progress=not args.no_progress)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    return 1 if None in registered.values() else 0


def _print_search(model) -> None:
    table = Table(title=f"{model.kind} model: candidates (* = best leave-one-source-out macro-F1 among those within the guard of the best "
                        "held-out figure and above its floor)")
    for col in ("candidate", "held-out macro-F1", "leave-one-source-out macro-F1", "fit s"):
        table.add_column(col, justify="right" if col != "candidate" else "left")
    for row in model.search:
        mark = " *" if row["candidate"] == model.candidate.name else ""
        loso = f"{row['loso_macro_f1']:.3f}" if "loso_macro_f1" in row else "-"
        table.add_row(row["candidate"] + mark, f"{row['macro_f1']:.3f}", loso, f"{row['seconds']:.1f}")
    console.print(table)


def _print_ocr(ocr: dict) -> None:
    engine = ocr["engine"]
    capped = f" (the first {ocr['generated_read']} of {ocr['generated_scans']} generated)" if ocr["generated_read"] < ocr["generated_scans"] else ""
    console.print(f"OCR for the scan model: {ocr['pages']} pages{capped}, {ocr['pages_by_engine']} read by the engine and "
                  f"{ocr['pages_from_cache']} from the cache in {ocr['seconds']:.1f} s ({ocr['workers']} processes, tesseract "
                  f"{engine['languages']} psm {engine['page_segmentation']}); " + ", ".join(f"{k} {v}" for k, v in ocr["statuses"].items())
                  + " (only READ scans are scan-model rows)", highlight=False)


def _print_scan_sources(run) -> None:
    """The scan model beside the image model on each real scan source, left out of training."""
    image = run.models.get("image")
    for source, m in run.models["scan"].source_holdout.items():
        if image is None or source not in image.source_holdout:
            continue
        console.print(f"{source} left out: scan model accuracy {m['accuracy']:.3f} on the {m['n']} scans read ("
                      + ", ".join(f"{k} {v:.2f}" for k, v in m["recall"].items()) + f"); image model {image.source_holdout[source]['accuracy']:.3f} "
                      f"on all {image.source_holdout[source]['n']}", highlight=False)


def _print_calibration(model) -> None:
    c = model.calibration
    sides = {"held out": c["held_out"], **{f"left out: {s}": f for s, f in c["left_out"].items()}}
    table = Table(title=f"{model.kind} model: calibration ({c['method']}, temperature {c['temperature']:.2f}) and triage at threshold "
                        f"{c['threshold']:.2f}", caption="automatic = top probability >= threshold and not `other` (which goes to triage too); "
                                                           "wrong = automatic but not the true label's department; left-out sources use a temperature "
                                                           "fitted without them")
    for col in ("evaluated on", "n", "accuracy", "ECE", "automatic", "wrong dept. of automatic", "misrouted of all"):
        table.add_column(col, justify="left" if col == "evaluated on" else "right")
    for name, f in sides.items():
        at = f["at_threshold"]
        table.add_row(name, str(f["n"]), f"{f['accuracy']:.3f}", f"{f['ece']:.3f}", f"{at['automatic']:.1%}",
                      f"{at['wrong_department']:.1%} ({at['n_wrong']}/{at['n_automatic']})", f"{at['misrouted']:.1%}")
    console.print(table)
    table = Table(title=f"{model.kind} model: per triage threshold, share routed automatically / share of those in the wrong department")
    table.add_column("threshold", justify="right")
    for name in sides:
        table.add_column(name, justify="right")
    for i, row in enumerate(c["held_out"]["thresholds"]):
        table.add_row(f"{row['threshold']:.2f}", *(f"{f['thresholds'][i]['automatic']:.0%} / {f['thresholds'][i]['wrong_department']:.1%}"
                                                     for f in sides.values()))
    console.print(table)


def _print_evaluation(title: str, evaluation: dict) -> None:
    table = Table(title=title, caption=f"macro-F1 {evaluation['macro_f1']:.3f} over classes with support; accuracy {evaluation['accuracy']:.3f}; "
                                       f"n={evaluation['n']}" + (f"; no support: {', '.join(evaluation['unsupported'])}" if evaluation["unsupported"] else ""))
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for label, m in evaluation["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)


def _print_sources(title: str, sources: dict) -> None:
    table = Table(title=title)
    for col in ("source", "n", "accuracy", "recall per class", "most predicted"):
        table.add_column(col, justify="right" if col in ("n", "accuracy") else "left")
    for source, m in sources.items():
        table.add_row(source, str(m["n"]), f"{m['accuracy']:.3f}", ", ".join(f"{k} {v:.2f}" for k, v in m["recall"].items()),
                      ", ".join(f"{k} {v}" for k, v in m["predicted"].items()))
    console.print(table)


# --- models ----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from models.registry import PromotionRefused, Registry, RegistryError

    registry = Registry(registry_dir(args, settings))
    try:
        if args.action == "list":
            for kind in [args.kind] if args.kind else TRAINED_KINDS:
                _print_versions(kind, registry.list(kind))
        elif args.action == "show":
            print(json.dumps(registry.show(args.kind, args.version), indent=2, ensure_ascii=False))
        elif args.action == "promote":
            decision = registry.promote(args.kind, args.version, force_reason=args.force)
            comparison = decision.get("comparison", {}).get("summary", decision.get("reason"))
            state = "promoted" if decision["promoted"] else "unchanged"
            console.print(f"{args.kind} v{args.version}: {state} ({comparison})" + (f"; forced: {decision['reason']}" if decision.get("forced") else ""))
        elif args.action == "rollback":
            ref = registry.rollback(args.kind)
            console.print(f"{args.kind} champion is now v{ref.version} again")
        elif args.action == "migrate":
            imported = registry.migrate()
            console.print("; ".join(f"{kind}: v{versions[0]}..v{versions[-1]} imported" for kind, versions in imported.items())
                          or f"nothing to import in {registry.root} (no old layout, or MLflow has those kinds already)")
    except PromotionRefused as exc:
        err.print(f"[yellow]refused:[/yellow] {exc}")
        return 3
    except RegistryError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    return 0


def _print_versions(kind: str, rows: list[dict]) -> None:
    table = Table(title=f"{kind} models (mailroom-{kind})")
    for col in ("version", "aliases", "created", "kernel", "macro-F1", "eval set", "feature set"):
        table.add_column(col)
    for row in rows:
        table.add_row(f"v{row['version']}", ", ".join(row["aliases"]), row["created"], str(row["kernel"]), f"{row['macro_f1']:.3f}",
                      row["eval_set"], str(row["feature_set_id"]))
    console.print(table if rows else f"no {kind} models registered")


# --- models deploy | retire | status ---------------------------------------------------------


def cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.as_principal("retrainer")  # only the learning loop (and the operator) may move models
    from mailroom.control import ControlError, DeployRefused, deploy
    from models.registry import Registry

    try:
        result = deploy(settings, Registry(registry_dir(args, settings)), args.kind, args.version, args.slot, args.sample, args.note)
    except DeployRefused as exc:
        err.print(f"[red]refused, nothing published:[/red] {escape(str(exc))}")
        return 2
    except ControlError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    for publication in result.published:
        console.print(f"published {publication.describe()}", highlight=False)
    if result.promotion is not None:
        promotion = result.promotion
        console.print(f"registry: {args.kind} champion v{promotion['from_version']} -> v{args.version}" if promotion["promoted"]
                      else f"registry: {args.kind} v{args.version} was champion already")
    console.print("`mailroom models status` shows what each scoring subtask serves")
    return 0


def cmd_retire(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.as_principal("retrainer")  # only the learning loop (and the operator) may move models
    from mailroom.control import ControlError, DeployRefused, retire
    from models.registry import Registry

    try:
        publication, before = retire(settings, Registry(registry_dir(args, settings)), args.kind, args.slot, args.note)
    except DeployRefused as exc:
        err.print(f"[red]refused, nothing published:[/red] {escape(str(exc))}")
        return 2
    except ControlError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    was = f"it held v{before['version']}" if before and before["action"] == "DEPLOY" else "it was empty already"
    console.print(f"published {publication.describe()} ({was})", highlight=False)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from mailroom.control import ControlError, read_status
    from models.registry import Registry

    if args.json and args.watch:
        err.print("[red]error:[/red] --watch redraws the tables; --json prints one snapshot (drop one of them)")
        return 2
    registry = Registry(registry_dir(args, settings))
    try:
        if args.json:
            print(json.dumps(read_status(settings, registry), indent=2))
            return 0
        if not args.watch:
            console.print(status_tables(read_status(settings, registry)))
            return 0
        from rich.live import Live

        with Live(console=console, auto_refresh=False) as live:
            while True:
                view = status_tables(read_status(settings, registry))
                live.update(Group(view, f"refreshed {time.strftime('%H:%M:%S', time.gmtime())} UTC, every {args.watch:g} s (Ctrl-C stops)"), refresh=True)
                time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    except ControlError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1


def status_tables(view: dict) -> Group:
    """`models status` as rich tables: registry, control topic, subtasks, shadow comparison, disagreements."""
    from mailroom.control import age

    parts: list = []
    registry = Table(title="registry", caption=view["registry"]["dir"])
    for col in ("kind", "champion"):
        registry.add_column(col)
    for kind, version in view["registry"]["champions"].items():
        registry.add_row(kind, f"v{version}" if version else "none: train one with `mailroom train`")
    parts.append(registry)

    if view["control"]:
        control = Table(title=f"control topic ({view['topics']['model_control']}): newest record per key")
        for col in ("kind", "slot", "version", "sha256", "shadow", "published (UTC)", "note"):
            control.add_column(col)
        for row in view["control"]:
            version = f"v{row['version']}" if row["action"] == "DEPLOY" else "[dim]retired[/dim]"
            shadow = f"{row['shadow_sample']:g}" if row["slot"] == "CHALLENGER" and row["action"] == "DEPLOY" else ""
            control.add_row(row["kind"], row["slot"], version, f"{row['sha256']}…" if row["sha256"] else "", shadow,
                            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["published_ms"] / 1000)), escape(row["note"] or ""))
        parts.append(control)
    else:
        parts.append("no control records yet: deploy with `mailroom models deploy`")

    if view["subtasks"]:
        subtasks = Table(title=f"scoring subtasks ({view['topics']['model_events']}): newest report per slot")
        for col in ("job/subtask", "kind", "slot", "outcome", "version", "serving", "expected", "agrees", "age", "reason"):
            subtasks.add_column(col)
        for row in view["subtasks"]:
            outcome = {"SERVING": "[green]SERVING[/green]", "REFUSED": "[red]REFUSED[/red]"}.get(row["outcome"], row["outcome"])
            subtasks.add_row(f"{row['job']}/{row['subtask']}", row["kind"], row["slot"], outcome, _ver(row["version"]),
                             _ver(row["serving_version"]), _ver(row["expected_version"]), "[yellow]no[/yellow]" if row["flag"] else "yes",
                             age(row["age_s"]), escape(row["reason"] or ""))
        parts.append(subtasks)
    else:
        parts.append("no scoring subtask has reported yet: is the scoring job running? (`mailroom job scoring`)")

    if view["shadow"]:
        shadow = Table(title=f"shadow comparison so far ({view['topics']['shadow_predictions']})",
                       caption="latency: the model's run time for the document's micro-batch, mean over documents")
        for col in ("kind", "champion", "challenger", "pairs", "agreement", "champion ms", "challenger ms"):
            shadow.add_column(col, justify="right" if col not in ("kind", "champion", "challenger") else "left")
        for row in view["shadow"]:
            shadow.add_row(row["kind"], f"v{row['champion_version']}", f"v{row['challenger_version']}", str(row["pairs"]),
                           f"{row['agreement']:.1%}", f"{row['champion_latency_ms']:.2f}", f"{row['challenger_latency_ms']:.2f}")
        parts.append(shadow)
    else:
        parts.append("no shadow pairs yet: deploy a challenger (`mailroom models deploy KIND VERSION --slot challenger`) while documents flow")

    unreadable = {topic: n for topic, n in view["unreadable"].items() if n}
    if unreadable:
        parts.append("[yellow]skipped unreadable messages:[/yellow] " + ", ".join(f"{n} in {view['topics'][t]}" for t, n in unreadable.items()))
    if view["flags"]:
        parts.append("[yellow]disagreements:[/yellow]\n" + "\n".join(f"  - {escape(flag)}" for flag in view["flags"]))
    elif view["subtasks"]:
        parts.append("[green]the registry, the control topic and every subtask agree[/green]")
    return Group(*parts)


def _ver(version: str | None) -> str:
    return f"v{version}" if version is not None else "-"


# --- bench-models ----------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from models.bench import bench_models
    from models.registry import RegistryError

    try:
        rows = bench_models(registry_dir(args, settings), n_docs=args.docs, batch_sizes=tuple(args.batch), seconds=args.seconds, seed=args.seed,
                            ocr_cache_dir=settings.cache_dir / "ocr")
    except RegistryError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    table = Table(title="model throughput (one thread)", caption="docs/s = documents scored per second; features = computing model inputs from the raw document")
    for col in ("model", "engine", "batch", "docs/s", "ms/batch"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for row in rows:
        table.add_row(row["model"], row["engine"], str(row["batch"]), f"{row['docs_per_s']:,.0f}", f"{row['ms_per_batch']:.3f}")
    console.print(table)
    return 0


# --- registration ----------------------------------------------------------------------------


def register(sub) -> None:
    """Add generate, train, models and bench-models to the `mailroom` CLI."""
    gen = sub.add_parser("generate", help="write a seeded synthetic labelled mailbox (texts and scans)",
                         description="Generate a realistic labelled mailbox: e-mails, portal and API submissions and scanned pages of "
                                     "7 classes in English, German and French. Same seed -> identical output.")
    target = gen.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", help="one file per document (.eml/.txt/.png) plus labels.jsonl")
    target.add_argument("--jsonl", metavar="FILE", help="one JSONL file (texts inline, images base64)")
    gen.add_argument("-n", type=int, default=1000, help="number of documents (default 1000)")
    gen.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    gen.add_argument("--scan-share", type=float, default=0.3, help="expected share of scanned documents (default 0.3)")
    gen.set_defaults(func=cmd_generate)

    tr = sub.add_parser("train", help="train, export, parity-check and register the text, scan and image models",
                        description="Train the text model (TF-IDF + kernel, raw text and sender context in), the scan model (OCR text "
                                    "+ layout features + sender context; pages read by Tesseract, cached under <cache dir>/ocr) and the "
                                    "image model (layout features + sender context) on generated and real documents; pick the best "
                                    "candidate (leave-one-source-out within a held-out guard); export to ONNX; register it if ONNX and "
                                    "sklearn agree.")
    tr.add_argument("-n", type=int, help="generated documents (default 3000, --quick 300)")
    tr.add_argument("--seed", type=int, default=7, help="seed for generation and splitting (default 7)")
    tr.add_argument("--scan-share", type=float, default=0.3, help="share of generated scans (default 0.3)")
    tr.add_argument("--real-dir", metavar="DIR", help=f"real labelled data (text.jsonl, images.jsonl); default {DEFAULT_REAL_DIR} if it exists")
    tr.add_argument("--no-real", action="store_true", help="train on generated documents only")
    tr.add_argument("--real-cap", type=int, help="at most this many documents per real source (default 1200, --quick 150; 0 = all)")
    tr.add_argument("--split", choices=["stratified", "random", "sequential"], default="stratified", help="how to hold out evaluation data")
    tr.add_argument("--ratio", type=float, default=0.2, help="held-out share (default 0.2)")
    tr.add_argument("--group-by", choices=["sender", "source"], help="keep documents with the same sender/source on one side")
    tr.add_argument("--kind", action="append", choices=TRAINED_KINDS, help="train only this kind (repeatable; default all three)")
    tr.add_argument("--ocr-cap", type=int, metavar="N", help=f"the scan model reads at most N generated scans (default all, --quick {QUICK_OCR_CAP}; 0 = all)")
    tr.add_argument("--quick", action="store_true", help="small data and two candidates per kind: seconds, for tests and smoke runs")
    tr.add_argument("--no-source-holdout", action="store_true", help="skip the leave-one-real-source-out evaluation")
    tr.add_argument("--no-register", action="store_true", help="train and evaluate only")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_registry(tr)
    tr.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list, show, promote, roll back, deploy or retire models; what serves where",
                            description="Inspect and manage the model registry, and deploy models to the running scoring job through the "
                                        "model-control topic. promote refuses a model that does not beat the champion's macro-F1 on the "
                                        "same evaluation set unless --force gives a reason (recorded). deploy checks a version as every "
                                        "scoring subtask will before it publishes anything; status shows what the registry, the control "
                                        "topic and each scoring subtask say, and where they disagree.")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="versions per kind with their aliases (champion, previous, challenger)")
    ls.add_argument("kind", nargs="?", choices=TRAINED_KINDS, help="the kind to list (default all)")
    show = actions.add_parser("show", help="print a model card as JSON")
    promote = actions.add_parser("promote", help="make a version champion if it beats the current one")
    rollback = actions.add_parser("rollback", help="make the previous champion champion again")
    for p in (show, promote, rollback):
        p.add_argument("kind", choices=TRAINED_KINDS)
    for p in (show, promote):
        p.add_argument("version", type=int)
    promote.add_argument("--force", metavar="REASON", help="promote even if it does not beat the champion; the reason is recorded")
    migrate = actions.add_parser("migrate", help="import a registry in the old hand-written layout into MLflow (also done on first use)",
                                 description="Import <registry>/<kind>/vNNNN/ + champion.json + history.jsonl into MLflow, keeping version "
                                             "numbers, the champion, previous champions and the history. Kinds MLflow has versions of already "
                                             "are left out; the old files are not touched.")
    for p in (ls, show, promote, rollback, migrate):
        _add_registry(p)
        p.set_defaults(func=cmd_models)

    dep = actions.add_parser("deploy", help="check a version and publish it to a slot of the running scoring job",
                             description="Check a registered version as every scoring subtask will (sha256, graph, feature set, smoke "
                                         "batch), then publish it to the model-control topic (key <kind>/<slot>) and wait for the ack. "
                                         "--slot champion first keeps the current champion as PREVIOUS and moves the registry's champion "
                                         "alias too; --slot challenger moves its `challenger` alias. A refused version publishes nothing (exit 2).")
    dep.add_argument("kind", choices=TRAINED_KINDS)
    dep.add_argument("version", type=int)
    dep.add_argument("--slot", choices=["challenger", "champion", "previous"], required=True,
                     help="challenger: scores a sample in shadow; champion: decides every document; previous: the deadline fallback")
    dep.add_argument("--sample", type=float, metavar="SHARE", help="challenger only: the share of documents it scores in shadow, 0 < s <= 1 (default 1)")
    dep.add_argument("--note", metavar="TEXT", help="who deploys it and why (recorded with the record, and in the registry for a champion)")
    _add_registry(dep)
    dep.set_defaults(func=cmd_deploy)

    ret = actions.add_parser("retire", help="empty the challenger or previous slot of a kind",
                             description="Publish a RETIRE record for a slot to the model-control topic; a challenger loses the "
                                         "registry's `challenger` alias too (the `previous` alias stays: it is what rollback returns to). "
                                         "The champion slot cannot be emptied: deploy another champion instead.")
    ret.add_argument("kind", choices=TRAINED_KINDS)
    ret.add_argument("--slot", choices=["challenger", "previous", "champion"], required=True, help="the slot to empty (not champion)")
    ret.add_argument("--note", metavar="TEXT", help="who retires it and why (recorded in the registry for a challenger)")
    _add_registry(ret)
    ret.set_defaults(func=cmd_retire)

    st = actions.add_parser("status", help="registry vs control topic vs each scoring subtask, shadow comparison, disagreements",
                            description="What the registry says (champions), what the model-control topic says (newest record per "
                                        "slot), what each scoring subtask reports (model-events topic), the shadow comparison so far "
                                        "(shadow-predictions topic), and every disagreement between them.")
    st.add_argument("--json", action="store_true", help="print one snapshot as JSON (for scripts)")
    st.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS", help="refresh every SECONDS (default 5) until Ctrl-C")
    _add_registry(st)
    st.set_defaults(func=cmd_status)

    bench = sub.add_parser("bench-models", help="onnxruntime vs sklearn throughput of the champions, per batch size",
                           description="Score generated documents with each champion through onnxruntime (one thread) at several batch "
                                       "sizes and through sklearn predict_proba, and print documents per second.")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256], help="batch sizes (default 1 32 256)")
    bench.add_argument("--docs", type=int, default=600, help="generated documents to score (default 600)")
    bench.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    bench.add_argument("--seed", type=int, default=99, help="seed of the benchmark documents (default 99)")
    _add_registry(bench)
    bench.set_defaults(func=cmd_bench)
