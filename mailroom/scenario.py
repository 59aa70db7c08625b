"""`mailroom run --scenario drift`: the learning loop end to end on the local stack, in about ten minutes.

1. the stack up; champions in the registry (quick ones trained first when it has none), copied
   for this run, so a promotion here leaves the registry's champions as they were; topics of the
   run's own (prefix `<prefix><run id>.`);
2. the router, scoring and accuracy jobs (unbounded, short windows, alert thresholds the drift
   crosses), the retrainer and the judge (threads of this process);
3. a stream of generated text documents at `rate`; after `normal_s` a share `drift_share` of them
   is a kind of document the champion has not learned (`mailroom.drift.billing_disputes`, or the
   labelled documents of `--drift-file`);
4. the departments' feedback on every prediction, late (seconds to a minute after receipt, some
   never, some corrected, some twice), sent when it is due;
5. a timeline read from the topics as it happens (accuracy reports, alerts, retraining requests,
   the retrainer's and judge's decisions, what the scoring job serves), until the loop closed
   (promotion, probation decided, the new champion's figures) or `max_s`;
6. the figures (macro-F1 before the drift, at its worst, after promotion; labelled examples used;
   minutes from alert to promotion) and a plot of online macro-F1 per slot with the events marked.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console

from config.settings import Settings
from mailroom import judge as judge_service
from mailroom.control import registry_champions
from mailroom.drift import billing_disputes, from_jsonl
from mailroom.feedback import FeedbackProfile, send_feedback, simulate_feedback, with_predictions
from mailroom.kafkautil import client_config, producer
from mailroom.models_cli import train_config, train_models
from mailroom.produce import to_document
from mailroom.retrainer import RetrainConfig, Retrainer
from mailroom.stack import Kafka, Stack
from mailroom.submit import start_job, stop_job, wait_until_running
from models.examples_store import ExampleStore
from models.generator import generate
from models.judging import JudgeConfig
from models.registry import Registry
from schemas import codec
from schemas.topics import topic_name
from schemas.units import now_ms

console = Console(width=160)
TIMELINE_TOPICS = ("metrics", "alerts", "retraining_requests", "model_decisions", "model_events")
LATE_FEEDBACK = FeedbackProfile(unanswered_share=0.1, correction_share=0.03, duplicate_share=0.02, orphan_share=0.01, too_late_share=0.0,
                                median_delay_ms=8_000, max_delay_ms=60_000)
CLOSING = ("KEEP", "ROLL_BACK")  # the probation's decisions
STOPPING = ("REFUSE", "OFFLINE_REFUSED")  # the loop does not close after these (the alert episode is spent)


@dataclass(frozen=True)
class ScenarioConfig:
    """Sizes, windows and rules of the scenario (the defaults fit ~10 minutes on two cores)."""

    rate: float = 8.0  # documents per second
    normal_s: float = 75.0  # seconds of normal stream before the drift
    drift_share: float = 0.4  # share of drifted documents from then on
    max_s: float = 660.0  # the stream stops after this, closed or not
    seed: int = 11  # of the stream (the champions' and contenders' base data are generated with seed 7: no overlap)
    window_ms: int = 60_000
    slide_ms: int = 20_000
    settle_ms: int = 40_000
    min_support: int = 40
    min_macro_f1: float = 0.8  # a quick champion scores ~0.88-0.92 on the normal stream, ~0.65-0.75 in the drift
    min_accuracy: float = 0.75
    feedback: FeedbackProfile = LATE_FEEDBACK
    judge: JudgeConfig = JudgeConfig(min_pairs=200, probation_pairs=200, bootstrap=1000, max_latency_ratio=3.0)
    retrain: RetrainConfig = RetrainConfig(quick=True, generated=1500, real=False, min_examples=50, cooldown_ms=120_000)
    champion_docs: int = 1500  # generated documents of the quick champions trained when the registry has none

    def accuracy_args(self, group_id: str) -> list[str]:
        return ["--group-id", group_id, "--window-ms", str(self.window_ms), "--slide-ms", str(self.slide_ms), "--settle-ms",
                str(self.settle_ms), "--min-support", str(self.min_support), "--min-macro-f1", str(self.min_macro_f1),
                "--min-accuracy", str(self.min_accuracy), "--out-of-orderness-ms", "5000"]


# --- the timeline ------------------------------------------------------------------------------


@dataclass
class Timeline:
    """What the loop's topics say, as it happens: printed, and kept for the figures and the plot."""

    t0_ms: int
    reports: list[dict] = field(default_factory=list)  # accuracy reports of champions
    shadow: list[dict] = field(default_factory=list)  # shadow reports
    events: list[tuple[int, str, dict]] = field(default_factory=list)  # (at_ms, what, record): alerts, requests, decisions
    serving: set = field(default_factory=set)
    first_champion: str | None = None

    def take(self, record_type: str, record: dict) -> None:
        if record_type == "accuracy_report" and record["slot"] == "champion" and record["macro_f1"] is not None:
            self.reports.append(record)
            self.first_champion = self.first_champion or record["model_version"]
            self._say(record["window_end_ms"], f"champion v{record['model_version']}: macro-F1 {record['macro_f1']:.3f}, accuracy "
                      f"{record['accuracy']:.3f} on {record['count']} labelled documents (the window ending here)")
        elif record_type == "shadow_report" and record["count"]:
            self.shadow.append(record)
            self._say(record["window_end_ms"], f"shadow: champion v{record['champion_version']} {record['champion']['macro_f1']:.3f} vs "
                      f"challenger v{record['challenger_version']} {record['challenger']['macro_f1']:.3f} macro-F1 on {record['count']} documents")
        elif record_type == "alert":
            self.events.append((record["raised_ms"], "alert", record))
            self._say(record["raised_ms"], f"[red]ALERT[/red] {record['message']}")
        elif record_type == "retraining_request":
            self.events.append((record["requested_ms"], "retraining request", record))
            self._say(record["requested_ms"], f"retraining requested for {record['model_name']} v{record['model_version']} "
                      f"(weakest labels: {', '.join(record['weakest_labels'])})")
        elif record_type == "model_decision":
            self.events.append((record["decided_ms"], record["decision"], record))
            self._say(record["decided_ms"], f"[bold]{record['decision']}[/bold] by the {record['decided_by']}: {record['kind']} "
                      f"challenger v{record['challenger_version']}, champion v{record['champion_version']}"
                      + "".join(f"\n           - {r}" for r in record["reasons"]) + _decision_figures(record))
        elif record_type == "model_event" and record["kind"] == "text":
            seen = (record["slot"], record["version"], record["outcome"])
            if seen not in self.serving:
                self.serving.add(seen)
                self._say(record["at_ms"], f"scoring job: {record['outcome']} {record['slot']} {record['version'] or ''}"
                          + (f" ({record['reason']})" if record["reason"] else ""))

    def decisions(self, *names: str) -> list[dict]:
        return [record for _, what, record in self.events if what in names]

    def closed(self) -> bool:
        """The probation is decided and the champion serving since has a window of figures of its own."""
        done = self.decisions(*CLOSING)
        if not done:
            return False
        promoted = self.decisions("PROMOTE")
        if done[-1]["decision"] == "KEEP":
            serving, since = done[-1]["champion_version"], promoted[-1]["decided_ms"] if promoted else done[-1]["decided_ms"]
        else:
            serving, since = done[-1]["challenger_version"], done[-1]["decided_ms"]
        return any(r["model_version"] == serving and r["window_start_ms"] >= since for r in self.reports)

    def stopped(self) -> str | None:
        """Why the loop cannot close in this run, if it cannot."""
        for record in self.decisions(*STOPPING):
            return f"{record['decision']}: {'; '.join(record['reasons'])}"
        return None

    def _say(self, at_ms: int, text: str) -> None:
        console.print(f"[dim]{_clock(at_ms - self.t0_ms)}[/dim]  {text}")


