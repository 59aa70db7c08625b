"""`mailroom judge`: promote or refuse a challenger on its labelled shadow pairs, then watch the probation.

The accuracy job writes every shadow pair that got its ground truth to labelled-shadow-pairs. Per
kind and (champion version, challenger version) the judge collects them (a correction replaces
its document's pair in place) and decides once (`models.judging`, a sample fixed in advance):

    collecting --judge(): PROMOTE--> probation of (challenger, champion) --rollback_check(): ROLL_BACK | KEEP--> done
               --judge(): REFUSE---> done

* PROMOTE: the challenger becomes champion through the control topic (the old champion kept as
  PREVIOUS, the registry promotes with the judge's figures as reason), and the old champion is
  deployed as CHALLENGER: the "reverse shadow" of the probation, whose pairs are (new, old).
* REFUSE: the challenger is retired with the reasons.
* ROLL_BACK: the old champion serves again (registry rollback), the probation challenger is retired.
* KEEP: the probation ends, the old champion (in shadow) is retired.

Every decision is a model_decision event with its figures. Pairs of a pair of versions already
decided change nothing (no peeking). On start the judge reads the decisions so far, then every
labelled shadow pair from the beginning, so a restart decides what it would have decided.
`JudgePolicy` is the state machine (no I/O); `serve` is the Kafka loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge
from rich.console import Console

from config.settings import Settings
from mailroom.kafkautil import client_config
from mailroom import control
from mailroom.decisions import decision, move_champion, publish_decision, read_decisions
from mailroom.retrainer import KINDS
from mailroom.service_metrics import exported
from models.judging import KEEP, PROMOTE, REFUSE, ROLL_BACK, WAIT, JudgeConfig, JudgedPair, judge, rollback_check
from models.registry import Registry
from schemas import codec
from schemas.metric_names import JUDGE_DECISIONS, JUDGE_PAIRS
from schemas.topics import topic_name

console = Console(width=160)
log = logging.getLogger("mailroom.judge")
DECIDED_BY = "judge"
COLLECTING, PROBATION = "collecting", "probation"


@dataclass
class Collection:
    """The labelled pairs of one (kind, champion version, challenger version), newest revision per document."""

    kind: str
    champion: str
    challenger: str
    phase: str = COLLECTING  # PROBATION: the champion was promoted from challenger, the challenger is the old champion
    pairs: dict[str, tuple[int, JudgedPair]] = field(default_factory=dict)  # doc_id -> (revision, pair), first arrival order

    def add(self, record: dict) -> None:
        revision, _ = self.pairs.get(record["doc_id"], (-1, None))
        if record["revision"] > revision:
            self.pairs[record["doc_id"]] = (record["revision"], JudgedPair(
                record["doc_id"], record["true_label"], record["champion_label"], record["challenger_label"],
                record["champion_latency_ms"], record["challenger_latency_ms"]))

    def judged(self) -> list[JudgedPair]:
        return [pair for _, pair in self.pairs.values()]


@dataclass(frozen=True)
class Decision:
    """What the judge decided about a collection, and the verdict it rests on."""

    kind: str
    decision: str  # PROMOTE | REFUSE | ROLL_BACK | KEEP
    champion: str  # the pairs' champion version (on probation: the new champion)
    challenger: str  # the pairs' challenger version (on probation: the old champion)
    reasons: tuple[str, ...]
    figures: dict


class JudgePolicy:
    """The judge's state machine over labelled shadow pair records (module docstring). No I/O."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.open: dict[tuple[str, str, str], Collection] = {}
        self.decided: set[tuple[str, str, str]] = set()

    def on_pair(self, record: dict) -> Decision | None:
        """Count one labelled shadow pair; the decision it completes, if any."""
        key = (record["kind"], record["champion_version"], record["challenger_version"])
        if key in self.decided:
            return None
        collection = self.open.setdefault(key, Collection(*key))
        collection.add(record)
        check = judge if collection.phase == COLLECTING else rollback_check
        verdict = check(collection.judged(), self.config)
        if verdict.decision == WAIT:
            return None
        return self._decide(Decision(collection.kind, verdict.decision, collection.champion, collection.challenger, verdict.reasons,
                                     verdict.figures))

    def restore(self, record: dict) -> None:
        """Take a decision of an earlier run (a model_decision record by the judge) as made."""
        if record["decided_by"] != DECIDED_BY:
            return
        self._decide(Decision(record["kind"], record["decision"], record["champion_version"], record["challenger_version"], (), {}))

    def progress(self) -> list[dict]:
        """Per open collection: kind, versions, phase and labelled pairs so far."""
        return [{"kind": c.kind, "champion": c.champion, "challenger": c.challenger, "phase": c.phase, "pairs": len(c.pairs)}
                for c in self.open.values()]

    def _decide(self, made: Decision) -> Decision:
        key = (made.kind, made.champion, made.challenger)
        self.open.pop(key, None)
        self.decided.add(key)
        if made.decision == PROMOTE:  # the reverse shadow: the pairs of (new champion, old champion)
            reverse = (made.kind, made.challenger, made.champion)
            self.decided.discard(reverse)
            self.open[reverse] = Collection(*reverse, phase=PROBATION)
        return made


