"""`mailroom retrainer` (a long-running Kafka consumer) and `mailroom retrain KIND` (once, by hand).

The retrainer keeps every labelled example it reads (labelled-examples) in the offline training
store (`models.examples_store.ExampleStore` under <run dir>/examples: Parquet parts, the newest
verdict per doc_id in force). On a retraining request (retraining-requests; model_name
mailroom-<kind>) it trains a contender for that kind:

1. the base training data (`mailroom.models_cli.train_config`) plus the store's training side of
   the kind, each example weighted by its recency (`ExampleStore.training_rows`: halves every
   `half_life_days`); the store's held-out side is never trained on;
2. offline checks (`offline_checks`): held-out figures on the store's held-out examples (macro-F1
   not below the champion's on the same examples less `tolerance`), no class collapse (every label
   of the champion still predicted on the held-out sides), and ONNX parity (`models.training.publish`
   registers only a model that passes);
3. the contender is registered and deployed as CHALLENGER through the control topic (shadow share
   `shadow_sample`), where the judge (`mailroom judge`) takes over.

Each outcome is a model_decision event: RETRAINED, OFFLINE_REFUSED (with the reasons), or
DEDUPLICATED: `RequestGate` allows one retraining per kind at a time, none within `cooldown_ms` of
the last, and none while a challenger of the kind is in shadow (judged, or on probation).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from rich.console import Console

from config.settings import Settings
from mailroom.kafkautil import client_config
from mailroom import control
from mailroom.decisions import decision, publish_decision
from mailroom.service_metrics import exported
from models.registry import Registry, RegistryError
from schemas import codec
from schemas.metric_names import RETRAINER_EXAMPLES, RETRAINER_RUNS
from schemas.topics import topic_name
from schemas.units import MINUTE_MS, now_ms

if TYPE_CHECKING:  # imported where a store is opened: pandas and pyarrow (~110 MB) are not for every `mailroom` command
    from models.examples_store import ExampleStore

console = Console(width=160)
log = logging.getLogger("mailroom.retrainer")
DECIDED_BY = "retrainer"
RETRAINED, OFFLINE_REFUSED, DEDUPLICATED = "RETRAINED", "OFFLINE_REFUSED", "DEDUPLICATED"
MODEL_PREFIX = "mailroom-"
KINDS = ("text", "scan", "image")  # models.modelio.KINDS, without importing onnxruntime here


@dataclass(frozen=True)
class RetrainConfig:
    """How a contender is trained, checked and deployed."""

    quick: bool = True  # the base data: `train_config(quick=...)`
    generated: int | None = None  # generated base documents (None: train_config's default)
    real: bool = True  # the real documents too, when ../shared/data/real is there
    half_life_days: float = 30.0  # an example's weight halves every this many days of its document's age
    held_out_share: float = 0.2  # the store's held-out side (never trained on)
    min_examples: int = 20  # labelled training rows of the kind a retraining needs
    tolerance: float = 0.02  # held-out macro-F1 may be this much below the champion's
    cooldown_ms: int = 10 * MINUTE_MS  # after a retraining, requests of the kind are de-duplicated this long
    shadow_sample: float = 1.0  # the challenger's shadow share
    ocr_cache_dir: Path | None = None


def kind_of(model_name: str) -> str | None:
    """text, scan or image from mailroom-<kind>; None for any other name."""
    kind = model_name.removeprefix(MODEL_PREFIX) if model_name.startswith(MODEL_PREFIX) else None
    return kind if kind in KINDS else None


@dataclass
class RequestGate:
    """One retraining per kind at a time, a cool-down after each, none while a challenger is in shadow."""

    cooldown_ms: int
    running: set[str] = field(default_factory=set)
    finished_ms: dict[str, int] = field(default_factory=dict)

    def admit(self, kind: str, at_ms: int, challenger: str | None = None) -> str | None:
        """None when a retraining of `kind` may start now (it is then running); else why not.
        `challenger`: the version in the kind's challenger slot, if one is deployed."""
        if kind in self.running:
            return f"a {kind} retraining is running"
        last = self.finished_ms.get(kind)
        if last is not None and at_ms - last < self.cooldown_ms:
            return f"the last {kind} retraining ended {(at_ms - last) / 1000:.0f} s ago (cool-down {self.cooldown_ms / 1000:.0f} s)"
        if challenger is not None:
            return f"{kind} challenger v{challenger} is in shadow (being judged, or the old champion on probation)"
        self.running.add(kind)
        return None

    def done(self, kind: str, at_ms: int) -> None:
        self.running.discard(kind)
        self.finished_ms[kind] = at_ms


