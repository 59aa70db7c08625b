"""`mailroom soak`: the whole pipeline on the session cluster for a long run, under a seeded schedule of faults.

The router, scoring and accuracy jobs run on a session cluster of at least two TaskManagers, the retrainer beside
them, and a supervisor thread (`Stack.repair`, as `mailroom stack supervise`) starts again whatever dies. Upstream
documents arrive at a steady rate (a few unreadable ones among them), departments send verdicts on a share of what
they receive, and at seeded moments one of each fault strikes:

* `taskmanager-killed`: `kill -9` of a TaskManager (the supervisor starts it again);
* `broker-restarted`: the Kafka broker stopped and started again;
* `redis-stopped`: Redis stopped for `--redis-outage-s` (the feature mirror waits, scoring goes on);
* `bad-models`: a corrupt model (its file is not what its sha256 says) and one trained on another feature set,
  published on the control topic (both refused, the champion keeps serving);
* `poison-records`: a routed scan whose bytes are no image and one whose PNG is cut off (their layout features
  raise: each dead-lettered PROCESSING_ERROR by scoring, the documents around them scored), and one whose second
  page is cut off (OCR raises on it: the reading is FAILED and the layout model decides it, delivered once);
* `scoring-upgraded`: the scoring job stopped with a savepoint and resumed from it, as for an upgrade.

At the end it reads every output topic read_committed and prints the books: documents sent; in a department topic
exactly once; dead-lettered exactly once (by reason); lost; duplicated; labelled examples exactly once; and per
fault when it struck and how long department output paused after it. The report is also written as JSON and a
plot (documents out per second, faults marked) into `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from config.settings import PROJECT_DIR, Settings
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name

console = Console(width=160)

FAULTS = ("taskmanager-killed", "broker-restarted", "redis-stopped", "bad-models", "poison-records", "scoring-upgraded")
JOBS = ("router", "scoring", "accuracy")
JOB_ARGS = {"scoring": ("--ocr-parallelism", "2")}  # every submission of a job, the resumed one too
MEMORY_CAPS = {"kafka": "JVM heap capped by MAILROOM_KAFKA_HEAP", "redis used_memory": "capped by maxmemory 256 MB",
               "flink": "the JobManager and the TaskManagers: 1024m + TaskManagers x 2048m", "taskmanager": "taskmanager.memory.process.size 2048m",
               "whole stack": "every service's resident memory, summed per sample"}


# --- plain logic: the schedule, the books, the pauses ------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float  # seconds after the first document was sent


def schedule(kinds: tuple[str, ...], duration_s: float, seed: int, margin: float = 0.1) -> list[Fault]:
    """Each fault once, in a seeded order, at a seeded moment of its own equal slice of the run's middle part
    (`margin` of the run free at either end), so that no two strike together and each has time to recover.

    >>> faults = schedule(("a", "b", "c"), 300, seed=4)
    >>> sorted(f.kind for f in faults), all(30 <= f.at_s <= 270 for f in faults), faults == schedule(("a", "b", "c"), 300, seed=4)
    (['a', 'b', 'c'], True, True)
    >>> min(b.at_s - a.at_s for a, b in zip(faults, faults[1:])) > 0.4 * 80  # a slice of 80 s each, struck in its middle 60%
    True
    """
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    start, width = margin * duration_s, (1 - 2 * margin) * duration_s / max(len(order), 1)
    return [Fault(kind, round(start + i * width + rng.uniform(0.2, 0.8) * width, 1)) for i, kind in enumerate(order)]


@dataclass
class Books:
    """What came out for what went in. `expected_dead` are the records sent to be dead-lettered (by a source key:
    topic/partition/offset); every other document sent (`sent`, by doc_id) must reach a department exactly once."""

    sent: set[str] = field(default_factory=set)
    expected_dead: set[str] = field(default_factory=set)
    delivered: Counter = field(default_factory=Counter)  # doc_id -> times in a department topic
    dead: Counter = field(default_factory=Counter)  # source key -> times dead-lettered
    dead_reasons: Counter = field(default_factory=Counter)
    truth_sent: set[str] = field(default_factory=set)  # doc_ids a department sent a verdict on
    labelled: Counter = field(default_factory=Counter)  # doc_id -> labelled examples

    def figures(self) -> dict:
        """The report's counts.

        >>> b = Books(sent={"a", "b", "c"}, expected_dead={"in/0/9"}, delivered=Counter({"a": 1, "b": 2}), dead=Counter({"in/0/9": 1}))
        >>> f = b.figures(); (f["delivered_once"], f["duplicated"], f["lost"], f["dead_lettered_once"])
        (1, 1, 1, 1)
        """
        delivered_once = sum(1 for doc in self.sent if self.delivered[doc] == 1)
        return {
            "documents_sent": len(self.sent),
            "bad_records_sent": len(self.expected_dead),
            "delivered_once": delivered_once,
            "dead_lettered_once": sum(1 for key in self.expected_dead if self.dead[key] == 1),
            "dead_letters_by_reason": dict(self.dead_reasons),
            "lost": sum(1 for doc in self.sent if not self.delivered[doc]) + sum(1 for key in self.expected_dead if not self.dead[key]),
            "duplicated": sum(1 for doc in self.sent if self.delivered[doc] > 1) + sum(1 for key in self.expected_dead if self.dead[key] > 1),
            "unexpected_dead_letters": sum(n for key, n in self.dead.items() if key not in self.expected_dead),
            "verdicts_sent": len(self.truth_sent),
            "labelled_once": sum(1 for doc in self.truth_sent if self.labelled[doc] == 1),
            "labelled_missing": sum(1 for doc in self.truth_sent if not self.labelled[doc]),
            "labelled_twice": sum(1 for doc in self.truth_sent if self.labelled[doc] > 1),
        }


def longest_pause_after(at_ms: float, arrivals_ms: list[float], within_s: float = 15.0) -> float | None:
    """The longest pause in output (seconds between two arrivals) that began in the `within_s` after `at_ms`:
    how long output stopped because of the fault. None when nothing arrived after it.

    >>> longest_pause_after(1000, [0, 500, 1200, 1300, 9300, 9400])
    8.0
    """
    ordered = sorted(arrivals_ms)
    gaps = [(b - a) / 1000 for a, b in zip(ordered, ordered[1:]) if at_ms - 1000 <= a <= at_ms + within_s * 1000]
    later = [t for t in ordered if t > at_ms]
    if not later:
        return None
    return round(max(gaps), 1) if gaps else round((later[0] - at_ms) / 1000, 1)


def caught_up_after(at_ms: float, arrivals_ms: list[float], latencies_ms: list[float], until_ms: float = float("inf"),
                    bound_s: float = 10.0) -> float:
    """Seconds from a fault at `at_ms` to the last arrival before `until_ms` (the next fault) that came more than
    `bound_s` after its receipt: how long the backlog the fault left took to clear (0: none formed).

    >>> caught_up_after(1000, [1500, 3000, 9000, 12000], [200, 14000, 11000, 300])
    8.0
    >>> caught_up_after(1000, [1500, 3000], [200, 400])
    0.0
    """
    late = [t for t, latency in zip(arrivals_ms, latencies_ms) if at_ms <= t < until_ms and latency > bound_s * 1000]
    return round((max(late) - at_ms) / 1000, 1) if late else 0.0


def per_second(arrivals_ms: list[float], start_ms: float) -> list[int]:
    """Arrivals in each second from `start_ms`.

    >>> per_second([1000, 1500, 3100], 1000)
    [2, 0, 1]
    """
    seconds = [int((t - start_ms) // 1000) for t in arrivals_ms if t >= start_ms]
    counts = [0] * (max(seconds) + 1 if seconds else 0)
    for s in seconds:
        counts[s] += 1
    return counts


def disk_usage(root: Path) -> dict[str, int]:
    """Bytes allocated under each top-level folder of `root` (files directly in it count as "."), as `du` counts
    them (Kafka's preallocated index files are sparse: their size is not their use), skipping what vanishes while
    it is walked (Kafka deletes segments, Flink old checkpoints).

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "a").mkdir(); _ = (d / "a" / "x").write_bytes(b"1" * 10_000)
    >>> _ = (d / "top").write_bytes(b"1"); use = disk_usage(d); sorted(use), use["a"] >= 10_000
    (['.', 'a'], True)
    """
    sizes: Counter = Counter()
    for folder, _, files in os.walk(root):
        part = Path(folder).relative_to(root).parts
        for name in files:
            try:
                sizes[part[0] if part else "."] += os.stat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return dict(sorted(sizes.items()))


def peaks(samples: list[dict], key: str, value: str) -> dict[str, float]:
    """The largest `value` of each `key` among samples.

    >>> peaks([{"job": "a", "bytes": 3}, {"job": "a", "bytes": 5}, {"job": "b", "bytes": 1}], "job", "bytes")
    {'a': 5, 'b': 1}
    """
    out: dict[str, float] = {}
    for sample in samples:
        out[sample[key]] = max(out.get(sample[key], sample[value]), sample[value])
    return out


def latency_per_window(arrivals_ms: list[float], latencies_ms: list[float], start_ms: float, window_s: int = 10) -> list[float | None]:
    """The median latency (s) of the arrivals in each `window_s` from `start_ms` (None: nothing arrived).

    >>> latency_per_window([1000, 2000, 25000], [1000, 3000, 500], 0)
    [2.0, None, 0.5]
    """
    windows: dict[int, list[float]] = {}
    for t, latency in zip(arrivals_ms, latencies_ms):
        if t >= start_ms:
            windows.setdefault(int((t - start_ms) // (window_s * 1000)), []).append(latency / 1000)
    return [round(float(np.median(windows[i])), 1) if i in windows else None for i in range(max(windows) + 1 if windows else 0)]


def source_key(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


# --- the run ------------------------------------------------------------------------------------


class SoakRefused(RuntimeError):
    """The soak cannot start as asked (its message says why and what to do)."""


@dataclass(frozen=True)
class SoakConfig:
    docs: int = 100_000
    rate: float = 80.0  # documents per second offered
    scan_share: float = 0.05
    verdict_share: float = 0.2  # of delivered documents, the share departments send a verdict on
    seed: int = 1
    taskmanagers: int = 2
    slots: int = 2
    faults: tuple[str, ...] = FAULTS
    redis_outage_s: float = 30.0
    drain_timeout_s: float = 600.0
    keep_topics: bool = False  # leave the run's topics (and grants) on the broker for a look afterwards
    cancel_running: bool = False  # cancel the jobs the session cluster already runs (else the run is refused)
    out: Path = PROJECT_DIR / "soak-results"


@dataclass
class StruckFault:
    kind: str
    at_s: float
    started_ms: float = 0.0
    ended_ms: float = 0.0
    detail: str = ""
    pause_s: float | None = None
    caught_up_s: float | None = None  # until documents arrived within 10 s of their receipt again


class OutputWatcher:
    """Reads the department, dead-letter and labelled-examples topics (read_committed) from the start while the run
    lasts: each record's arrival time, what it counts for, and the verdicts the departments send back."""

    def __init__(self, settings: Settings, books: Books, truth: dict[str, str], verdict_share: float, seed: int):
        self.s, self.books, self.truth = settings, books, truth
        self.verdict_share, self.rng = verdict_share, random.Random(seed)
        self.arrivals_ms: list[float] = []
        self.latencies_ms: list[float] = []  # of each arrival: from its receipt upstream
        self.verdicts: list[dict] = []  # to send, filled as documents arrive
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-watcher")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(30)

    def take_verdicts(self) -> list[dict]:
        with self._lock:
            taken, self.verdicts = self.verdicts, []
        return taken

    def _run(self) -> None:
        from kafka import KafkaConsumer

        from mailroom.kafkautil import MAX_MESSAGE_BYTES, client_config

        prefix = self.s.topic_prefix
        self.dead_topic, self.labelled_topic = topic_name("dead_letters", prefix), topic_name("labelled_examples", prefix)
        topics = [self.dead_topic, self.labelled_topic, *(topic_name(department_topic_key(label), prefix) for label in DEPARTMENTS)]
        consumer = KafkaConsumer(*topics, **client_config(self.s), isolation_level="read_committed", auto_offset_reset="earliest",
                                 enable_auto_commit=False, group_id=f"{prefix}soak-watcher", fetch_max_bytes=MAX_MESSAGE_BYTES,
                                 max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
        while not self._stop.is_set():
            try:
                batches = consumer.poll(timeout_ms=500)
            except Exception as exc:  # the broker restarting: the consumer reconnects by itself
                console.print(f"[yellow]watcher: {type(exc).__name__}; polling on[/yellow]")
                time.sleep(1)
                continue
            now = time.time() * 1000
            for partition, messages in batches.items():
                for message in messages:
                    self._count(partition.topic, codec.decode(message.value).record, now)
        consumer.close()

    def _count(self, topic: str, record: dict, now_ms: float) -> None:
        if topic == self.dead_topic:
            self.books.dead[source_key(record["source_topic"], record["source_partition"], record["source_offset"])] += 1
            self.books.dead_reasons[record["reason"]] += 1
        elif topic == self.labelled_topic:
            self.books.labelled[record["doc_id"]] += 1
        else:
            doc_id = record["doc_id"]
            self.books.delivered[doc_id] += 1
            self.arrivals_ms.append(now_ms)
            self.latencies_ms.append(now_ms - record["received_ms"])
            label = self.truth.get(doc_id)
            if label and self.books.delivered[doc_id] == 1 and self.rng.random() < self.verdict_share:
                predicted = record["decision"]["label"]
                with self._lock:
                    self.verdicts.append({"doc_id": doc_id, "label": label, "department": DEPARTMENTS[label], "sent_ms": int(now_ms),
                                          "kind": "CONFIRM" if predicted == label else "CORRECT", "comment": None})


class Soak:
    """One soak run: its own topic prefix, the jobs on the session cluster, the traffic, the faults, the report."""

    def __init__(self, settings: Settings, config: SoakConfig):
        from mailroom.stack import Stack

        self.run_id = f"soak{uuid.uuid4().hex[:6]}"
        self.config = config
        self.s = replace(settings, topic_prefix=f"{self.run_id}.")
        self.stack = Stack(self.s, config.taskmanagers, config.slots)
        self.books = Books()
        self.struck: list[StruckFault] = []
        self.checkpoints: list[dict] = []  # samples of each job's latest checkpoint size
        self.disk: list[dict] = []  # samples of the run directory's use, by folder
        self.memory: list[dict] = []  # samples of each service's resident memory (and Redis's own figure)
        self.state_backends: dict[str, str] = {}  # job -> the state backend Flink reports for it
        self.jobs: dict[str, str] = {}  # job -> Flink job id
        self.out = config.out / self.run_id
        self._stop = threading.Event()

    # the jobs on the session cluster

    def _submit(self, job: str, *extra: str) -> str:
        from mailroom.submit import run_job

        result = run_job(self.s, f"jobs.{job}", ["--group-id", f"{self.s.topic_prefix}{job}", *JOB_ARGS.get(job, ()), *extra], cluster=True, detached=True,
                         timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"submitting the {job} job failed:\n{result.stderr[-2000:]}")
        return self.stack.flink.running_job(f"mailroom-{job}", not_these=tuple(self.jobs.values()))

    # the traffic

    def _documents(self) -> tuple[list[dict], list[bytes]]:
        from mailroom.demo import documents_for_run, unreadable_messages

        with console.status(f"{self.run_id}: generating {self.config.docs:,} documents (about 2.5 ms each)"):
            docs = documents_for_run(self.run_id, self.config.docs, self.config.seed, self.config.scan_share)
        return docs, unreadable_messages(random.Random(self.config.seed), max(3, self.config.docs // 2000))

    def _send(self, docs: list[dict], bad: list[bytes], watcher: OutputWatcher) -> None:
        from mailroom.kafkautil import producer
        from mailroom.produce import to_document

        documents, truth_topic = topic_name("documents", self.s.topic_prefix), topic_name("ground_truth", self.s.topic_prefix)
        out = producer(self.s, batch_size=2**20, retries=2**31 - 1, delivery_timeout_ms=600_000)
        messages = [(doc, None) for doc in docs] + [(None, value) for value in bad]
        random.Random(self.config.seed).shuffle(messages)
        started = time.monotonic()
        for i, (doc, raw) in enumerate(tqdm(messages, desc=f"{self.run_id}: sending", unit="doc")):
            if self._stop.is_set():
                break
            delay = started + i / self.config.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if doc is not None:
                doc["received_ms"] = int(time.time() * 1000)
                out.send(documents, codec.encode("document", to_document(doc, doc["received_ms"])), key=doc["doc_id"].encode())
                self.books.sent.add(doc["doc_id"])
            else:
                out.send(documents, raw).add_callback(lambda meta: self.books.expected_dead.add(source_key(meta.topic, meta.partition, meta.offset)))
            if i % 50 == 0:
                self._send_verdicts(out, truth_topic, watcher)
        out.flush()
        out.close()

    def _send_verdicts(self, out, topic: str, watcher: OutputWatcher) -> None:
        for verdict in watcher.take_verdicts():
            out.send(topic, codec.encode("ground_truth", verdict, validate=True), key=verdict["doc_id"].encode())
            self.books.truth_sent.add(verdict["doc_id"])

    # the faults

    def _strike(self, fault: Fault, docs: list[dict]) -> StruckFault:
        struck = StruckFault(fault.kind, fault.at_s, started_ms=time.time() * 1000)
        if fault.kind == "taskmanager-killed":
            index, process = sorted(self.stack.flink.taskmanager_processes().items())[-1]
            os.kill(process.pid, signal.SIGKILL)
            struck.detail = f"kill -9 of taskmanager {index} (pid {process.pid})"
        elif fault.kind == "broker-restarted":
            self.stack.kafka.stop()
            self.stack.kafka.start()
            struck.detail = "broker stopped and started again"
        elif fault.kind == "redis-stopped":
            self.stack.redis.stop()
            self._stop.wait(self.config.redis_outage_s)
            self.stack.redis.start()
            struck.detail = f"Redis down for {self.config.redis_outage_s:g} s"
        elif fault.kind == "bad-models":
            struck.detail = self._publish_bad_models()
        elif fault.kind == "poison-records":
            struck.detail = self._send_poison(docs)
        elif fault.kind == "scoring-upgraded":
            struck.detail = self._savepoint_and_resume()
        struck.ended_ms = time.time() * 1000
        return struck

    def _publish_bad_models(self) -> str:
        from mailroom.kafkautil import producer
        from models.pointers import ModelPointer, file_sha256
        from models.registry import Registry

        champion = ModelPointer.of(Registry(self.s.registry_dir).champion("text"))
        corrupt = self.out / "corrupt-model.onnx"
        corrupt.write_bytes(b"this is not an ONNX graph")
        bad = [replace(champion, version="soak-corrupt", onnx_path=str(corrupt), sha256=file_sha256(corrupt)),
               replace(champion, version="soak-wrong-features", feature_set_id="sender-v0")]
        out = producer(self.s)
        for pointer in bad:
            record = pointer.to_record("CHALLENGER", int(time.time() * 1000), "soak: a bad model")
            out.send(topic_name("model_control", self.s.topic_prefix), codec.encode("model_control", record), key=b"text/challenger").get(30)
        out.close()
        return "a corrupt text model and one on another feature set, as challengers"

    def _send_poison(self, docs: list[dict]) -> str:
        from mailroom.kafkautil import producer
        from mailroom.produce import to_document
        from udfs.routing import Router, RouterConfig

        scans = [d for d in docs if d["content_type"].upper() == "IMAGE"][:1]
        if not scans:
            return "no scan in the corpus to poison (raise --scan-share)"
        template = {**scans[0], "received_ms": int(time.time() * 1000)}
        routed = Router(RouterConfig()).route(codec.encode("document", to_document(template, template["received_ms"])), "soak", 0, 0,
                                              template["received_ms"])
        record = codec.decode(routed.value, expected="routed_document").record
        png = record["image"]
        poisons = [{**record, "doc_id": f"{self.run_id}-poison-noimage", "image": b"these bytes are not an image at all"},
                   {**record, "doc_id": f"{self.run_id}-poison-cutoff", "image": png[: max(64, len(png) // 3)]}]
        ocr_breaking = {**record, "doc_id": f"{self.run_id}-poison-ocr", "pages": [png[: max(64, len(png) // 3)]]}
        out = producer(self.s)
        for poison in poisons:
            meta = out.send(topic_name("routed_scans", self.s.topic_prefix), codec.encode("routed_document", poison),
                            key=poison["doc_id"].encode()).get(30)
            self.books.expected_dead.add(source_key(meta.topic, meta.partition, meta.offset))
        out.send(topic_name("routed_scans", self.s.topic_prefix), codec.encode("routed_document", ocr_breaking),
                 key=ocr_breaking["doc_id"].encode()).get(30)
        self.books.sent.add(ocr_breaking["doc_id"])
        out.close()
        return ("a routed scan that is no image and one cut off after a third of its PNG (features raise: dead-lettered); "
                "one whose second page is cut off (OCR raises: the layout model decides it)")

    def _savepoint_and_resume(self) -> str:
        savepoint = self.stack.flink.stop_with_savepoint(self.jobs["scoring"], self.s.run_dir / "savepoints")
        self.jobs["scoring"] = self._submit("scoring", "--restore-from", savepoint)
        return f"stopped with savepoint {savepoint.rsplit('/', 1)[-1]}, resumed as job {self.jobs['scoring'][:8]}"

    # background threads

    def _supervise(self) -> None:
        while not self._stop.wait(2):
            try:
                for name in self.stack.repair():
                    console.print(f"supervisor: started {name} again")
            except Exception as exc:  # a fault mid-repair: try again next time
                console.print(f"[yellow]supervisor: {type(exc).__name__}: {exc}[/yellow]")

    def _sample_resources(self, every_s: float = 15) -> None:
        """Each job's latest checkpoint size, the run directory's disk use by folder, and each service's memory."""
        redis = self.s.redis_client("operator", socket_timeout=2)  # reconnects by itself after Redis comes back
        while not self._stop.wait(every_s):
            now = time.time() * 1000
            for job, jid in list(self.jobs.items()):
                try:
                    latest = (self.stack.flink.rest(f"/jobs/{jid}/checkpoints").get("latest") or {}).get("completed") or {}
                    if job not in self.state_backends:
                        self.state_backends[job] = self.stack.flink.rest(f"/jobs/{jid}/checkpoints/config").get("state_backend", "?")
                except Exception:  # the job restarting, the cluster mid-repair: next time
                    continue
                if latest:
                    self.checkpoints.append({"job": job, "at_ms": now, "bytes": latest.get("state_size") or latest.get("checkpointed_size", 0)})
            self.disk.append({"at_ms": now, **disk_usage(self.s.run_dir)})
            services = [service for service in self.stack.status() if service.rss_mb is not None]
            for service in services:
                self.memory.append({"service": service.name, "at_ms": now, "mb": service.rss_mb})
            whole = sum(service.rss_mb for service in services if not service.name.startswith("taskmanager"))  # flink's counts them
            self.memory.append({"service": "whole stack", "at_ms": now, "mb": round(whole, 1)})
            try:
                info = redis.info("memory")
                self.memory.append({"service": "redis used_memory", "at_ms": now, "mb": round(info["used_memory"] / 2**20, 1)})
            except Exception:  # Redis stopped by a fault
                pass

    # the whole run

    def run(self) -> dict:
        from mailroom.demo import ensure_champions
        from mailroom.stack import Kafka

        self.out.mkdir(parents=True, exist_ok=True)
        self.stack.up(with_flink=True)
        self._claim_the_cluster()
        ensure_champions(self.s)
        Kafka(self.s).create_topics()
        docs, bad = self._documents()
        truth = {d["doc_id"]: d["label"] for d in docs}
        duration_s = (len(docs) + len(bad)) / self.config.rate
        faults = schedule(self.config.faults, duration_s, self.config.seed)
        console.print(f"[bold]{self.run_id}[/bold]: {len(docs):,} documents ({sum(d['content_type'].upper() == 'IMAGE' for d in docs):,} "
                      f"scans) and {len(bad)} unreadable messages at {self.config.rate:g}/s (~{duration_s / 60:.0f} min) on "
                      f"{self.stack.flink.taskmanagers} TaskManagers x {self.stack.flink.slots} slots; faults: "
                      + ", ".join(f"{f.kind} at {f.at_s:.0f} s" for f in faults))
        retrainer = None
        watcher = OutputWatcher(self.s, self.books, truth, self.config.verdict_share, self.config.seed)
        threads = [threading.Thread(target=self._supervise, daemon=True), threading.Thread(target=self._sample_resources, daemon=True)]
        started_ms = time.time() * 1000
        try:
            for job in JOBS:
                self.jobs[job] = self._submit(job)
            from mailroom.submit import start_job

            retrainer = start_job(self.s, "mailroom.cli", ["retrainer"], self.out / "retrainer.log")
            watcher.start()
            for thread in threads:
                thread.start()
            sender = threading.Thread(target=self._send, args=(docs, bad, watcher), daemon=True)
            started_ms = time.time() * 1000
            sender.start()
            for fault in faults:
                while time.time() * 1000 < started_ms + fault.at_s * 1000 and sender.is_alive():
                    time.sleep(0.5)
                console.print(f"[bold red]fault[/bold red] {fault.kind} at {(time.time() * 1000 - started_ms) / 1000:.0f} s")
                self.struck.append(self._strike(fault, docs))
            sender.join()
            self._drain(watcher)
        finally:
            self._stop.set()
            watcher.stop()
            try:
                self.stack.flink.cancel_all()
            except Exception as exc:  # the cluster itself gone: nothing left to cancel
                console.print(f"[yellow]cancelling the jobs: {type(exc).__name__}: {exc}[/yellow]")
            if retrainer is not None:
                from mailroom.submit import stop_job

                stop_job(retrainer)
        report = self._report(watcher, started_ms)
        if not self.config.keep_topics:
            self._delete_topics()
        return report

    def _claim_the_cluster(self) -> None:
        """The soak's jobs need every slot of the cluster it declares: jobs already running there (another soak's,
        a submission that outlived its caller) are cancelled with `cancel_running`, else the run is refused."""
        running = self.stack.flink.unfinished_jobs()
        if not running:
            return
        names = ", ".join(f"{job['name']} ({job['jid'][:8]}, {job['state']})" for job in running)
        if not self.config.cancel_running:
            raise SoakRefused(f"the session cluster already runs {len(running)} job(s): {names}. The soak needs their slots: "
                              "cancel them in the Flink web UI, or run again with --cancel-running")
        self.stack.flink.cancel_all()
        console.print(f"cancelled the cluster's running jobs: {names}")

    def _delete_topics(self) -> None:
        """The run's topics and grants go: a soak writes gigabytes the next run does not read."""
        from mailroom.kafkautil import delete_topics, revoke
        from schemas.topics import TOPICS

        delete_topics(self.s, [t.name(self.s.topic_prefix) for t in TOPICS])
        revoke(self.s, lambda name: name.startswith(self.s.topic_prefix))
        console.print(f"deleted the topics {self.s.topic_prefix}* (--keep-topics keeps them)")

    def _drain(self, watcher: OutputWatcher) -> None:
        """Wait until every document and bad record is accounted for, sending the last verdicts, or until nothing
        has moved for `drain_timeout_s`."""
        from mailroom.kafkautil import producer

        out, topic = producer(self.s), topic_name("ground_truth", self.s.topic_prefix)
        last, moved = None, time.monotonic()
        while True:
            self._send_verdicts(out, topic, watcher)
            figures = self.books.figures()
            now = (figures["delivered_once"], figures["dead_lettered_once"], sum(self.books.labelled.values()))
            if figures["delivered_once"] + figures["duplicated"] >= figures["documents_sent"] and \
                    figures["dead_lettered_once"] >= figures["bad_records_sent"] and figures["labelled_missing"] == 0:
                break
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > self.config.drain_timeout_s:
                console.print(f"[yellow]nothing moved for {self.config.drain_timeout_s:.0f} s: reporting what arrived[/yellow]")
                break
            time.sleep(2)
        out.flush()
        out.close()
        time.sleep(10)  # a last checkpoint interval or two: duplicates would show here

    def _report(self, watcher: OutputWatcher, started_ms: float) -> dict:
        for struck, following in zip(self.struck, [*self.struck[1:], None]):
            struck.pause_s = longest_pause_after(struck.started_ms, watcher.arrivals_ms)
            struck.caught_up_s = caught_up_after(struck.started_ms, watcher.arrivals_ms, watcher.latencies_ms,
                                                 following.started_ms if following else float("inf"))
        figures = self.books.figures()
        disk = disk_usage(self.s.run_dir)
        report = {"run_id": self.run_id, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
                  "books": figures, "faults": [asdict(s) for s in self.struck],
                  "checkpoints": self.checkpoints, "checkpoint_peak_bytes": peaks(self.checkpoints, "job", "bytes"),
                  "state_backends": self.state_backends, "disk": self.disk, "run_dir_bytes": sum(disk.values()), "run_dir_by_folder": disk,
                  "disk_peak_bytes": max((sum(v for k, v in d.items() if k != "at_ms") for d in self.disk), default=sum(disk.values())),
                  "memory": self.memory, "memory_peak_mb": peaks(self.memory, "service", "mb"),
                  "out_per_second": per_second(watcher.arrivals_ms, started_ms), "started_ms": started_ms,
                  "latency_p50_per_10s": latency_per_window(watcher.arrivals_ms, watcher.latencies_ms, started_ms),
                  "latency_ms": {q: round(float(np.percentile(watcher.latencies_ms, q)), 0) for q in (50, 99)} if watcher.latencies_ms else {},
                  "passed": figures["lost"] == 0 and figures["duplicated"] == 0 and figures["labelled_twice"] == 0}
        (self.out / "soak.json").write_text(json.dumps(report, indent=2))
        _plot(report, self.out / "soak.png")
        _print(report, self.out)
        return report


def _plot(report: dict, path: Path) -> None:
    """Documents out per second with the faults marked; below, the run directory's disk use by folder and each
    job's checkpoint size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, disk_ax) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 2))
    counts = np.asarray(report["out_per_second"], dtype=float)
    smooth = np.convolve(counts, np.ones(5) / 5, mode="same") if counts.size >= 5 else counts  # exactly-once output comes per checkpoint
    ax.plot(range(counts.size), smooth, lw=1.0, color="tab:blue", label="5 s mean")
    for fault in report["faults"]:
        start = (fault["started_ms"] - report["started_ms"]) / 1000
        end = max((fault["ended_ms"] - report["started_ms"]) / 1000, start + 1)
        ax.axvspan(start, end, color="tab:red", alpha=0.25)
        ax.annotate(fault["kind"], (start, ax.get_ylim()[1] * 0.95), rotation=90, fontsize=7, va="top")
    latency = [(10 * i + 5, v) for i, v in enumerate(report.get("latency_p50_per_10s", [])) if v is not None]
    if latency:
        late = ax.twinx()
        late.plot(*zip(*latency), color="tab:orange", lw=1.0, label="median latency (s, per 10 s)")
        late.set(ylabel="receipt to department, s", ylim=(0, None))
        late.legend(loc="upper right", fontsize=7)
    ax.set(ylabel="documents into department topics / s", ylim=(0, None),
           title=f"{report['run_id']}: lost {report['books']['lost']}, duplicated {report['books']['duplicated']}")
    seconds = lambda samples: [(x["at_ms"] - report["started_ms"]) / 1000 for x in samples]  # noqa: E731
    folders = sorted({k for d in report["disk"] for k in d if k != "at_ms"}, key=lambda k: -max(d.get(k, 0) for d in report["disk"]))
    if report["disk"]:
        disk_ax.stackplot(seconds(report["disk"]), *[[d.get(k, 0) / 2**30 for d in report["disk"]] for k in folders[:6]],
                          labels=folders[:6], alpha=0.6)
    checkpoints = disk_ax.twinx()
    for job in sorted({c["job"] for c in report["checkpoints"]}):
        samples = [c for c in report["checkpoints"] if c["job"] == job]
        checkpoints.plot(seconds(samples), [c["bytes"] / 2**20 for c in samples], lw=1.2, label=f"checkpoint: {job}")
    disk_ax.set(xlabel="seconds since the first document", ylabel="run directory GiB (by folder)", ylim=(0, None))
    checkpoints.set(ylabel="checkpoint MiB", ylim=(0, None))
    disk_ax.legend(loc="upper left", fontsize=7)
    checkpoints.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print(report: dict, out: Path) -> None:
    books = report["books"]
    table = Table(title=f"{report['run_id']}: the books")
    table.add_column("count")
    table.add_column("value", justify="right")
    for key, value in books.items():
        table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, dict) else f"{value:,}")
    console.print(table)
    faults = Table(title="faults")
    for column in ("fault", "at s", "took s", "output paused s", "caught up s", "what"):
        faults.add_column(column)
    for fault in report["faults"]:
        faults.add_row(fault["kind"], f"{(fault['started_ms'] - report['started_ms']) / 1000:.0f}",
                       f"{(fault['ended_ms'] - fault['started_ms']) / 1000:.1f}", str(fault["pause_s"]), str(fault["caught_up_s"]), fault["detail"])
    console.print(faults)
    latency = report["latency_ms"]
    if latency:
        console.print(f"receipt to a department topic: p50 {latency[50] / 1000:.1f} s, p99 {latency[99] / 1000:.1f} s (caught up: the "
                      "backlog a fault left cleared, documents within 10 s of their receipt again)")
    resources = Table(title="resources (peaks over the run)")
    for column in ("what", "peak", "note"):
        resources.add_column(column)
    for job, size in report["checkpoint_peak_bytes"].items():
        resources.add_row(f"checkpoint: {job}", f"{size / 2**20:,.1f} MB", f"state backend {report['state_backends'].get(job, '?')}")
    for service, mb in report["memory_peak_mb"].items():
        resources.add_row(f"memory: {service}", f"{mb:,.0f} MB", MEMORY_CAPS.get(service.split(" ")[0] if service.startswith("taskmanager") else service, ""))
    resources.add_row("disk: run directory", f"{report['disk_peak_bytes'] / 2**20:,.0f} MB", "at the end: " + ", ".join(
        f"{k} {v / 2**20:,.0f} MB" for k, v in sorted(report["run_dir_by_folder"].items(), key=lambda kv: -kv[1])[:4]))
    console.print(resources)
    console.print(f"{'[green]passed[/green]' if report['passed'] else '[red]failed[/red]'}: lost {books['lost']}, duplicated "
                  f"{books['duplicated']}; report {out / 'soak.json'}, plot {out / 'soak.png'}; run directory "
                  f"{report['run_dir_bytes'] / 2**20:,.0f} MB")


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def _cmd(args, settings: Settings) -> int:
    config = SoakConfig(docs=args.docs, rate=args.rate, scan_share=args.scan_share, verdict_share=args.verdict_share, seed=args.seed,
                        taskmanagers=args.taskmanagers, slots=args.slots, faults=tuple(args.faults), redis_outage_s=args.redis_outage_s,
                        out=args.out, keep_topics=args.keep_topics, cancel_running=args.cancel_running)
    if config.taskmanagers < 2:
        console.print("[red]error:[/red] a soak needs at least two TaskManagers (--taskmanagers 2): one of them is killed")
        return 2
    signal.signal(signal.SIGTERM, _interrupted)  # a stop like Ctrl-C's: the jobs are cancelled, the retrainer stopped
    try:
        report = Soak(settings, config).run()
    except SoakRefused as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    shutil.rmtree(settings.run_dir / "savepoints", ignore_errors=True)
    return 0 if report["passed"] else 1


def register(sub) -> None:
    parser = sub.add_parser("soak", help="the whole pipeline on the session cluster under seeded faults; then the books",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SoakConfig()
    parser.add_argument("--docs", type=int, default=d.docs, help="documents to send (default %(default)s: about 21 min at the default rate)")
    parser.add_argument("--rate", type=float, default=d.rate, help="documents per second offered (default %(default)s)")
    parser.add_argument("--scan-share", type=float, default=d.scan_share, help="share of scans (default %(default)s; each is read by OCR)")
    parser.add_argument("--verdict-share", type=float, default=d.verdict_share, help="share of delivered documents the departments "
                        "send a verdict on (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="the generator's and the fault schedule's seed (default %(default)s)")
    parser.add_argument("--taskmanagers", type=int, default=d.taskmanagers, help="TaskManagers of the session cluster (default %(default)s)")
    parser.add_argument("--slots", type=int, default=d.slots, help="slots per TaskManager (default %(default)s: three jobs, one TaskManager down)")
    parser.add_argument("--faults", nargs="*", choices=FAULTS, default=list(FAULTS), metavar="F",
                        help=f"faults to inject, once each (default all: {', '.join(FAULTS)}); none for a clean run")
    parser.add_argument("--redis-outage-s", type=float, default=d.redis_outage_s, help="how long Redis stays down (default %(default)s)")
    parser.add_argument("--cancel-running", action="store_true", help="cancel the jobs the session cluster already runs "
                        "(default: refuse to start beside them: the soak needs every slot)")
    parser.add_argument("--keep-topics", action="store_true", help="leave the run's topics on the broker (default: deleted after the report)")
    parser.add_argument("--out", type=Path, default=d.out, help="report directory (default %(default)s)")
    parser.set_defaults(func=_cmd)