def _decision_figures(record: dict) -> str:
    figures = json.loads(record["figures"])
    if "summary" in figures:
        return f"\n           {figures['summary']}"
    if "labelled_training_rows" in figures:
        return (f"\n           trained on {figures['labelled_training_rows']} labelled examples; held-out examples "
                f"{figures.get('held_out_examples', 0)}: macro-F1 {figures.get('contender_macro_f1', float('nan')):.3f} vs the champion's "
                f"{figures.get('champion_macro_f1', float('nan')):.3f}")
    return ""


def _clock(ms: float) -> str:
    sign, ms = ("-" if ms < 0 else "+"), abs(ms)
    return f"{sign}{int(ms // 60000):02d}:{int(ms % 60000 // 1000):02d}"


def follow(settings: Settings, timeline: Timeline, stop: threading.Event) -> None:
    """Feed the timeline from the start of the run's topics until `stop` (read_committed)."""
    consumer = KafkaConsumer(**client_config(settings), isolation_level="read_committed", enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic_name(key, settings.topic_prefix), p) for key in TIMELINE_TOPICS
                      for p in sorted(consumer.partitions_for_topic(topic_name(key, settings.topic_prefix)) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    try:
                        decoded = codec.decode(message.value)
                    except codec.DecodeError:
                        continue
                    timeline.take(decoded.record_type, decoded.record)
    finally:
        consumer.close()


# --- traffic and feedback -------------------------------------------------------------------------


@dataclass
class Traffic:
    """The documents sent so far (doc_id -> document with its true label) and when the drift began."""

    run_id: str
    normal: list[dict]
    drifted: list[dict]
    config: ScenarioConfig
    sent: dict[str, dict] = field(default_factory=dict)
    drift_ms: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, settings: Settings, stop: threading.Event) -> None:
        """Documents at `rate` until `stop`: normal ones, then `drift_share` drifted ones among them."""
        rng = random.Random(self.config.seed)
        normal, drifted = itertools.cycle(self.normal), itertools.cycle(self.drifted)
        kafka = producer(settings)
        topic = topic_name("documents", settings.topic_prefix)
        started = time.monotonic()
        for i in itertools.count():
            if stop.is_set():
                break
            delay = started + i / self.config.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            drifting = time.monotonic() - started >= self.config.normal_s
            if drifting and self.drift_ms is None:
                self.drift_ms = now_ms()
            source = next(drifted) if drifting and rng.random() < self.config.drift_share else next(normal)
            doc = {**source, "doc_id": f"{self.run_id}-{i:06d}", "received_ms": now_ms()}
            with self.lock:
                self.sent[doc["doc_id"]] = doc
            raw = {k: v for k, v in doc.items() if k not in ("label", "source")}
            kafka.send(topic, codec.encode("document", to_document(raw, doc["received_ms"])), key=doc["doc_id"].encode())
        kafka.flush()
        kafka.close()


