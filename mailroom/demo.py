"""What `make run` shows: the whole pipeline on the embedded default, end to end.

1. the stack (Kafka, Redis) up; champion models in the registry (trained first if missing);
2. the router and scoring jobs started (each on its own MiniCluster, unbounded);
3. a batch of generated documents (texts and scans, plus a few unreadable messages) produced
   at a steady rate, each stamped with its receipt time;
4. a read_committed consumer on the department topics timing each arrival;
5. when every routed document has arrived: the jobs stopped, a report (per department, dead
   letters by reason, latency percentiles, model versions);
6. simulated department feedback (late, some missing, corrections, duplicates; with --drift a
   class whose truth changed), the accuracy job over it, and its figures and alerts.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table

from mailroom.accuracy import class_table, latest_by_model, read_metrics, summary_table
from mailroom.control import registry_champions
from mailroom.stack import DashboardService
from config.flinkconf import embedded_ui_port
from mailroom.feedback import FeedbackProfile, send_feedback, simulate_feedback, with_predictions
from mailroom.kafkautil import client_config, MAX_MESSAGE_BYTES, producer, read_topic
from mailroom.memory import StackMemory, stack_parts, write_record
from mailroom.models_cli import train_config, train_models
from mailroom.produce import to_document
from config.settings import Settings
from mailroom.stack import Stack
from mailroom.submit import job_log_dir, run_job, start_job, stop_job, wait_until_running
from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name
from models.generator import generate
from models.registry import Registry
from schemas import codec

console = Console(width=160)
DRIFT = ("invoice", "offer")  # with --drift: documents that look like invoices are, truly, offers now
# The demo's service level: a healthy champion stays well above it on generated mail (text
# macro-F1 ~0.97, image ~0.90); one class drifting costs a model ~0.15 of either figure.
# Reading a scan takes ~0.2 s of a core (the demo's scans are ~30%): two scan readers (Tesseract releases the GIL,
# so both cores read) keep up with the demo's rate where one fell behind by seconds.
JOB_ARGS = {"scoring": ["--ocr-parallelism", "2"]}
ALERT_THRESHOLDS = ["--min-macro-f1", "0.85", "--min-accuracy", "0.8"]


@dataclass
class ArrivalClock:
    """Consumes the department and dead-letter topics (read_committed) while the run lasts:
    when each of this run's documents arrived, its decision (as `delivered`), and every new dead letter."""

    settings: Settings
    run_id: str
    arrivals: dict[str, float] = field(default_factory=dict)  # doc_id -> ms from receipt to arrival
    predictions: dict[str, dict] = field(default_factory=dict)  # doc_id -> the decision it was delivered with (`delivered`)
    dead_letters: list[dict] = field(default_factory=list)
    unreadable: int = 0  # records on those topics that did not decode
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        prefix = self.settings.topic_prefix
        self._dead_topic = topic_name("dead_letters", prefix)
        consumer = KafkaConsumer(
            self._dead_topic, *(topic_name(department_topic_key(label), prefix) for label in DEPARTMENTS),
            **client_config(self.settings), isolation_level="read_committed",
            auto_offset_reset="latest", enable_auto_commit=False, group_id=f"mailroom-demo-{self.run_id}",
            fetch_max_bytes=MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        )
        consumer.poll(timeout_ms=2000)  # join the group and take positions before documents flow
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True)
        self._thread.start()

    def _run(self, consumer: KafkaConsumer) -> None:
        while not self._stop.is_set():
            for partition, batch in consumer.poll(timeout_ms=200).items():
                now = time.time() * 1000
                for message in batch:
                    try:
                        record = codec.decode(message.value).record
                    except codec.DecodeError:  # counted in the report; one odd record must not stop the clock
                        self.unreadable += 1
                        continue
                    if partition.topic == self._dead_topic:
                        self.dead_letters.append(record)
                        continue
                    if record["doc_id"].startswith(self.run_id):
                        self.predictions[record["doc_id"]] = delivered(record)
                        self.arrivals[record["doc_id"]] = now - record["received_ms"]
        consumer.close()

    def dead_letters_of(self, source_topic: str, sent: set[tuple[int, int]]) -> list[dict]:
        """The dead letters of messages this run sent ((partition, offset) in `source_topic`)."""
        return [d for d in list(self.dead_letters)
                if d["source_topic"] == source_topic and (d["source_partition"], d["source_offset"]) in sent]

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)