# --- carrying decisions out --------------------------------------------------------------------


def carry_out(settings: Settings, registry: Registry, made: Decision) -> list[str]:
    """Do what a decision says through the control topic and the registry; what was done, described."""
    kind, summary = made.kind, summarise(made)
    if made.decision == PROMOTE:
        done = move_champion(settings, registry, kind, made.challenger, f"judge: PROMOTE over v{made.champion} ({summary})")
        done += [p.describe() for p in control.deploy(settings, registry, kind, int(made.champion), "challenger", sample=1.0,
                                                     note=f"probation: the old champion in reverse shadow of v{made.challenger}").published]
    elif made.decision == REFUSE:
        done = [control.retire(settings, registry, kind, "challenger", note=f"judge: REFUSE: {'; '.join(made.reasons)}")[0].describe()]
    elif made.decision == ROLL_BACK:
        done = move_champion(settings, registry, kind, made.challenger, f"judge: ROLL_BACK from v{made.champion} ({summary})", rollback=True)
        done.append(control.retire(settings, registry, kind, "challenger", note=f"judge: v{made.challenger} is champion again")[0].describe())
    elif made.decision == KEEP:
        done = [control.retire(settings, registry, kind, "challenger", note=f"judge: KEEP v{made.champion}, probation over")[0].describe()]
    else:
        raise ValueError(f"not a decision the judge carries out: {made.decision}")
    return done


def summarise(made: Decision) -> str:
    """The figures in one line: n, McNemar's b, c and p, Δmacro-F1 with its CI."""
    f = made.figures
    if "macro_f1" not in f:
        return "no figures"
    m = f["macro_f1"]
    return (f"n {f['n']}, only champion right {f['b']}, only challenger right {f['c']}, McNemar p {f['mcnemar_p']:.3g}, "
            f"macro-F1 {m['champion']:.3f} -> {m['challenger']:.3f} (Δ {m['delta']:+.3f}, CI [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}])")


def record_of(made: Decision, done: list[str], error: str | None) -> dict:
    """The model_decision event of a decision carried out (or not: `error`)."""
    reasons = list(made.reasons) + ([f"could not be carried out: {error}"] if error else [])
    return decision(made.kind, made.decision, DECIDED_BY, challenger_version=made.challenger, champion_version=made.champion,
                    reasons=reasons, figures={**made.figures, "summary": summarise(made), "done": done})


class JudgeMetrics:
    """What the judge exports: decisions made, by kind and decision; labelled pairs gathered per kind for the trial under way."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.decisions = Counter(JUDGE_DECISIONS, "decisions carried out, by kind and decision", ["kind", "decision"], registry=self.registry)
        self.pairs = Gauge(JUDGE_PAIRS, "labelled shadow pairs gathered for the challenger on trial (or probation)", ["kind"],
                           registry=self.registry)

    def gathered(self, policy: JudgePolicy) -> None:
        """The pairs gauge from the policy's open collections; a kind without one shows 0."""
        per_kind = dict.fromkeys(KINDS, 0)
        for collection in policy.progress():
            per_kind[collection["kind"]] = per_kind.get(collection["kind"], 0) + collection["pairs"]
        for kind, pairs in per_kind.items():
            self.pairs.labels(kind).set(pairs)