def feedback(settings: Settings, traffic: Traffic, profile: FeedbackProfile, stop: threading.Event) -> None:
    """The departments' verdicts on every prediction of this run, each sent when it is due (its sent_ms)."""
    consumer = KafkaConsumer(**client_config(settings), isolation_level="read_committed", enable_auto_commit=False)
    topic = topic_name("predictions", settings.topic_prefix)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    kafka, truth_topic = producer(settings), topic_name("ground_truth", settings.topic_prefix)
    due: list[tuple[int, int, dict]] = []
    count = itertools.count()
    try:
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=200).values():
                for message in batch:
                    prediction = codec.decode(message.value, expected="prediction").record
                    with traffic.lock:
                        doc = traffic.sent.get(prediction["doc_id"])
                    if doc is None:
                        continue
                    seed = int(doc["doc_id"].rsplit("-", 1)[1])
                    for verdict in simulate_feedback(with_predictions([doc], [prediction]), seed=seed, profile=profile):
                        heapq.heappush(due, (verdict["sent_ms"], next(count), verdict))
            ready = []
            while due and due[0][0] <= now_ms():
                ready.append(heapq.heappop(due)[2])
            if ready:
                send_feedback(kafka, truth_topic, ready, progress=False)
    finally:
        consumer.close()
        kafka.close()