def macro_f1(truth, predicted) -> float:
    """Mailroom's macro-F1 (udfs/metrics.py): over the labels true or predicted, zero_division=0."""
    from sklearn.metrics import f1_score

    truth, predicted = [str(x) for x in truth], [str(x) for x in predicted]
    return float(f1_score(truth, predicted, labels=sorted(set(truth) | set(predicted)), average="macro", zero_division=0))


def offline_checks(truth, contender: list[str], champion: list[str], contender_everywhere: set[str], champion_labels: set[str],
                   tolerance: float) -> tuple[list[str], dict]:
    """(reasons to refuse, figures): the contender's and the champion's answers on the store's held-out
    examples (`truth`), and every label the contender gave on all held-out sides (`contender_everywhere`)."""
    reasons = []
    figures = {"held_out_examples": len(truth), "tolerance": tolerance}
    if len(truth):
        figures.update(contender_macro_f1=macro_f1(truth, contender), champion_macro_f1=macro_f1(truth, champion),
                       contender_accuracy=float(np.mean(np.array(contender) == np.array(truth, dtype=object))),
                       champion_accuracy=float(np.mean(np.array(champion) == np.array(truth, dtype=object))))
        if figures["contender_macro_f1"] < figures["champion_macro_f1"] - tolerance:
            reasons.append(f"held-out examples: macro-F1 {figures['contender_macro_f1']:.3f} is below the champion's "
                           f"{figures['champion_macro_f1']:.3f} less {tolerance} ({len(truth)} examples)")
    collapsed = sorted(champion_labels - contender_everywhere)
    figures["collapsed_classes"] = collapsed
    if collapsed:
        reasons.append(f"class collapse: never predicts {', '.join(collapsed)} on the held-out sides (the champion has them)")
    return reasons, figures


@dataclass
class Outcome:
    """A retraining's result: RETRAINED (registered as `version`) or OFFLINE_REFUSED, with why and the figures."""

    kind: str
    decision: str
    version: int | None
    champion_version: int | None
    reasons: list[str]
    figures: dict


def retrain(kind: str, store: ExampleStore, registry: Registry, config: RetrainConfig, at_ms: int, progress: bool = False) -> Outcome:
    """Train, check and (if it passes) register a contender for `kind` (module docstring, steps 1-2)."""
    from mailroom.models_cli import train_config
    from models.modelio import onnx_feeds, onnx_session, sklearn_matrix
    from models.training import publish, train

    champion = registry.champion(kind)
    rows = store.training_rows(kind, at_ms, config.half_life_days, config.held_out_share)
    held = store.training_rows(kind, at_ms, config.half_life_days, config.held_out_share, side="held_out")
    figures = {"labelled_training_rows": len(rows), "labelled_weight": float(rows.weights.sum()), "config": asdict(config)}
    if len(rows) < config.min_examples:
        return Outcome(kind, OFFLINE_REFUSED, None, champion.version, [f"{len(rows)} labelled {kind} training rows, at least "
                                                                       f"{config.min_examples} needed"], figures)
    base = train_config(quick=config.quick, kinds=(kind,), n=config.generated, real=config.real, ocr_cache_dir=config.ocr_cache_dir)
    run = train(base, progress=progress, extra={kind: rows})
    model = run.models[kind]
    contender = [str(x) for x in model.pipeline.predict(sklearn_matrix(kind, held.inputs))] if len(held) else []
    session = onnx_session(str(champion.onnx_path))
    champions = [str(x) for x in session.run(["label"], onnx_feeds(kind, held.inputs))[0]] if len(held) else []
    everywhere = set(contender) | {str(x) for x in model.pipeline.predict(model.held_out.matrix())}
    reasons, checked = offline_checks(held.labels, contender, champions, everywhere, set(champion.card["labels"]), config.tolerance)
    figures.update(checked, base_held_out_macro_f1=model.evaluation["macro_f1"], training_data=model.train_summary)
    if reasons:
        return Outcome(kind, OFFLINE_REFUSED, None, champion.version, reasons, figures)
    version, parity = publish(model, run, registry)
    figures["parity"] = parity.as_dict()
    if version is None:
        return Outcome(kind, OFFLINE_REFUSED, None, champion.version, [f"ONNX parity failed: {parity.as_dict()}"], figures)
    return Outcome(kind, RETRAINED, version, champion.version, [], figures)


