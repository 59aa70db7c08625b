"""`mailroom bench`: Mailroom's throughput, latency, CPU and memory against its limit and a hand-written peer.

Every variant runs over the same generated documents (models.generator: `--docs`, `--scan-share`):

| variant  | what runs                                                                                   |
|----------|---------------------------------------------------------------------------------------------|
| limit    | the champions in onnxruntime, in batches of ScoringConfig.batch_size, inputs precomputed    |
| router   | `jobs.router --bounded` over a pre-filled documents topic: text-only, then scans-only       |
| peer     | what a user would write instead: a kafka-python loop (`PeerScorer`) from the routed topics  |
|          | to the department topics + predictions; at-least-once, sender state in a dict, p processes  |
| mailroom | `jobs.scoring` on the embedded MiniCluster at `--parallelism p`: exactly-once, checkpointed |

How it measures (one Flink job at a time: the machines here have 2 cores):
- throughput: over a pre-filled backlog, records per second between the 10th and 90th
  percentile of the records' own processing timestamps (`scored_ms` of predictions,
  `routed_ms` of routed documents): job start-up, stragglers and the last commit are left out.
- latency: then a paced producer offers half that rate, stamping `received_ms` at send time;
  latency = arrival at a read_committed consumer of the department topics - `received_ms`, so
  Mailroom's figures include the wait for the checkpoint that commits its transactions.
- CPU seconds and peak RSS: psutil samples of the variant's process trees (the job's Python
  client, its JVM and any Python workers; the peer's processes). The broker is not counted.

Peer and mailroom read the same routed documents, routed beforehand in plain Python by
udfs.routing (the router job is measured on its own). Each variant gets a fresh topic prefix,
deleted afterwards, and its own run directory (checkpoints) under the output directory. The
scoring job mirrors sender features into the stack's Redis, as it does in production.

`python -m mailroom.bench --group-id G` runs one peer process (topics from the environment,
as `mailroom.submit.job_command` sets it).
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import io
import json
import math
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from config.settings import PROJECT_DIR, Settings
from schemas.labels import DEPARTMENTS
from schemas.topics import BY_KEY, TOPICS, department_topic_key, topic_name
from schemas import codec

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

VARIANTS = ("limit", "router", "peer", "mailroom")
DOCS, QUICK_DOCS = 12_000, 400
PACED_S, QUICK_PACED_S = 20.0, 5.0  # how long the paced producer offers load
ROUTER_TEXT_DOCS, QUICK_ROUTER_TEXT_DOCS = 20_000, 2_000  # text documents are repeated up to this many (the router is fast on text)
PACED_PREFIX = "paced-"  # doc_id prefix of the paced phase's documents
LIMIT_SECONDS = 3.0


class BenchError(RuntimeError):
    """A variant could not be measured; the message says why and where the log is."""


# --- figures ---------------------------------------------------------------------------------


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
class Usage:
    """Samples of a process tree: (epoch s, its cumulative CPU s, its resident MB, the whole
    machine's cumulative busy CPU s: others' work on a shared machine shows there)."""

    samples: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def cpu_s(self) -> float | None:
        return round(self.samples[-1][1] - self.samples[0][1], 1) if self.samples else None

    @property
    def peak_rss_mb(self) -> float | None:
        return round(max(s[2] for s in self.samples), 1) if self.samples else None

    @property
    def own_cores(self) -> float | None:
        """Cores the process trees used on average, from the first sample to the last."""
        if len(self.samples) < 2:
            return None
        return round(self.cpu_s / (self.samples[-1][0] - self.samples[0][0]), 2)

    @property
    def machine_busy_cores(self) -> float | None:
        """Cores busy on average, machine-wide, from the first sample to the last."""
        if len(self.samples) < 2:
            return None
        (start, *_, busy_start), (end, *_, busy_end) = self.samples[0], self.samples[-1]
        return round((busy_end - busy_start) / (end - start), 2)

    def cpu_between(self, start_s: float, end_s: float) -> float:
        """CPU seconds used between two instants (interpolated between samples)."""
        import numpy as np

        times, cpu = [s[0] for s in self.samples], [s[1] for s in self.samples]
        return float(np.interp(end_s, times, cpu) - np.interp(start_s, times, cpu))


class TreeSampler:
    """Samples CPU time and RSS of process trees (each root and its descendants) in a thread."""

    def __init__(self, pids: list[int], interval_s: float = 0.25):
        import psutil

        self.roots = [psutil.Process(pid) for pid in pids]
        self.interval_s = interval_s
        self.usage = Usage()
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> latest CPU s, so exited children still count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        rss = 0
        for root in self.roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    cpu = proc.cpu_times()
                    self._cpu[(proc.pid, proc.create_time())] = cpu.user + cpu.system
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        self.usage.samples.append((time.time(), sum(self._cpu.values()), rss / 2**20, busy))


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

    @property
    def label(self) -> str:
        return f"{self.variant} {self.input}" + (f" p{self.parallelism}" if self.parallelism else "")


def _head_to_head(results: list[Result]) -> dict[int, tuple[float, float]]:
    """parallelism -> (mailroom docs/s, peer docs/s), for each parallelism both ran at."""
    rates = {(r.variant, r.parallelism): r.docs_per_s for r in results if r.docs_per_s}
    both = sorted(p for variant, p in rates if variant == "mailroom" and ("peer", p) in rates)
    return {p: (rates["mailroom", p], rates["peer", p]) for p in both}


def goal(results: list[Result]) -> dict[str, float]:
    """Mailroom's sustained throughput over the peer's, per parallelism both ran at."""
    return {f"p{p}": round(mailroom / peer, 2) for p, (mailroom, peer) in _head_to_head(results).items()}


def goal_line(results: list[Result]) -> str:
    pairs = _head_to_head(results)
    if not pairs:
        return "Goal line: needs the peer and mailroom at the same parallelism."
    parts = [f"{mailroom / peer:.2f}x at p{p} ({mailroom:,.0f} vs {peer:,.0f} docs/s)" for p, (mailroom, peer) in pairs.items()]
    return ("Goal: Mailroom's scoring job sustains " + ", ".join(parts) + " the throughput of the hand-written peer, Kafka in to "
            "Kafka out - and gives exactly-once output and checkpointed sender state, which the peer lacks (it auto-commits "
            "offsets, loses its state on restart, and at p>1 splits each sender's history across processes).")


def report(results: list[Result], meta: dict, errors: list[str]) -> dict:
    """Everything the JSON file holds."""
    return {**meta, "results": [{"label": r.label, **asdict(r)} for r in results], "goal": goal(results), "errors": errors}


def table(results: list[Result]) -> Table:
    out = Table(title="mailroom bench", caption=goal_line(results) + "\ncores own/all: the variant's processes / the whole machine "
                "(2 cores); a gap well above the broker's and the bench's share means someone else was busy too.", caption_justify="left")
    columns = ("variant", "input", "p", "docs", "docs/s", "offered/s", "p50 ms", "p95 ms", "p99 ms", "CPU s", "CPU ms/doc", "peak RSS MB", "cores own/all")
    for name in columns:
        out.add_column(name, justify="left" if name in ("variant", "input") else "right")

    def num(value, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    for r in results:
        latency = r.latency_ms or {}
        out.add_row(r.variant, r.input, num(r.parallelism), f"{r.docs:,}", num(r.docs_per_s), num(r.offered_per_s), num(latency.get("p50")), num(latency.get("p95")),
                    num(latency.get("p99")), num(r.cpu_s, 1), num(r.cpu_ms_per_doc, 2), num(r.peak_rss_mb),
                    "-" if r.own_cores is None else f"{r.own_cores:.1f}/{r.machine_busy_cores:.1f}")
    return out


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


# --- the peer --------------------------------------------------------------------------------


class PeerScorer:
    """The hand-written peer's logic: decode, sender features (a dict of SenderHistory),
    micro-batches of `config.batch_size` or `config.max_batch_delay_ms`, BatchScorer.

    `add` and `flush` return (department, encoded prediction) pairs to send. The decided label
    feeds the sender's history at once (the Flink job reads it back from the predictions topic).
    """

    def __init__(self, config, scorer=None):
        from udfs.scoring import BatchScorer, SenderFeatures

        self.config = config
        self.scorer = scorer if scorer is not None else BatchScorer(config)
        self.features = SenderFeatures(mirror=None)
        self.histories: dict = {}
        self.pending: list = []
        self.oldest_ms: int | None = None

    def add(self, value: bytes, now_ms: int) -> list[tuple[str, bytes]]:
        from models.features import SenderHistory

        routed = codec.decode(value, expected="routed_document").record
        history = self.histories.get(routed["sender"])
        if history is None:
            history = self.histories[routed["sender"]] = SenderHistory()
        self.pending.append(self.features.observe(history, routed))
        if self.oldest_ms is None:
            self.oldest_ms = now_ms
        return self.flush(now_ms) if len(self.pending) >= self.config.batch_size else []

    def wait_ms(self, now_ms: int, idle_ms: int = 100) -> int:
        """How long to wait for input before the pending batch is due."""
        if self.oldest_ms is None:
            return idle_ms
        return max(0, self.oldest_ms + self.config.max_batch_delay_ms - now_ms)

    def flush(self, now_ms: int) -> list[tuple[str, bytes]]:
        batch, self.pending, self.oldest_ms = self.pending, [], None
        if not batch:
            return []
        scored = self.scorer.score(batch, now_ms)
        for doc, (_, prediction) in zip(batch, scored):
            self.histories[doc.sender].record_label(codec.decode(prediction, expected="prediction").record["label"])
        return scored


def peer_main(argv: list[str] | None = None) -> int:
    """One peer process: routed topics -> PeerScorer -> department topics + predictions, until SIGTERM."""
    from kafka import KafkaConsumer

    from mailroom.kafkautil import producer
    from udfs.scoring import ScoringConfig

    parser = argparse.ArgumentParser(prog="python -m mailroom.bench", description=peer_main.__doc__)
    parser.add_argument("--group-id", required=True, help="consumer group (processes of one peer share it)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    fast_kafka_crc()
    prefix = settings.topic_prefix
    scorer = PeerScorer(ScoringConfig.from_registry(settings.registry_dir))
    departments = {dept: topic_name(department_topic_key(label), prefix) for label, dept in DEPARTMENTS.items()}
    predictions = topic_name("predictions", prefix)
    consumer = KafkaConsumer(topic_name("routed_text", prefix), topic_name("routed_scans", prefix), bootstrap_servers=settings.bootstrap_servers,
                             group_id=args.group_id, auto_offset_reset="earliest", enable_auto_commit=True)
    out = producer(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where is it stuck?

    def send(scored: list[tuple[str, bytes]]) -> None:
        for department, prediction in scored:
            out.send(departments[department], prediction)
            out.send(predictions, prediction)

    while not stopping.is_set():
        for records in consumer.poll(timeout_ms=scorer.wait_ms(_now_ms()), max_records=scorer.config.batch_size).values():
            for record in records:
                send(scorer.add(record.value, _now_ms()))
        if scorer.wait_ms(_now_ms()) == 0:
            send(scorer.flush(_now_ms()))
    send(scorer.flush(_now_ms()))
    out.flush()
    out.close()
    consumer.close()
    return 0


def fast_kafka_crc() -> None:
    """Give kafka-python a C CRC-32C when the `crc32c` package is missing (drop this once it is locked).

    Without it, kafka-python checksums every record batch it writes or reads in pure Python,
    ~12 MB/s here: ~7 ms per routed scan, as long as scoring it. crcmod's C extension (installed
    with apache-beam) computes the same checksum at ~500 MB/s.
    """
    import kafka.record.default_records as records
    import kafka.record.util as util

    if util.crc32c_c is not None:
        return
    try:
        import crcmod._crcfunext  # noqa: F401  (only the C extension is worth it)
        from crcmod.predefined import mkCrcFun
    except ImportError:
        return
    records.calc_crc32c = mkCrcFun("crc-32c")


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the documents ---------------------------------------------------------------------------


@dataclass
class Corpus:
    """The generated documents and their routed forms (topic key, routed_document bytes)."""

    documents: list[dict]
    routed: list[tuple[str, bytes]]

    @property
    def scan_share(self) -> float:
        return sum(key == "routed_scans" for key, _ in self.routed) / max(1, len(self.routed))


def build_corpus(n: int, seed: int, scan_share: float) -> Corpus:
    """`n` generated documents, routed by udfs.routing in plain Python (what the router job does)."""
    from mailroom.produce import to_document
    from models.generator import generate
    from udfs.routing import Destination, Router, RouterConfig

    with console.status(f"generating {n:,} documents (seed {seed}, scan share {scan_share:.0%})"):
        documents = generate(n, seed=seed, scan_share=scan_share)
    router, now = Router(RouterConfig()), _now_ms()
    routed = []
    for offset, doc in enumerate(tqdm(documents, desc="routing (plain Python)", unit="doc")):
        result = router.route(codec.encode("document", to_document(doc, doc["received_ms"])), "bench", 0, offset, now)
        if result.destination is not Destination.DEAD_LETTER:
            routed.append((result.destination.value, result.value))
    return Corpus(documents, routed)


# --- variants --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one `mailroom bench` run does and where it writes."""

    settings: Settings
    corpus: Corpus
    out_dir: Path
    run_id: str
    parallelism: tuple[int, ...]
    paced_s: float
    router_text_docs: int

    @property
    def log_dir(self) -> Path:
        return self.out_dir / "logs"