def serve(settings: Settings, registry: Registry, config: JudgeConfig, stop: threading.Event) -> None:
    settings = settings.as_principal("retrainer")  # the judge is part of the learning loop: it moves champions too
    """The Kafka loop: decisions so far restored, then every labelled shadow pair from the beginning, until `stop`;
    metrics exported meanwhile."""
    metrics = JudgeMetrics()
    with exported(settings, "judge", metrics.registry):
        _consume(settings, registry, config, stop, metrics)


def _consume(settings: Settings, registry: Registry, config: JudgeConfig, stop: threading.Event, metrics: JudgeMetrics) -> None:
    from kafka import KafkaConsumer, TopicPartition

    policy = JudgePolicy(config)
    for record in read_decisions(settings):
        policy.restore(record)
    topic = topic_name("labelled_shadow_pairs", settings.topic_prefix)
    consumer = KafkaConsumer(**client_config(settings), isolation_level="read_committed", enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        console.print(f"judge: reading {topic} (min {config.min_pairs} pairs, probation {config.probation_pairs}); "
                      f"{len(policy.decided)} pair(s) of versions decided before")
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    try:
                        record = codec.decode(message.value, expected="labelled_shadow_pair").record
                    except codec.DecodeError as exc:
                        log.warning("skipping an unreadable record at %s/%s: %s", message.partition, message.offset, exc)
                        continue
                    made = policy.on_pair(record)
                    if made is not None:
                        _act(settings, registry, made)
                        metrics.decisions.labels(made.kind, made.decision).inc()
            metrics.gathered(policy)
    finally:
        consumer.close()


def _act(settings: Settings, registry: Registry, made: Decision) -> None:
    done, error = [], None
    try:
        done = carry_out(settings, registry, made)
    except (control.DeployRefused, control.ControlError, ValueError) as exc:
        error = str(exc)
    except Exception as exc:  # a registry error: still recorded, the judge goes on
        error = f"{type(exc).__name__}: {exc}"
    record = record_of(made, done, error)
    publish_decision(settings, record, registry)
    colour = {PROMOTE: "green", REFUSE: "yellow", ROLL_BACK: "red", KEEP: "green"}[made.decision]
    console.print(f"judge: [{colour}]{made.decision}[/{colour}] {made.kind} challenger v{made.challenger} vs champion v{made.champion}: "
                  f"{summarise(made)}" + "".join(f"\n  - {r}" for r in record["reasons"]))


def config_of(args: argparse.Namespace) -> JudgeConfig:
    return JudgeConfig(min_pairs=args.min_pairs, probation_pairs=args.probation_pairs, rollback_min_pairs=args.rollback_min_pairs,
                       bootstrap=args.bootstrap, class_min_support=args.class_min_support, max_latency_ratio=args.max_latency_ratio)


def cmd_judge(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.as_principal("retrainer")
    from mailroom.models_cli import registry_dir

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        control.require_topics(settings, ["labelled_shadow_pairs", "model_decisions", "model_control"])
        serve(settings, Registry(registry_dir(args, settings)), config_of(args), stop)
    except control.ControlError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The judge's rules (models.judging.JudgeConfig), fixed before any pair is seen."""
    d = JudgeConfig()
    parser.add_argument("--min-pairs", type=int, default=d.min_pairs, help="labelled pairs judged, once (default %(default)s)")
    parser.add_argument("--probation-pairs", type=int, default=d.probation_pairs, help="labelled pairs of the probation (default %(default)s)")
    parser.add_argument("--rollback-min-pairs", type=int, default=d.rollback_min_pairs,
                        help="no rollback verdict on fewer pairs (default %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=d.bootstrap, help="paired bootstrap resamples (default %(default)s)")
    parser.add_argument("--class-min-support", type=int, default=d.class_min_support,
                        help="classes with fewer true documents are not guarded (default %(default)s)")
    parser.add_argument("--max-latency-ratio", type=float, default=d.max_latency_ratio,
                        help="challenger p99 / champion p99 latency at most this (default %(default)s)")


def register(sub) -> None:
    p = sub.add_parser("judge", help="promote or refuse challengers on their labelled shadow pairs; probation and rollback",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", metavar="DIR", help="model registry directory (default: $MAILROOM_REGISTRY_DIR, else <run dir>/registry)")
    add_judge_arguments(p)
    p.set_defaults(func=cmd_judge)