# --- the run -------------------------------------------------------------------------------------


def ensure_quick_champions(settings: Settings, config: ScenarioConfig) -> None:
    """Quick champions (generated documents only) for the kinds the registry has none of."""
    missing = [kind for kind, version in registry_champions(Registry(settings.registry_dir)).items() if version is None]
    if missing:
        console.print(f"no {', '.join(missing)} champion in {settings.registry_dir}: training quick ones first")
        train_models(train_config(quick=True, kinds=tuple(missing), n=config.champion_docs, real=False,
                                  ocr_cache_dir=settings.cache_dir / "ocr"), settings.registry_dir, progress=False)


def run_drift(settings: Settings, config: ScenarioConfig = ScenarioConfig(), drift_file: Path | None = None,
              plot_path: Path | None = None) -> dict:
    """The scenario (module docstring); returns its figures."""
    Stack(settings).up()
    ensure_quick_champions(settings, config)
    run_id = f"drift{uuid.uuid4().hex[:6]}"
    work = settings.run_dir / "scenarios" / run_id
    shutil.copytree(settings.registry_dir, work / "registry", ignore=shutil.ignore_patterns(".lock"))
    settings = replace(settings, topic_prefix=f"{settings.topic_prefix}{run_id}.", registry_dir=work / "registry")
    Kafka(settings).create_topics()
    drifted = from_jsonl(drift_file) if drift_file else billing_disputes(300, seed=config.seed + 1)
    normal = generate(3000, seed=config.seed, scan_share=0.0)
    console.print(f"[bold]{run_id}[/bold]: topics {settings.topic_prefix}*, registry copy {settings.registry_dir}; drift: "
                  + (f"{len(drifted)} documents of {drift_file}" if drift_file else "billing disputes (complaints quoting an invoice)"))
    stop, jobs, threads = threading.Event(), {}, []
    try:
        for name, args in (("router", []), ("scoring", []), ("accuracy", config.accuracy_args(f"{settings.topic_prefix}accuracy"))):
            log_dir = work / "logs" / f"jobs.{name}"
            log_dir.mkdir(parents=True, exist_ok=True)
            jobs[name] = start_job(settings, f"jobs.{name}", args, log_dir / "job.out", log_dir=log_dir)
        with console.status("starting the router, scoring and accuracy jobs (a MiniCluster each) ..."):
            for name, job in jobs.items():
                wait_until_running(settings, name, job, timeout_s=300)
        timeline = Timeline(now_ms())
        traffic = Traffic(run_id, normal, drifted, config)
        services = {
            "timeline": lambda: follow(settings, timeline, stop),
            "retrainer": lambda: Retrainer(settings, Registry(settings.registry_dir), ExampleStore(work / "examples"), config.retrain).serve(stop),
            "judge": lambda: judge_service.serve(settings, Registry(settings.registry_dir), config.judge, stop),
            "feedback": lambda: feedback(settings, traffic, config.feedback, stop),
            "traffic": lambda: traffic.send(settings, stop),
        }
        for name, target in services.items():
            threads.append(threading.Thread(target=target, name=name, daemon=True))
            threads[-1].start()
        console.print(f"sending {config.rate:g} documents/s: normal for {config.normal_s:.0f} s, then {config.drift_share:.0%} drifted; "
                      f"feedback late (median {config.feedback.median_delay_ms / 1000:.0f} s)")
        reason = _wait(timeline, jobs, threads, config.max_s, work / "logs")
    finally:
        stop.set()
        for job in jobs.values():
            stop_job(job)
        for thread in threads:
            thread.join(60)
    figures = summary(timeline, traffic.drift_ms, reason)
    figures["plot"] = str(plot(timeline, traffic.drift_ms, plot_path or work / "macro_f1.png"))
    figures.update(run_id=run_id, work_dir=str(work))
    console.print(f"plot: {figures['plot']}")
    return figures