@contextmanager
def scratch(run: Run, name: str) -> Iterator[Settings]:
    """Settings of one variant: its own topics (a fresh prefix, deleted afterwards) and run directory."""
    from mailroom.kafkautil import delete_topics
    from mailroom.stack import Kafka

    settings = replace(run.settings, topic_prefix=f"bench-{run.run_id}-{name}.", run_dir=run.out_dir / "run" / name)
    settings = replace(settings, flink_rest_port=_free_flink_port(settings))
    Kafka(settings).create_topics()
    try:
        yield settings
    finally:
        delete_topics(settings, [t.name(settings.topic_prefix) for t in TOPICS])
        shutil.rmtree(settings.run_dir, ignore_errors=True)  # checkpoints


def _free_flink_port(settings: Settings) -> int:
    """A flink_rest_port whose embedded jobs' web UI ports are free: the bench's jobs must not
    collide with a job someone runs beside them on the default ports."""
    from config.flinkconf import embedded_ui_port
    from mailroom.stack import port_free

    for base in range(settings.flink_rest_port + 500, settings.flink_rest_port + 1500, 100):
        trial = replace(settings, flink_rest_port=base)
        if all(port_free(settings.host, embedded_ui_port(trial, job)) for job in ("router", "scoring")):
            return base
    raise BenchError(f"no free ports for the jobs' web UI above {settings.flink_rest_port + 500}")