def retrain_and_deploy(settings: Settings, store: ExampleStore, registry: Registry, config: RetrainConfig, kind: str,
                       request_id: str | None) -> dict:
    """`retrain`, then a RETRAINED contender deployed as challenger; the decision event written and returned."""
    outcome = retrain(kind, store, registry, config, now_ms())
    reasons = list(outcome.reasons)
    if outcome.decision == RETRAINED:
        try:
            deployed = control.deploy(settings, registry, kind, outcome.version, "challenger", sample=config.shadow_sample,
                                      note=f"retrained on {outcome.figures['labelled_training_rows']} labelled examples"
                                      + (f" (request {request_id})" if request_id else ""))
            outcome.figures["deployed"] = [p.describe() for p in deployed.published]
        except (control.DeployRefused, control.ControlError) as exc:
            reasons.append(f"registered but not deployed: {exc}")
    record = decision(kind, outcome.decision, DECIDED_BY, challenger_version=outcome.version, champion_version=outcome.champion_version,
                      reasons=reasons, figures=outcome.figures, request_id=request_id)
    publish_decision(settings, record, registry if outcome.version is not None else None)
    return record


def describe(record: dict) -> str:
    what = {RETRAINED: f"v{record['challenger_version']} registered and deployed as challenger", OFFLINE_REFUSED: "refused offline",
            DEDUPLICATED: "request de-duplicated"}[record["decision"]]
    return f"retrainer: {record['kind']} {what}" + "".join(f"\n  - {r}" for r in record["reasons"])


# --- the service -----------------------------------------------------------------------------


class Retrainer:
    """The Kafka-facing part: examples into the store, requests through the gate into one worker thread per retraining."""

    def __init__(self, settings: Settings, registry: Registry, store: ExampleStore, config: RetrainConfig):
        self.settings, self.registry, self.store, self.config = settings.as_principal("retrainer"), registry, store, config
        self.gate = RequestGate(config.cooldown_ms)
        self.workers: list[threading.Thread] = []
        self.metrics = CollectorRegistry()
        self.examples = Counter(RETRAINER_EXAMPLES, "labelled examples stored", registry=self.metrics)
        self.runs = Counter(RETRAINER_RUNS, "retraining requests by kind and outcome (the decision)", ["kind", "outcome"],
                            registry=self.metrics)

    def on_request(self, request: dict) -> None:
        kind = kind_of(request["model_name"])
        if kind is None:
            log.warning("a retraining request for %r: not a Mailroom model, ignored", request["model_name"])
            return
        why_not = self.gate.admit(kind, now_ms(), self._challenger(kind))
        if why_not is not None:
            record = decision(kind, DEDUPLICATED, DECIDED_BY, champion_version=request["model_version"], reasons=[why_not],
                              figures={"request": request}, request_id=request["request_id"])
            publish_decision(self.settings, record, self.registry)
            self.runs.labels(kind, DEDUPLICATED).inc()
            console.print(describe(record))
            return
        console.print(f"retrainer: retraining {kind} on request {request['request_id']} ({request['message']})")
        worker = threading.Thread(target=self._work, args=(kind, request["request_id"]), name=f"retrain-{kind}", daemon=True)
        self.workers.append(worker)
        worker.start()

    def _work(self, kind: str, request_id: str | None) -> None:
        try:
            record = retrain_and_deploy(self.settings, self.store, self.registry, self.config, kind, request_id)
        except Exception as exc:  # a failed retraining is an event, not the end of the service
            log.exception("the %s retraining failed", kind)
            record = decision(kind, OFFLINE_REFUSED, DECIDED_BY, reasons=[f"training failed: {type(exc).__name__}: {exc}"],
                              request_id=request_id)
            publish_decision(self.settings, record)
        finally:
            self.gate.done(kind, now_ms())
        self.runs.labels(kind, record["decision"]).inc()
        console.print(describe(record))

    def _challenger(self, kind: str) -> str | None:
        record = control.read_control(self.settings)[0].get(control.control_key(kind, "challenger"))
        return record["version"] if record is not None and record["action"] == "DEPLOY" else None

    def serve(self, stop: threading.Event, group_id: str = "mailroom-retrainer") -> None:
        """Consume until `stop`: examples appended per poll, offsets committed after they are stored; metrics exported meanwhile."""
        with exported(self.settings, "retrainer", self.metrics):
            self._consume(stop, group_id)

    def _consume(self, stop: threading.Event, group_id: str) -> None:
        from kafka import KafkaConsumer

        examples, requests = (topic_name(key, self.settings.topic_prefix) for key in ("labelled_examples", "retraining_requests"))
        consumer = KafkaConsumer(examples, requests, **client_config(self.settings), group_id=group_id,
                                 isolation_level="read_committed", enable_auto_commit=False, auto_offset_reset="earliest")
        console.print(f"retrainer: examples from {examples} into {self.store.root}; requests from {requests}")
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500)
                batch, pending = [], []
                for partition, messages in polled.items():
                    for message in messages:
                        try:
                            decoded = codec.decode(message.value)
                        except codec.DecodeError as exc:
                            log.warning("skipping an unreadable record on %s: %s", partition.topic, exc)
                            continue
                        if partition.topic == examples and decoded.record_type == "labelled_example":
                            batch.append(decoded.record)
                        elif partition.topic == requests and decoded.record_type == "retraining_request":
                            pending.append(decoded.record)
                self.store.append(batch)
                self.examples.inc(len(batch))
                for request in pending:
                    self.on_request(request)
                if polled:
                    consumer.commit()
        finally:
            consumer.close()
            for worker in self.workers:
                worker.join()