def _wait(timeline: Timeline, jobs: dict, threads: list[threading.Thread], max_s: float, logs: Path) -> str:
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        if timeline.closed():
            return "closed"
        stopped = timeline.stopped()
        if stopped:
            return f"stopped: {stopped}"
        for name, job in jobs.items():
            if job.poll() is not None:
                return f"the {name} job stopped (exit {job.returncode}); see {logs / ('jobs.' + name)}"
        for thread in threads:
            if not thread.is_alive():
                return f"the {thread.name} thread ended early"
        time.sleep(1)
    return f"not closed within {max_s:.0f} s"


def summary(timeline: Timeline, drift_ms: int | None, reason: str) -> dict:
    """The loop's figures from the timeline, printed."""
    first = timeline.first_champion
    before = [r["macro_f1"] for r in timeline.reports if r["model_version"] == first and drift_ms and r["window_end_ms"] <= drift_ms]
    during = [r["macro_f1"] for r in timeline.reports if r["model_version"] == first and drift_ms and r["window_end_ms"] > drift_ms]
    alerts, promoted, retrained = timeline.decisions("alert"), timeline.decisions("PROMOTE"), timeline.decisions("RETRAINED")
    new = promoted[-1]["challenger_version"] if promoted else None
    after = [r["macro_f1"] for r in timeline.reports if new and r["model_version"] == new and r["window_start_ms"] >= promoted[-1]["decided_ms"]]
    figures = {"outcome": reason, "champion": first, "promoted": new,
               "macro_f1_before_drift": before[-1] if before else None, "macro_f1_worst": min(during) if during else None,
               "macro_f1_after_promotion": after[-1] if after else None,
               "alert_to_promotion_min": (promoted[0]["decided_ms"] - alerts[0]["raised_ms"]) / 60000 if alerts and promoted else None}
    if retrained:
        trained = json.loads(retrained[-1]["figures"])
        figures.update(labelled_examples_trained_on=trained.get("labelled_training_rows"), labelled_examples_held_out=trained.get("held_out_examples"))
    console.print(f"[bold]outcome:[/bold] {reason}")
    for name, value in figures.items():
        if name != "outcome":
            console.print(f"  {name}: {value if not isinstance(value, float) else f'{value:.3f}'}")
    return figures


def plot(timeline: Timeline, drift_ms: int | None, path: Path) -> Path:
    """Online macro-F1 over time per slot (champion per version; challenger in shadow), the events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = lambda ms: (ms - timeline.t0_ms) / 60000  # noqa: E731
    fig, ax = plt.subplots(figsize=(11, 5))
    for version in sorted({r["model_version"] for r in timeline.reports}, key=int):
        points = sorted((r["window_end_ms"], r["macro_f1"]) for r in timeline.reports if r["model_version"] == version)
        ax.plot([minutes(t) for t, _ in points], [f for _, f in points], marker="o", label=f"champion v{version}")
    for challenger in sorted({r["challenger_version"] for r in timeline.shadow}, key=int):
        points = sorted((r["window_end_ms"], r["challenger"]["macro_f1"]) for r in timeline.shadow if r["challenger_version"] == challenger)
        ax.plot([minutes(t) for t, _ in points], [f for _, f in points], linestyle="--", marker="x", label=f"challenger v{challenger} (shadow)")
    marks = ([(drift_ms, "drift starts")] if drift_ms else []) + [(at, what) for at, what, _ in timeline.events if what != "retraining request"]
    for i, (at, what) in enumerate(marks):
        ax.axvline(minutes(at), color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(what, (minutes(at), 0.03 + 0.12 * (i % 3)), xycoords=("data", "axes fraction"), rotation=90, fontsize=8, color="dimgrey")
    ax.set_xlabel("minutes since the stream started (windows by their end)")
    ax.set_ylabel("online macro-F1")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Learning loop: online macro-F1 per slot")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