def _await_group_exit(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Wait until no process of a finished job's process group (its JVM too) is left, so the
    next job finds its ports free."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # signal 0: only asks whether the group still exists
        except ProcessLookupError:
            return
        time.sleep(0.2)


def run_limit(run: Run) -> Result:
    """onnxruntime alone: every routed document's model inputs precomputed (SenderFeatures.observe
    computes a scan's layout features), scored batch by batch."""
    from models.bench import _rate
    from models.modelio import onnx_feeds
    from models.features import normalise_text
    from udfs.scoring import BatchScorer, ScoringConfig

    config = ScoringConfig.from_registry(run.settings.registry_dir)
    scorer = BatchScorer(config)
    pending = _pending_documents(run.corpus)
    calls = []  # (session, feeds) of every batch
    for model, kind in ((scorer.text, "TEXT"), (scorer.image, "IMAGE")):
        docs = [p for p in pending if p.content_type == kind]
        for start in range(0, len(docs), config.batch_size):
            chunk = docs[start:start + config.batch_size]
            inputs = {"context": [p.features for p in chunk]}
            if kind == "TEXT":
                inputs["text"] = [normalise_text(p.text) for p in chunk]
            else:
                inputs["image_features"] = [p.image_features for p in chunk]
            calls.append((model.session, onnx_feeds(model.kind, inputs)))
    passes = 0

    def score_all() -> None:
        nonlocal passes
        passes += 1
        for session, feeds in calls:
            session.run(["label", "probabilities"], feeds)

    cpu = time.process_time()
    with console.status("limit: onnxruntime batches"):
        rate = _rate(score_all, len(pending), LIMIT_SECONDS)
    cpu_ms_per_doc = (time.process_time() - cpu) * 1000 / (passes * len(pending))
    return Result("limit", _mixed(run.corpus), None, len(pending), round(rate["docs_per_s"]), cpu_ms_per_doc=round(cpu_ms_per_doc, 3))


def _pending_documents(corpus: Corpus) -> list:
    """The routed documents with their sender features, as the scorer receives them."""
    from models.features import SenderHistory
    from udfs.scoring import SenderFeatures

    features, histories = SenderFeatures(mirror=None), {}
    pending = []
    for _, value in tqdm(corpus.routed, desc="limit: model inputs", unit="doc"):
        routed = codec.decode(value, expected="routed_document").record
        pending.append(features.observe(histories.setdefault(routed["sender"], SenderHistory()), routed))
    return pending


def run_router(run: Run, kind: str) -> Result:
    """jobs.router --bounded over a pre-filled documents topic holding only texts or only scans."""
    from mailroom.kafkautil import read_topic
    from mailroom.produce import DocumentProducer, plan, to_document
    from mailroom.submit import start_job, stop_job

    is_scan = kind == "scans"
    docs = [d for d in run.corpus.documents if (d["content_type"] == "image") == is_scan]
    copies = 1 if is_scan else max(1, math.ceil(run.router_text_docs / max(1, len(docs))))
    candidates = [(f"{d['doc_id']} copy {k}", to_document({**d, "doc_id": f"{d['doc_id']}-{k}"}, d["received_ms"]))
                  for k in range(copies) for d in docs]
    name = f"router-{kind}"
    with scratch(run, name) as settings:
        with DocumentProducer(settings) as producer:
            sent = producer.send_plan(plan(candidates))
        if sent.failed or sent.refused:
            raise BenchError(f"{name}: {len(sent.failed)} documents not acknowledged, {len(sent.refused)} refused")
        log = run.log_dir / f"{name}.log"
        started = time.time()
        proc = start_job(settings, "jobs.router", ["--bounded", "--parallelism", "1", "--group-id", settings.topic_prefix + "group"], log,
                         log_dir=log.with_suffix(""))
        timeout_s = 300 + sent.sent / 20
        with TreeSampler([proc.pid]) as sampler, console.status(f"{name}: jobs.router --bounded over {sent.sent:,} documents"):
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_job(proc)
                raise BenchError(f"{name}: the job did not finish within {timeout_s:.0f} s; see {log}") from None
        wall = time.time() - started
        _await_group_exit(proc)
        if returncode:
            raise BenchError(f"{name}: the job exited with {returncode}; see {log}")
        records = read_topic(settings, topic_name("routed_scans" if is_scan else "routed_text", settings.topic_prefix), min_count=sent.sent)
    times = [codec.decode(r.value, expected="routed_document").record["routed_ms"] for r in records]
    if len(times) != sent.sent:
        raise BenchError(f"{name}: {sent.sent:,} documents in, {len(times):,} routed out; see {log}")
    window = sustained_window(times)
    return _result("router", kind, 1, times, window, sampler.usage, started, wall_s=round(wall, 1))


def run_stream(run: Run, variant: str, parallelism: int) -> Result:
    """The peer or the scoring job: sustained rate over the routed backlog, then latency at half of it."""
    from mailroom.submit import stop_job

    name = f"{variant}-p{parallelism}"
    with scratch(run, name) as settings:
        _send_backlog(settings, run.corpus, name)
        log = run.log_dir / f"{name}.log"
        with OutputWatcher(settings) as watcher:
            started = time.time()
            procs = _start(settings, variant, parallelism, log)
            try:
                with TreeSampler([p.pid for p in procs]) as sampler:
                    n = len(run.corpus.routed)
                    _await(watcher, "backlog", n, procs, log, f"{name}: backlog")
                    window = sustained_window(a.scored_ms for a in watcher.arrivals["backlog"].values())
                    if window is None:
                        raise BenchError(f"{name}: the backlog was scored too fast to time; use more --docs")
                    sent, offered = _pace(settings, run.corpus, window.rate / 2, run.paced_s, name)
                    _await(watcher, "paced", sent, procs, log, f"{name}: paced")
            except BenchError:
                if variant == "peer":  # its threads' stacks into its log (faulthandler, see peer_main)
                    for proc in procs:
                        proc.send_signal(signal.SIGUSR1)
                    time.sleep(1)
                raise
            finally:
                for proc in procs:
                    stop_job(proc)
                    _await_group_exit(proc)
        backlog, paced = list(watcher.arrivals["backlog"].values()), list(watcher.arrivals["paced"].values())
    result = _result(variant, _mixed(run.corpus), parallelism, [a.scored_ms for a in backlog], window, sampler.usage, started)
    result.offered_per_s = round(offered)
    result.latency_ms = percentiles(a.arrived_ms - a.received_ms for a in paced)
    result.scored_latency_ms = percentiles(a.scored_ms - a.received_ms for a in paced)
    return result


def _result(variant: str, input_: str, parallelism: int, times_ms: list[int], window: Window | None, usage: Usage, started: float,
            **extra) -> Result:
    cpu_ms_per_doc = None
    if window is not None and len(usage.samples) > 1:
        cpu_ms_per_doc = round(usage.cpu_between(window.start_ms / 1000, window.end_ms / 1000) * 1000 / window.records, 2)
    return Result(variant, input_, parallelism, len(times_ms), round(window.rate) if window else None, cpu_s=usage.cpu_s,
                  cpu_ms_per_doc=cpu_ms_per_doc, peak_rss_mb=usage.peak_rss_mb, first_output_s=round(min(times_ms) / 1000 - started, 1),
                  own_cores=usage.own_cores, machine_busy_cores=usage.machine_busy_cores, **extra)


def _mixed(corpus: Corpus) -> str:
    return f"mixed {corpus.scan_share:.0%} scans"


def _send_backlog(settings: Settings, corpus: Corpus, name: str) -> None:
    from mailroom.kafkautil import producer

    out = producer(settings, batch_size=2**20)
    with tqdm(total=len(corpus.routed), desc=f"{name}: pre-filling routed topics", unit="doc") as bar:
        futures = [out.send(topic_name(key, settings.topic_prefix), value).add_both(lambda _: bar.update(1)) for key, value in corpus.routed]
        out.flush()
    out.close()
    if any(f.failed() for f in futures):
        raise BenchError(f"{name}: the broker did not acknowledge {sum(f.failed() for f in futures)} routed documents")


def _start(settings: Settings, variant: str, parallelism: int, log: Path) -> list[subprocess.Popen]:
    from mailroom.submit import start_job

    group = settings.topic_prefix + "group"  # unique per run, like the topics
    if variant == "mailroom":
        return [start_job(settings, "jobs.scoring", ["--parallelism", str(parallelism), "--group-id", group], log, log_dir=log.with_suffix(""))]
    return [start_job(settings, "mailroom.bench", ["--group-id", group], log) for _ in range(parallelism)]


def _await(watcher: "OutputWatcher", phase: str, n: int, procs: list[subprocess.Popen], log: Path, desc: str, stall_s: float = 120) -> None:
    """Wait until `n` documents of `phase` have arrived in the department topics; fail when the
    processes exit or nothing new arrives for `stall_s` (a job's start-up included)."""
    progress_at, done = time.monotonic(), 0
    with tqdm(total=n, desc=desc, unit="doc") as bar:
        while done < n:
            time.sleep(0.2)
            if (now_done := len(watcher.arrivals[phase])) > done:
                progress_at, done = time.monotonic(), now_done
                bar.update(done - bar.n)
            if exited := [p for p in procs if p.poll() is not None]:
                raise BenchError(f"{desc}: process {exited[0].pid} exited with {exited[0].returncode}; see {log}")
            if time.monotonic() - progress_at > stall_s:
                raise BenchError(f"{desc}: {done:,} of {n:,} documents arrived, then nothing for {stall_s:.0f} s; see {log}")


def _pace(settings: Settings, corpus: Corpus, rate: float, seconds: float, name: str) -> tuple[int, float]:
    """Send routed documents at `rate` per second for `seconds`, received_ms stamped at send time.
    Returns how many were sent and the rate actually offered."""
    from mailroom.kafkautil import producer

    records = [(key, codec.decode(value, expected="routed_document").record) for key, value in corpus.routed]
    count = max(50, round(rate * seconds))
    out = producer(settings, linger_ms=0)
    started = time.perf_counter()
    for i in tqdm(range(count), desc=f"{name}: offering {rate:,.0f} docs/s", unit="doc"):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        key, record = records[i % len(records)]
        value = codec.encode("routed_document", {**record, "doc_id": f"{PACED_PREFIX}{i:06d}", "received_ms": _now_ms()})
        out.send(topic_name(key, settings.topic_prefix), value)
    out.flush()
    offered = count / (time.perf_counter() - started)
    out.close()
    return count, offered


class Arrival(NamedTuple):
    received_ms: int
    scored_ms: int
    arrived_ms: int


class OutputWatcher:
    """Reads every department topic (read_committed) in a thread and keeps each document's first
    arrival, split into the backlog and the paced phase (doc_id prefix)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.arrivals: dict[str, dict[str, Arrival]] = {"backlog": {}, "paced": {}}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-watcher", daemon=True)

    def __enter__(self) -> "OutputWatcher":
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, isolation_level="read_committed",
                                      enable_auto_commit=False, fetch_max_wait_ms=20)
        keys = [department_topic_key(label) for label in DEPARTMENTS]
        partitions = [TopicPartition(topic_name(k, self.settings.topic_prefix), p) for k in keys for p in range(BY_KEY[k].partitions)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=100)
            arrived = _now_ms()
            for records in polled.values():
                for record in records:
                    p = codec.decode(record.value, expected="prediction").record
                    phase = "paced" if p["doc_id"].startswith(PACED_PREFIX) else "backlog"
                    self.arrivals[phase].setdefault(p["doc_id"], Arrival(p["received_ms"], p["scored_ms"], arrived))


# --- profile ---------------------------------------------------------------------------------


def profile_scoring(corpus: Corpus, config, top: int = 25) -> tuple[float, str]:
    """The peer's scoring logic over the corpus in plain Python (no Kafka): docs/s without the
    profiler, then the `top` functions by cumulative time under cProfile."""

    def score_all(scorer: PeerScorer) -> None:
        now = _now_ms()
        for _, value in corpus.routed:
            scorer.add(value, now)
        scorer.flush(now)

    started = time.perf_counter()
    score_all(PeerScorer(config))
    rate = len(corpus.routed) / (time.perf_counter() - started)
    profiler = cProfile.Profile()
    profiler.runcall(score_all, PeerScorer(config))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("cumulative").print_stats(top)
    return rate, text.getvalue()


# --- command line ----------------------------------------------------------------------------


def _check_ready(settings: Settings, needs_kafka: bool):
    """The scoring config from the registry; and Kafka answering, if needed. SystemExit otherwise."""
    from models.registry import RegistryError
    from udfs.scoring import ScoringConfig

    try:
        config = ScoringConfig.from_registry(settings.registry_dir)
    except RegistryError as exc:
        raise SystemExit(f"No champion models in {settings.registry_dir} ({exc}). Train them: `mailroom train` (`--quick`: a few seconds).")
    if needs_kafka:
        from mailroom.stack import Kafka

        if not Kafka(settings).status().running:
            raise SystemExit(f"Kafka does not answer at {settings.bootstrap_servers}. Start the stack: `mailroom stack up`.")
    return config


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 <= args.scan_share < 1:
        err.print("[red]error:[/red] --scan-share must be at least 0 and below 1")
        return 2
    docs = args.docs or (QUICK_DOCS if args.quick else DOCS)
    variants = [v for v in VARIANTS if v in args.variants]
    config = _check_ready(settings, needs_kafka=not args.profile and variants != ["limit"])
    fast_kafka_crc()
    started = time.monotonic()
    corpus = build_corpus(docs, args.seed, args.scan_share)
    if args.profile:
        rate, text = profile_scoring(corpus, config)
        console.print(f"scoring logic (decode, SenderFeatures, BatchScorer) in plain Python, {len(corpus.routed):,} documents "
                      f"({_mixed(corpus)}): {rate:,.0f} docs/s without the profiler")
        console.print(text, highlight=False, markup=False)
        return 0
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(settings, corpus, out_dir, run_id, tuple(args.parallelism or ((1,) if args.quick else (1, 2))),
              QUICK_PACED_S if args.quick else PACED_S, QUICK_ROUTER_TEXT_DOCS if args.quick else ROUTER_TEXT_DOCS)
    run.log_dir.mkdir(exist_ok=True)
    steps: list[tuple[str, Callable[[], Result]]] = []
    if "limit" in variants:
        steps.append(("limit", lambda: run_limit(run)))
    if "router" in variants:
        steps += [(f"router {kind}", lambda kind=kind: run_router(run, kind)) for kind in ("text", "scans")
                  if any((d["content_type"] == "image") == (kind == "scans") for d in corpus.documents)]
    for variant in ("peer", "mailroom"):
        if variant in variants:
            steps += [(f"{variant} p{p}", lambda variant=variant, p=p: run_stream(run, variant, p)) for p in run.parallelism]
    results, errors = [], []
    for name, step in steps:
        console.print(f"[bold]{name}[/bold]")
        try:
            results.append(step())
        except BenchError as exc:
            errors.append(str(exc))
            err.print(f"[red]{name} failed:[/red] {exc}")
    meta = {"run_id": run_id, "seconds": round(time.monotonic() - started), "docs": len(corpus.documents), "routed": len(corpus.routed),
            "seed": args.seed, "scan_share": round(corpus.scan_share, 3), "batch_size": config.batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms, "paced_s": run.paced_s,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "method": __doc__.split("How it measures")[1].split("Peer and mailroom")[0].strip()}
    (out_dir / "bench.json").write_text(json.dumps(report(results, meta, errors), indent=2))
    if results:
        plot(results, out_dir / "bench.png")
    console.print(table(results))
    console.print(f"raw figures: {out_dir / 'bench.json'}; plot: {out_dir / 'bench.png'}; logs: {run.log_dir}")
    return 1 if errors else 0


def register(sub) -> None:
    parser = sub.add_parser("bench", help="throughput, latency, CPU and memory: Mailroom vs onnxruntime alone and a hand-written peer",
                            description=__doc__.split("\n`python -m")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="Needs champion models (`mailroom train`) and, unless only limit or --profile, the stack (`mailroom stack up`).")
    parser.add_argument("--docs", type=int, metavar="N", help=f"documents to generate (default {DOCS:,}: the whole bench takes 7-8 minutes on 2 cores; --quick: {QUICK_DOCS})")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke: few documents, a short paced phase, parallelism 1")
    parser.add_argument("--scan-share", type=float, default=0.3, help="expected share of scanned documents (default %(default)s)")
    parser.add_argument("--seed", type=int, default=11, help="the generator's seed (default %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="V",
                        help=f"which variants to run, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--parallelism", nargs="+", type=int, metavar="P", help="parallelisms of peer and mailroom (default 1 2; --quick 1)")
    parser.add_argument("--profile", action="store_true", help="instead: profile the scoring logic in plain Python (cProfile, no Kafka) "
                        "and print the top functions by cumulative time")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "bench-results", help="results directory (default: %(default)s)")
    parser.set_defaults(func=_cmd)


if __name__ == "__main__":
    sys.exit(peer_main())