# --- command line ----------------------------------------------------------------------------


def config_of(args: argparse.Namespace, settings: Settings) -> RetrainConfig:
    return RetrainConfig(quick=not args.full, generated=args.n, real=not args.no_real, half_life_days=args.half_life_days,
                         held_out_share=args.held_out_share, min_examples=args.min_examples, tolerance=args.tolerance,
                         cooldown_ms=int(args.cooldown_s * 1000), shadow_sample=args.sample, ocr_cache_dir=settings.cache_dir / "ocr")


def _parts(args: argparse.Namespace, settings: Settings) -> tuple[Registry, ExampleStore]:
    from mailroom.models_cli import registry_dir
    from models.examples_store import ExampleStore

    return Registry(registry_dir(args, settings)), ExampleStore(Path(args.store) if args.store else settings.run_dir / "examples")


def cmd_retrainer(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.as_principal("retrainer")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    registry, store = _parts(args, settings)
    try:
        control.require_topics(settings, ["labelled_examples", "retraining_requests", "model_decisions", "model_control"])
        Retrainer(settings, registry, store, config_of(args, settings)).serve(stop)
    except control.ControlError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.as_principal("retrainer")
    registry, store = _parts(args, settings)
    try:
        control.require_topics(settings, ["model_decisions", "model_control"])
        record = retrain_and_deploy(settings, store, registry, config_of(args, settings), args.kind, None)
    except (control.ControlError, RegistryError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    console.print(describe(record))
    return 0 if record["decision"] == RETRAINED else 3


def _add_options(parser: argparse.ArgumentParser) -> None:
    d = RetrainConfig()
    parser.add_argument("--registry", metavar="DIR", help="model registry directory (default: $MAILROOM_REGISTRY_DIR, else <run dir>/registry)")
    parser.add_argument("--store", metavar="DIR", help="the training store of labelled examples (default <run dir>/examples)")
    parser.add_argument("--full", action="store_true", help="the full base training data and candidate grid (default: --quick's)")
    parser.add_argument("-n", type=int, help="generated base documents (default: train's, 300 quick)")
    parser.add_argument("--no-real", action="store_true", help="no real base documents")
    parser.add_argument("--half-life-days", type=float, default=d.half_life_days, help="examples' recency half-life (default %(default)s)")
    parser.add_argument("--held-out-share", type=float, default=d.held_out_share, help="the store's held-out side (default %(default)s)")
    parser.add_argument("--min-examples", type=int, default=d.min_examples, help="labelled training rows needed (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=d.tolerance, help="held-out macro-F1 below the champion's allowed (default %(default)s)")
    parser.add_argument("--cooldown-s", type=float, default=d.cooldown_ms / 1000, help="after a retraining, de-duplicate requests this long (default %(default)s)")
    parser.add_argument("--sample", type=float, default=d.shadow_sample, help="the challenger's shadow share (default %(default)s)")


def register(sub) -> None:
    p = sub.add_parser("retrainer", help="keep labelled examples in the training store; retrain, check and deploy a challenger on request",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(p)
    p.set_defaults(func=cmd_retrainer)
    once = sub.add_parser("retrain", help="retrain one kind now from the training store, check it, deploy it as challenger",
                          description="What the retrainer does on a request, once, by hand (the store as it is now).")
    once.add_argument("kind", choices=KINDS, help="which model")
    _add_options(once)
    once.set_defaults(func=cmd_retrain)