def delivered(record: dict) -> dict:
    """A department_document's decision, flat, with what the report needs of the document."""
    ocr = record["ocr"] or {}
    return {**record["decision"], "doc_id": record["doc_id"], "department": record["department"], "received_ms": record["received_ms"],
            "content_type": record["content_type"], "ocr_status": ocr.get("status"), "ocr_pages": ocr.get("pages_read", 0),
            "ocr_ms": ocr.get("milliseconds", 0.0), "delivered_text": record["text"] is not None or record["image"] is not None}


def ensure_champions(settings: Settings) -> list[str]:
    """Train (and register) models when the registry has no champion; return what was trained."""
    missing = [kind for kind, version in registry_champions(Registry(settings.registry_dir)).items() if version is None]
    if missing:
        console.print(f"[bold]No champion {' and '.join(missing)} model in {settings.registry_dir}: training first.[/bold]")
        try:
            registered = train_models(train_config(kinds=tuple(missing), ocr_cache_dir=settings.cache_dir / "ocr"), settings.registry_dir)
        except ValueError as exc:
            raise RuntimeError(f"training failed: {exc}") from exc
        unregistered = [kind for kind in missing if registered.get(kind) is None]
        if unregistered:
            raise RuntimeError(f"training registered no {' and '.join(unregistered)} model; see the output above")
    return missing


def in_child(function, *args):
    """`function(*args)` in a fresh child process (its exception raised here): what it loads and builds leaves with the
    child. Opening the registry and training in this process kept ~490 MB (MLflow, scikit-learn, the data, the models)
    for the rest of `make run`, beside the jobs."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:  # not daemonic: it may fork its own
        return pool.submit(function, *args).result()


def unreadable_messages(rng: random.Random, n: int) -> list[bytes]:
    """Messages an upstream system might send by mistake: garbage, truncated, empty."""
    samples = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            samples.append(os.urandom(rng.randint(1, 300)))
        elif kind == 1:
            doc = {"doc_id": "x", "received_ms": int(time.time() * 1000), "channel": "EMAIL", "sender": "a@b.example", "subject": "",
                   "content_type": "TEXT", "text": "cut off in transit", "image": None, "mime_type": "text/plain", "page_count": 1, "headers": {}}
            encoded = codec.encode("document", doc)
            samples.append(encoded[: rng.randint(3, len(encoded) - 1)])
        else:
            samples.append(b"\xc3\x01" + os.urandom(8) + b"unknown schema")
    return samples


def produce_at_rate(settings: Settings, docs: list[dict], bad: list[bytes], rate: float) -> set[tuple[int, int]]:
    """Send documents at `rate` per second, stamping receipt times; return (partition, offset) of all."""
    topic = topic_name("documents", settings.topic_prefix)
    prod = producer(settings, batch_size=2**20)
    futures = []
    messages = [(doc, None) for doc in docs] + [(None, value) for value in bad]
    random.Random(0).shuffle(messages)
    started = time.monotonic()
    for i, (doc, raw) in enumerate(messages):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if doc is not None:
            doc["received_ms"] = int(time.time() * 1000)
            raw = codec.encode("document", to_document(doc, doc["received_ms"]))
        futures.append(prod.send(topic, raw, key=doc["doc_id"].encode() if doc else None))
    prod.flush()
    prod.close()
    return {(f.get().partition, f.get().offset) for f in futures}


def documents_for_run(run_id: str, count: int, seed: int, scan_share: float) -> list[dict]:
    docs = list(generate(count, seed, scan_share=scan_share))
    for doc in docs:
        doc["doc_id"] = f"{run_id}-{doc['doc_id']}"
    return docs


def run(settings: Settings, count: int = 600, rate: float = 30.0, scan_share: float = 0.3, drift: bool = False,
        seed: int | None = None, timeout_s: float = 600) -> dict:
    """The whole pipeline end to end; prints the report and returns its figures."""
    seed = random.randrange(10**6) if seed is None else seed
    started_ms = int(time.time() * 1000)
    run_id = f"run{uuid.uuid4().hex[:6]}"
    stack = Stack(settings).up()
    console.print(f"stack: started {', '.join(stack['started']) or 'nothing (already running)'}; topics created: {len(stack['topics_created'])}")
    in_child(ensure_champions, settings)
    DashboardService(settings).start()
    console.print(f"dashboard: {settings.dashboard_login_url} (live while the jobs run; stays up until `mailroom stack down`)")

    docs = documents_for_run(run_id, count, seed, scan_share)
    bad = unreadable_messages(random.Random(seed), max(3, count // 50))
    jobs = {}
    clock = ArrivalClock(settings, run_id)
    memory = StackMemory(stack_parts(settings)).start()  # the services, and this process with the jobs it starts
    try:
        for name in ("router", "scoring"):
            log_dir = job_log_dir(settings, f"jobs.{name}")
            log_dir.mkdir(parents=True, exist_ok=True)
            jobs[name] = start_job(settings, f"jobs.{name}", JOB_ARGS.get(name, []), log_dir / "job.out")
            memory.parts[f"{name} job"] = jobs[name].pid
        with console.status("starting the router and scoring jobs (a MiniCluster each) ..."):
            for name, job in jobs.items():
                wait_until_running(settings, name, job)
        clock.start()
        console.print(f"[bold]{run_id}[/bold]: sending {len(docs)} documents ({sum(d['content_type'].upper() == 'IMAGE' for d in docs)} scans) "
                      f"and {len(bad)} unreadable messages at {rate:g}/s (seed {seed}); Flink UIs: router "
                      f"http://{settings.host}:{embedded_ui_port(settings, 'router')}, scoring http://{settings.host}:{embedded_ui_port(settings, 'scoring')}")
        sent = produce_at_rate(settings, docs, bad, rate)
        dead = _wait_for_results(settings, clock, sent, len(docs), jobs, timeout_s)
    finally:
        clock.stop()
        for job in jobs.values():
            stop_job(job)
    report = _report(settings, docs, clock, dead, len(sent))
    try:
        report["accuracy"] = _accuracy(settings, docs, list(clock.predictions.values()), seed, drift, started_ms, run_id)
    finally:
        memory.stop()
    write_record(settings, run_id, memory)
    report["peak_rss_mb"] = round(memory.peak_mb, 1)
    console.print(f"memory: {memory.summary()}")
    console.print(f"[bold]watch it:[/bold] dashboard {settings.dashboard_login_url} | Prometheus {settings.prometheus_url} | "
                  f"MLflow {settings.mlflow_url} | `mailroom stack down` stops them")
    return report


def _wait_for_results(settings: Settings, clock: ArrivalClock, sent: set, documents: int, jobs: dict, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for every document to reach its department ...") as status:
        while True:
            dead = clock.dead_letters_of(topic_name("documents", settings.topic_prefix), sent)
            arrived = len(clock.arrivals)
            status.update(f"arrived in department topics: {arrived}; dead-lettered: {len(dead)}; of {len(sent)} sent")
            if arrived + len(dead) >= len(sent):
                return dead
            for name, job in jobs.items():
                if job.poll() is not None:
                    raise RuntimeError(f"the {name} job stopped (exit {job.returncode}); see {job_log_dir(settings, f'jobs.{name}')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {arrived} of {documents} documents arrived within {timeout_s:.0f} s")
            time.sleep(1)


def _report(settings: Settings, docs: list[dict], clock: ArrivalClock, dead: list[dict], sent: int) -> dict:
    departments = Counter(p["department"] for p in clock.predictions.values())
    truth = {d["doc_id"]: d["label"] for d in docs}
    right = sum(1 for doc_id, p in clock.predictions.items() if p["department"] == DEPARTMENTS[truth[doc_id]])
    table = Table(title="Documents per department topic")
    table.add_column("department")
    table.add_column("documents", justify="right")
    table.add_column("of which truly theirs", justify="right")
    for dept in DEPARTMENTS.values():
        theirs = sum(1 for doc_id, p in clock.predictions.items() if p["department"] == dept and DEPARTMENTS[truth[doc_id]] == dept)
        table.add_row(dept, str(departments.get(dept, 0)), str(theirs))
    console.print(table)

    reasons = Counter(d["reason"] for d in dead)
    console.print("dead letters: " + (", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) or "none"))
    latencies = np.array(list(clock.arrivals.values()))
    percentiles = {f"p{p}": float(np.percentile(latencies, p)) for p in (50, 95, 99)} if len(latencies) else {}
    console.print("latency from receipt to a department topic (read_committed, includes the exactly-once commit): "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in percentiles.items()))
    versions = Counter(f"{p['model_name']} v{p['model_version']} as {p['slot']}" for p in clock.predictions.values())
    console.print("models that decided: " + ", ".join(f"{m} ({n} documents)" for m, n in sorted(versions.items()))
                  + (f"; {clock.unreadable} record(s) on the department topics did not decode" if clock.unreadable else ""))
    scans = _scans_line(clock.predictions, truth)
    console.print(scans["line"])
    console.print(f"routed to the department the document truly belongs to: {right} of {len(docs)} ({right / len(docs):.0%}); "
                  f"books: sent {sent} = {len(clock.arrivals)} classified + {len(dead)} dead-lettered")
    return {"departments": dict(departments), "dead_letters": dict(reasons), "latency_ms": percentiles, "models": dict(versions),
            "right_department": right, "documents": len(docs), "arrived": len(clock.arrivals), "scans": scans["figures"],
            "delivered_with_content": sum(p["delivered_text"] for p in clock.predictions.values())}


def _scans_line(predictions: dict[str, dict], truth: dict[str, str]) -> dict:
    """How the scans were read: pages, OCR time, who decided, and how often the label was right, read or not."""
    scans = [p for p in predictions.values() if p["content_type"] == "IMAGE"]
    if not scans:
        return {"line": "scans: none in this run", "figures": {}}
    read = [p for p in scans if p["ocr_status"] == "READ"]
    fallbacks = Counter(p["ocr_status"] for p in scans if p["ocr_status"] != "READ")

    def right(group):
        return sum(p["label"] == truth[p["doc_id"]] for p in group)

    pages = sum(p["ocr_pages"] for p in scans)
    ocr_s = sum(p["ocr_ms"] for p in scans) / 1000
    figures = {"scans": len(scans), "read": len(read), "pages_read": pages, "ocr_seconds": round(ocr_s, 1), "fallbacks": dict(fallbacks),
               "right_label_read": right(read), "right_label_layout": right([p for p in scans if p["ocr_status"] != "READ"])}
    layout = len(scans) - len(read)
    line = (f"scans: {len(scans)}, read by OCR {len(read)} ({pages} pages, {ocr_s:.1f} s of OCR, {1000 * ocr_s / max(pages, 1):.0f} ms/page), "
            f"right label {figures['right_label_read']}/{len(read)}; decided by the layout model {layout}"
            + (f" ({', '.join(f'{status} {n}' for status, n in fallbacks.most_common())})" if layout else "")
            + (f", right label {figures['right_label_layout']}/{layout}" if layout else ""))
    return {"line": line, "figures": figures}


def _accuracy(settings: Settings, docs: list[dict], predictions: list[dict], seed: int, drift: bool, started_ms: int, run_id: str) -> dict:
    """Simulated feedback for this run's documents, then the accuracy job over it (bounded)."""
    profile = FeedbackProfile(drift=DRIFT if drift else None)
    feedback = simulate_feedback(with_predictions(docs, predictions), seed=seed, profile=profile)
    sent = send_feedback(producer(settings), topic_name("ground_truth", settings.topic_prefix), feedback, progress=False)
    console.print(f"feedback: {sent.sent} verdicts from departments (late, some missing, corrections, duplicates"
                  f"{'; drift: ' + ' documents are now '.join(DRIFT) if drift else ''})")
    job_started_ms = int(time.time() * 1000)
    with console.status("accuracy job: joining predictions with ground truth ..."):
        # this run's predictions and feedback only: a fresh group, from the run's start
        result = run_job(settings, "jobs.accuracy", ["--bounded", "--from-ms", str(started_ms), "--group-id", f"mailroom-accuracy-demo-{run_id}",
                                                     *ALERT_THRESHOLDS], timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"the accuracy job failed:\n{result.stderr[-3000:]}")
    reports = [r for r in read_metrics(settings, topic_name("metrics", settings.topic_prefix), timeout_s=2).reports
               if r["reported_ms"] >= job_started_ms]
    latest = latest_by_model(reports)
    console.print(summary_table(latest))
    for report in latest.values():
        console.print(class_table(report))
    alerts = [codec.decode(m.value).record for m in read_topic(settings, topic_name("alerts", settings.topic_prefix), timeout_s=2)]
    alerts = [a for a in alerts if a["raised_ms"] >= job_started_ms]
    for alert in alerts:
        console.print(f"[red]ALERT[/red] {alert['message']}")
    if not alerts:
        console.print("no alerts: every model version is above its thresholds")
    return {"reports": {f"{m[0]} v{m[1]}": {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "coverage": r["label_coverage"]}
                        for m, r in latest.items()}, "alerts": [a["message"] for a in alerts]}
