"""Each variant's measurement: the limit, the router job, and the peer or the scoring job (also with
a challenger in shadow) over a routed backlog and then at a paced rate; the deploy-to-serving time
of the running scoring job; each in its own topics and run directory."""

from __future__ import annotations

import cProfile
import io
import math
import os
import re
import pstats
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

from tqdm import tqdm

from config.settings import Settings
from mailroom.kafkautil import client_config
from mailroom.bench.corpus import Corpus, pending_documents
from mailroom.bench.figures import (AT_LEAST_ONCE, CLUSTER, NO_OCR, OCR_CLI, OCR_READER, SCANS, SHADOW, STAGES, DeployFigures, Result, StageProfile, Window, deploy_timing, falling_behind, first_serving, percentiles, shadow_check,
                                    sustained_window, tuning_label)
from mailroom.bench.output import console
from mailroom.bench.peer import PeerScorer
from mailroom.bench.sampling import TreeSampler, Usage
from schemas.units import DAY_MS, now_ms
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.topics import BY_KEY, TOPICS, department_topic_key, topic_name

if TYPE_CHECKING:
    from mailroom.stack import FlinkCluster

PACED_PREFIX = "paced-"  # doc_id prefix of the paced phase's documents
LOAD_PREFIX = "load-"  # doc_id prefix of the documents scored while deploys happen
LIMIT_SECONDS = 3.0
SCORING_VARIANTS = ("mailroom", AT_LEAST_ONCE, SHADOW, NO_OCR, SCANS, CLUSTER)  # run jobs.scoring
KINDS = {"routed_text": ("text",), "routed_scans": ("scan", "image")}  # routed topic key -> the model kinds that decide its documents
OCR_PAGES, QUICK_OCR_PAGES = 60, 12  # pages the reading limit (CLI) and the in-process reader read
DEPLOY_KIND = "text"  # the kind the deploy measurement deploys
DEPLOY_PAUSE_S = 1.0  # between a deploy seen by every subtask and the next
SERVING_TIMEOUT_S = 120.0  # a deploy (or, at start, the challenger) every subtask must report serving within


class BenchError(RuntimeError):
    """A variant could not be measured; the message says why and where the log is."""


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
    deploys: int = 5  # champion deploys of the deploy measurement
    checkpoint_interval_ms: int | None = None  # the scoring job's (None: flink-conf/config.yaml's)
    buffer_timeout_ms: int | None = None  # the scoring job's network buffer timeout (None: flink-conf/config.yaml's)
    max_batch_delay_ms: int | None = None  # the scoring job's and the peer's micro-batch wait (None: ScoringConfig's)
    embedded_jvm_opts: str | None = None  # the embedded jobs' JVM options (None: Settings'; "": the JVM's defaults)
    ocr_engines: int | None = None  # the scoring job's Tesseract engines per scan reader (None: OcrConfig's)
    ocr_inverted_retry: str | None = None  # the scoring job's --ocr-inverted-retry, on or off (None: the job's)
    taskmanager_jvm_opts: str | None = None  # the session cluster's TaskManager JVM options (None: Settings'; "": none)

    @property
    def tuning(self) -> str:
        return tuning_label(self.checkpoint_interval_ms, self.buffer_timeout_ms, self.max_batch_delay_ms, self.embedded_jvm_opts,
                            self.ocr_engines, self.ocr_inverted_retry, self.taskmanager_jvm_opts)

    def job_args(self, variant: str) -> list[str]:
        """The latency knobs this run sets, as the variant's arguments (the peer takes only the batch wait)."""
        knobs = (("--max-batch-delay-ms", self.max_batch_delay_ms),) if variant == "peer" else (
            ("--checkpoint-interval-ms", self.checkpoint_interval_ms), ("--buffer-timeout-ms", self.buffer_timeout_ms),
            ("--max-batch-delay-ms", self.max_batch_delay_ms), ("--ocr-engines", self.ocr_engines),
            ("--ocr-inverted-retry", self.ocr_inverted_retry))
        return [arg for flag, value in knobs if value is not None for arg in (flag, str(value))]

    @property
    def slug(self) -> str:
        """The tuning as part of a variant's name: each arm of a sweep gets topics, a run directory and logs of its own
        (a topic deleted after one arm is still being deleted when the next would create it again).

        >>> Run(None, None, Path("/r"), "r", (1,), 1.0, 10, checkpoint_interval_ms=500, embedded_jvm_opts="-Xmx1g").slug
        '-ckpt-500-ms-jvm-Xmx1g'
        """
        return "".join(f"-{part}" for part in re.split(r"[^A-Za-z0-9.]+", self.tuning) if part)

    @property
    def log_dir(self) -> Path:
        return self.out_dir / "logs"


@contextmanager
def scratch(run: Run, name: str, own_registry: bool = False) -> Iterator[Settings]:
    """Settings of one variant: its own topics (a fresh prefix, deleted afterwards) and run directory;
    with `own_registry`, a copy of the registry in it (a champion deploy moves the registry's champion:
    never the user's)."""
    from mailroom.kafkautil import delete_topics
    from mailroom.stack import Kafka

    settings = replace(run.settings.with_run_dir(run.out_dir / "run" / name), topic_prefix=f"bench-{run.run_id}-{name}.")
    settings = _free_ports(settings)
    if run.embedded_jvm_opts is not None:
        settings = replace(settings, embedded_jvm_opts=run.embedded_jvm_opts)
    if run.taskmanager_jvm_opts is not None:
        settings = replace(settings, taskmanager_jvm_opts=run.taskmanager_jvm_opts)
    if own_registry:
        shutil.copytree(run.settings.registry_dir, settings.run_dir / "registry", ignore=shutil.ignore_patterns(".lock"))
        settings = replace(settings, registry_dir=settings.run_dir / "registry")
    Kafka(settings).create_topics()
    try:
        yield settings
    finally:
        delete_topics(settings, [t.name(settings.topic_prefix) for t in TOPICS])
        shutil.rmtree(settings.run_dir, ignore_errors=True)  # checkpoints


def _free_ports(settings: Settings) -> Settings:
    """Settings whose Flink ports (a session cluster's REST and RPC, the embedded jobs' web UIs) and metrics reporter
    ports are free: the bench's jobs and clusters must not collide with a job or cluster someone runs beside them."""
    from config.flinkconf import embedded_ui_port
    from config.monitoring import METRICS_PORT_OFFSETS
    from mailroom.stack import port_free

    for shift in range(500, 1500, 100):
        trial = replace(settings, flink_rest_port=settings.flink_rest_port + shift, metrics_port=settings.metrics_port + shift)
        ports = [trial.flink_rest_port, trial.flink_rest_port + 1, *(embedded_ui_port(trial, job) for job in ("router", "scoring")),
                 *range(trial.metrics_port, trial.metrics_port + max(METRICS_PORT_OFFSETS.values()) + 1)]
        if all(port_free(settings.host, port) for port in ports):
            return trial
    raise BenchError(f"no free Flink and metrics ports above {settings.flink_rest_port + 500} and {settings.metrics_port + 500}")


@contextmanager
def session_cluster(settings: Settings, taskmanagers: int, keep_logs_in: Path) -> Iterator["FlinkCluster"]:
    """A session cluster of the variant's own (its run directory and ports): `taskmanagers` TaskManager processes
    with one slot each, stopped afterwards; its JobManager's and TaskManagers' logs are copied to `keep_logs_in`."""
    from mailroom.stack import FlinkCluster, StackError

    cluster = FlinkCluster(settings, taskmanagers=taskmanagers, slots=1)
    try:
        cluster.start()
    except StackError as exc:
        cluster.stop()
        raise BenchError(f"the session cluster of {taskmanagers} TaskManagers did not start: {exc}") from None
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.copytree(cluster.log_dir, keep_logs_in, dirs_exist_ok=True)


def _await_group_exit(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Wait until no process of a finished job's process group (its JVM too) is left, so the
    next job finds its ports free."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the group's leader once it has ended (a zombie still makes the group exist)
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
    pending = pending_documents(run.corpus)
    calls = []  # (session, feeds) of every batch
    for kind in ("text", "scan", "image"):
        model, docs = scorer.slots.serving(kind), [p for p in pending if p.kind == kind]
        for start in range(0, len(docs), config.batch_size):
            chunk = docs[start:start + config.batch_size]
            inputs = {"context": [p.features for p in chunk], "text": [normalise_text(p.text or "") for p in chunk],
                      "image_features": [p.image_features for p in chunk]}
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
    return Result("limit", run.corpus.mix, None, len(pending), round(rate["docs_per_s"]), cpu_ms_per_doc=round(cpu_ms_per_doc, 3))


def scans_only(corpus: Corpus) -> Corpus:
    """The corpus's scans and their routed forms."""
    return Corpus([d for d in corpus.documents if d["content_type"] == "image"], [(k, v) for k, v in corpus.routed if k == "routed_scans"])


def run_reading_limits(run: Run, pages: int) -> list[Result]:
    """The same routed pages read by the `tesseract` command line (a process per page: what
    pytesseract does) and by `udfs.reading.ScanReader` in this process (the engine loaded once),
    both single-threaded (OMP_THREAD_LIMIT=1), nothing cached: wall time and CPU per page."""
    import resource
    import tempfile

    from models.ocr import OcrConfig

    config = OcrConfig()
    routed = [codec.decode(v, expected="routed_document").record for k, v in run.corpus.routed if k == "routed_scans"][:pages]
    if not routed:
        raise BenchError("reading: the corpus has no scans; raise --scan-share")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"page-{i}.png" for i in range(len(routed))]
        for path, doc in zip(paths, routed):
            path.write_bytes(doc["image"])
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        cpu, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        for path in tqdm(paths, desc=f"{OCR_CLI}: {len(paths)} pages", unit="page"):
            subprocess.run(["tesseract", str(path), "-", "--psm", str(config.page_segmentation), "-l", config.languages], env=env,
                           check=True, capture_output=True, timeout=120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        results.append(_reading_result(OCR_CLI, len(paths), time.perf_counter() - started,
                                       (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)))
    from udfs.reading import ScanReader

    reader = ScanReader(config)
    cpu, started = time.process_time(), time.perf_counter()
    for doc in tqdm(routed, desc=f"{OCR_READER}: {len(routed)} pages", unit="page"):
        reader.reader.read([doc["image"]])  # OCR alone, as the CLI does (the layout features are another 6 ms)
    results.append(_reading_result(OCR_READER, len(routed), time.perf_counter() - started, time.process_time() - cpu))
    reader.close()
    return results


def _reading_result(variant: str, pages: int, wall_s: float, cpu_s: float) -> Result:
    return Result(variant, f"{pages} routed scan pages", 1, pages, round(pages / wall_s, 2), cpu_s=round(cpu_s, 2),
                  cpu_ms_per_doc=round(1000 * cpu_s / pages, 1), wall_s=round(wall_s, 1))


ROUTER_INPUTS = ("text", "scans", "scans in colour")  # colour: the same pages as RGB PNGs, which the router decodes and re-encodes


def _in_colour(doc: dict) -> dict:
    """The scan with its page as an RGB PNG: not usable as sent, so the router decodes, grays and re-encodes it
    (the path every scan took before the router passed gray PNGs through)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(doc["image"])).convert("RGB").save(out, format="PNG")
    return {**doc, "image": out.getvalue()}


def run_router(run: Run, kind: str) -> Result:
    """jobs.router --bounded over a pre-filled documents topic holding only texts, only scans or only scans in colour."""
    from mailroom.kafkautil import read_topic
    from mailroom.produce import DocumentProducer, plan, to_document
    from mailroom.submit import start_job, stop_job

    is_scan = kind != "text"
    docs = [d for d in run.corpus.documents if (d["content_type"] == "image") == is_scan]
    docs = [_in_colour(d) for d in docs] if kind == "scans in colour" else docs
    copies = 1 if is_scan else max(1, math.ceil(run.router_text_docs / max(1, len(docs))))
    candidates = [(f"{d['doc_id']} copy {k}", to_document({**d, "doc_id": f"{d['doc_id']}-{k}"}, d["received_ms"]))
                  for k in range(copies) for d in docs]
    name = f"router-{kind.replace(' ', '-')}"
    with scratch(run, name) as settings:
        with DocumentProducer(settings) as producer:
            sent = producer.send_plan(plan(candidates))
        if sent.failed or sent.refused:
            raise BenchError(f"{name}: {len(sent.failed)} documents not acknowledged, {len(sent.refused)} refused")
        log = run.log_dir / f"{name}.log"
        started = time.time()
        proc = start_job(settings, "jobs.router", ["--bounded", "--parallelism", "1", "--group-id", settings.topic_prefix + "router-group"], log,
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
    """The peer or the scoring job: sustained rate over the routed backlog, then latency at half of it.

    mailroom-shadow: the scoring job as for mailroom, with each kind's champion deployed in its
    CHALLENGER slot at sample 1.0 first (so every document is scored twice); the backlog is sent once
    every subtask reports serving it, and the shadow-predictions topic is checked for one pair per
    document at the end (`Result.shadow`)."""
    from mailroom.submit import stop_job

    shadow = variant == SHADOW
    name = f"{variant}-p{parallelism}{run.slug}"
    with scratch(run, name, own_registry=shadow) as settings:
        challengers = _deploy_challengers(settings, run.corpus, name) if shadow else {}
        if not shadow:
            _send_backlog(settings, run.corpus, name)
        log = run.log_dir / f"{name}.log"
        with OutputWatcher(settings) as watcher, (EventWatcher(settings) if shadow else nullcontext()) as events, \
                (session_cluster(settings, parallelism, log.with_suffix("")) if variant == CLUSTER else nullcontext()) as cluster:
            started = time.time()
            procs = _start(settings, variant, parallelism, log, run.job_args(variant))
            taskmanagers = None
            try:
                with TreeSampler([p.pid for p in procs] + [p.pid for p in (cluster.processes() if cluster else [])]) as sampler:
                    for kind, version in challengers.items():
                        _await_serving(events, kind, "CHALLENGER", version, 0, parallelism, procs, log, f"{name}: {kind} challenger")
                    if shadow:
                        _send_backlog(settings, run.corpus, name)
                    n = len(run.corpus.routed)
                    _await(watcher, "backlog", n, procs, log, f"{name}: backlog")
                    window = sustained_window(a.scored_ms for a in watcher.arrivals["backlog"].values())
                    if window is None:
                        raise BenchError(f"{name}: the backlog was scored too fast to time; use more --docs")
                    if cluster:  # where its subtasks ran: one TaskManager process each, or the scaling says nothing
                        taskmanagers = len(cluster.job_taskmanagers("mailroom-scoring"))
                    sent, offered, paced_scans = _pace(settings, run.corpus, window.rate / 2, run.paced_s, name)
                    _await(watcher, "paced", sent, procs, log, f"{name}: paced")
                scored = [*watcher.arrivals["backlog"], *watcher.arrivals["paced"]]
                checked = shadow_check(scored, _shadow_doc_ids(settings, len(scored))) if shadow else None
            except BenchError:
                if variant == "peer":  # its threads' stacks into its log (faulthandler, see peer_main)
                    for proc in procs:
                        proc.send_signal(signal.SIGUSR1)
                    time.sleep(1)
                raise
            finally:
                if cluster:  # the attached client then ends by itself
                    cluster.cancel_all()
                for proc in procs:
                    stop_job(proc)
                    _await_group_exit(proc)
        backlog, paced = list(watcher.arrivals["backlog"].values()), list(watcher.arrivals["paced"].values())
    result = _result(variant, run.corpus.mix, parallelism, [a.scored_ms for a in backlog], window, sampler.usage, started)
    result.offered_per_s = round(offered)
    result.latency_ms = percentiles(a.arrived_ms - a.received_ms for a in paced)
    result.scored_latency_ms = percentiles(a.scored_ms - a.received_ms for a in paced)
    paced_by_id = watcher.arrivals["paced"]
    result.latency_by_kind_ms = {kind: percentiles(a.arrived_ms - a.received_ms for doc_id, a in paced_by_id.items()
                                                   if (doc_id in paced_scans) == (kind == "scans")) for kind in ("text", "scans")}
    result.shadow = checked
    result.taskmanagers = taskmanagers
    result.scans_read = dict(Counter(a.ocr_status for a in [*backlog, *paced] if a.ocr_status)) or None
    result.fell_behind = falling_behind([a.arrived_ms - a.received_ms for a in sorted(paced, key=lambda a: a.received_ms)])
    if variant != "peer":
        result.checkpoint_interval_ms, result.buffer_timeout_ms = run.checkpoint_interval_ms, run.buffer_timeout_ms
        result.embedded_jvm_opts, result.ocr_engines = run.embedded_jvm_opts, run.ocr_engines
        result.ocr_inverted_retry, result.taskmanager_jvm_opts = run.ocr_inverted_retry, run.taskmanager_jvm_opts
    result.max_batch_delay_ms = run.max_batch_delay_ms
    return result


def _deploy_challengers(settings: Settings, corpus: Corpus, name: str) -> dict[str, str]:
    """Each kind's champion deployed in its CHALLENGER slot at sample 1.0, as `mailroom models deploy
    KIND V --slot challenger --sample 1` does it; kind -> version."""
    from mailroom.control import ControlError, DeployRefused, deploy
    from models.registry import Registry

    registry = Registry(settings.registry_dir)
    versions = {}
    for kind in sorted({kind for key, _ in corpus.routed for kind in KINDS[key]}):
        version = registry.champion(kind).version
        try:
            deploy(settings, registry, kind, version, "challenger", sample=1.0, note="bench: the champion in shadow of itself")
        except (ControlError, DeployRefused) as exc:
            raise BenchError(f"{name}: deploying {kind} v{version} as challenger: {exc}") from None
        versions[kind] = str(version)
    return versions


def _shadow_doc_ids(settings: Settings, expected: int) -> list[str]:
    """The doc_id of every record on the shadow-predictions topic (committed), waiting up to 60 s for `expected`."""
    from mailroom.kafkautil import read_topic

    records = read_topic(settings, topic_name("shadow_predictions", settings.topic_prefix), min_count=expected, timeout_s=60)
    return [codec.decode(r.value, expected="shadow_prediction").record["doc_id"] for r in records]


def run_deploys(run: Run, parallelism: int, load_per_s: float | None = None, kind: str = DEPLOY_KIND) -> DeployFigures:
    """Deploy to serving: with the scoring job running at `parallelism` (scoring `load_per_s` documents
    a second, or idle), `run.deploys` champion deploys through `mailroom.control.deploy`, alternating a
    copy of the champion registered as another version and the champion itself; each timed from the
    champion record's send (its Kafka timestamp) to every subtask's SERVING report on model-events."""
    from mailroom.control import ControlError, DeployRefused, deploy
    from mailroom.submit import stop_job, wait_until_running
    from models.registry import Registry

    name = f"deploy-p{parallelism}"
    figures = DeployFigures(kind, parallelism, round(load_per_s) if load_per_s else None)
    with scratch(run, name, own_registry=True) as settings:
        registry = Registry(settings.registry_dir)
        versions = (_register_copy(registry, kind), registry.champion(kind).version)
        log = run.log_dir / f"{name}.log"
        with EventWatcher(settings) as events:
            procs = _start(settings, "mailroom", parallelism, log)
            try:
                with console.status(f"{name}: starting the scoring job"):
                    try:
                        wait_until_running(settings, "scoring", procs[0])
                    except RuntimeError as exc:
                        raise BenchError(f"{name}: {exc}; see {log}") from None
                with _load(settings, run.corpus, load_per_s):
                    for i in tqdm(range(run.deploys), desc=f"{name}: {kind} champion deploys", unit="deploy"):
                        version = versions[i % 2]
                        called = time.perf_counter()
                        try:
                            deploy(settings, registry, kind, version, "champion", note=f"bench: deploy {i + 1} of {run.deploys}")
                        except (ControlError, DeployRefused) as exc:
                            raise BenchError(f"{name}: deploying {kind} v{version}: {exc}") from None
                        call_ms = (time.perf_counter() - called) * 1000
                        sent_ms = _sent_ms(settings, kind)
                        serving = _await_serving(events, kind, "CHAMPION", str(version), sent_ms, parallelism, procs, log,
                                                 f"{name}: deploy {i + 1}")
                        figures.deploys.append(deploy_timing(str(version), sent_ms, serving, call_ms))
                        time.sleep(DEPLOY_PAUSE_S)
            finally:
                for proc in procs:
                    stop_job(proc)
                    _await_group_exit(proc)
    return figures


def _register_copy(registry, kind: str) -> int:
    """The champion's ONNX file registered again as a new version (its card and evaluation set too):
    a second version to deploy that loads and scores exactly as the champion does."""
    champion = registry.champion(kind)
    inputs, labels = registry.eval_set(kind, champion.card["eval_set"]["fingerprint"])
    card = {k: v for k, v in champion.card.items() if k not in ("version", "created", "eval_set", "files", "promotions")}
    return registry.register(kind, champion.onnx_path.read_bytes(), {**card, "copy_of": champion.version}, inputs, labels)


def _sent_ms(settings: Settings, kind: str) -> int:
    """When the newest champion record of `kind` on the control topic was sent: its Kafka timestamp
    (stamped by the producer as it appended the record). The record's own published_ms is stamped
    earlier, before the deploy checks the current champion it keeps as PREVIOUS."""
    from mailroom.control import control_key
    from mailroom.kafkautil import read_topic

    key = control_key(kind, "champion").encode()
    records = [r for r in read_topic(settings, topic_name("model_control", settings.topic_prefix), timeout_s=10) if r.key == key]
    if not records:
        raise BenchError(f"the {kind} champion record is not on {topic_name('model_control', settings.topic_prefix)}")
    return records[-1].timestamp


def _await_serving(watcher: "EventWatcher", kind: str, slot: str, version: str, since_ms: int, subtasks: int,
                   procs: list[subprocess.Popen], log: Path, desc: str, timeout_s: float = SERVING_TIMEOUT_S) -> dict[int, tuple[int, int]]:
    """Wait until each of the `subtasks` scoring subtasks has reported, since `since_ms`, that it serves
    `version` of `kind` in `slot`, and that report has been read; subtask -> (at_ms, arrived_ms).
    BenchError when a subtask refuses it, the job exits, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = list(watcher.events)
        serving = first_serving(events, kind, slot, version, since_ms)
        if all(s in serving for s in range(subtasks)):
            return {s: serving[s] for s in range(subtasks)}
        refused = [e for e, _ in events if e["outcome"] == "REFUSED" and (e["kind"], e["slot"], e["version"]) == (kind, slot, version)
                   and e["at_ms"] >= since_ms]
        if refused:
            raise BenchError(f"{desc}: subtask {refused[0]['subtask']} refused {kind} v{version}: {refused[0]['reason']}; see {log}")
        if exited := [p for p in procs if p.poll() is not None]:
            raise BenchError(f"{desc}: process {exited[0].pid} exited with {exited[0].returncode}; see {log}")
        if time.monotonic() > deadline:
            raise BenchError(f"{desc}: {len(serving)} of {subtasks} subtasks reported serving {kind} v{version} in {slot} "
                             f"within {timeout_s:.0f} s; see {log}")
        time.sleep(0.05)


@contextmanager
def _load(settings: Settings, corpus: Corpus, rate: float | None) -> Iterator[None]:
    """Routed documents at `rate` per second (doc_id prefix LOAD_PREFIX) from a thread while the block runs; none without a rate."""
    if not rate:
        yield
        return
    from mailroom.kafkautil import producer

    records, stop = _routed_records(corpus), threading.Event()

    def send() -> None:
        out = producer(settings, linger_ms=0)
        started, i = time.perf_counter(), 0
        while not stop.wait(max(0.0, started + i / rate - time.perf_counter())):
            key, record = records[i % len(records)]
            out.send(topic_name(key, settings.topic_prefix),
                     codec.encode("routed_document", {**record, "doc_id": f"{LOAD_PREFIX}{i:07d}", "received_ms": now_ms()}))
            i += 1
        out.flush()
        out.close()

    thread = threading.Thread(target=send, name="bench-load", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _routed_records(corpus: Corpus) -> list[tuple[str, dict]]:
    return [(key, codec.decode(value, expected="routed_document").record) for key, value in corpus.routed]


def _result(variant: str, input_: str, parallelism: int, times_ms: list[int], window: Window | None, usage: Usage, started: float,
            **extra) -> Result:
    cpu_ms_per_doc = None
    if window is not None and len(usage.samples) > 1:
        cpu_ms_per_doc = round(usage.cpu_between(window.start_ms / 1000, window.end_ms / 1000) * 1000 / window.records, 2)
    return Result(variant, input_, parallelism, len(times_ms), round(window.rate) if window else None, cpu_s=usage.cpu_s,
                  cpu_ms_per_doc=cpu_ms_per_doc, peak_rss_mb=usage.peak_rss_mb, first_output_s=round(min(times_ms) / 1000 - started, 1),
                  own_cores=usage.own_cores, machine_busy_cores=usage.machine_busy_cores, **extra)


def _send_backlog(settings: Settings, corpus: Corpus, name: str) -> None:
    from mailroom.kafkautil import producer

    out = producer(settings, batch_size=2**20)
    with tqdm(total=len(corpus.routed), desc=f"{name}: pre-filling routed topics", unit="doc") as bar:
        futures = [out.send(topic_name(key, settings.topic_prefix), value).add_both(lambda _: bar.update(1)) for key, value in corpus.routed]
        out.flush()
    out.close()
    if any(f.failed() for f in futures):
        raise BenchError(f"{name}: the broker did not acknowledge {sum(f.failed() for f in futures)} routed documents")


def _start(settings: Settings, variant: str, parallelism: int, log: Path, tuning: list[str]) -> list[subprocess.Popen]:
    from mailroom.submit import start_job

    group = settings.topic_prefix + "scoring-group"  # unique per run, like the topics
    if variant in SCORING_VARIANTS:  # mailroom-shadow: the same job, its challenger comes from the control topic
        # every page read (no cache, and no wait bound: the backlog was routed when the corpus was built), so reading is measured
        args = ["--parallelism", str(parallelism), "--group-id", group, "--no-ocr-cache", "--ocr-max-wait-ms", str(DAY_MS)]
        args += ["--no-ocr"] if variant == NO_OCR else []
        args += ["--delivery", "at-least-once"] if variant == AT_LEAST_ONCE else []
        args += tuning
        # mailroom-cluster: submitted (attached) to the variant's session cluster, one TaskManager per subtask
        return [start_job(settings, "jobs.scoring", args, log, cluster=variant == CLUSTER, log_dir=log.with_suffix(""))]
    # the peer: `python -m mailroom.bench` runs peer_main (__main__.py)
    return [start_job(settings, "mailroom.bench", ["--group-id", group, "--ocr-max-wait-ms", str(DAY_MS), *tuning], log)
            for _ in range(parallelism)]


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


def _pace(settings: Settings, corpus: Corpus, rate: float, seconds: float, name: str) -> tuple[int, float, set[str]]:
    """Send routed documents at `rate` per second for `seconds`, received_ms stamped at send time.
    Returns how many were sent, the rate actually offered and the doc_ids of the scans among them."""
    from mailroom.kafkautil import producer

    records = _routed_records(corpus)
    count = max(50, round(rate * seconds))
    out = producer(settings, linger_ms=0)
    started, scans = time.perf_counter(), set()
    for i in tqdm(range(count), desc=f"{name}: offering {rate:,.0f} docs/s", unit="doc"):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        key, record = records[i % len(records)]
        doc_id = f"{PACED_PREFIX}{i:06d}"
        if key == "routed_scans":
            scans.add(doc_id)
        out.send(topic_name(key, settings.topic_prefix), codec.encode("routed_document", {**record, "doc_id": doc_id, "received_ms": now_ms()}))
    out.flush()
    offered = count / (time.perf_counter() - started)
    out.close()
    return count, offered, scans


class Arrival(NamedTuple):
    received_ms: int
    scored_ms: int
    arrived_ms: int
    ocr_status: str | None = None  # a scan's reading (READ, OVER_BUDGET, ...); None for a text document


class TopicWatcher:
    """Reads declared topics (`keys`, read_committed, from the beginning) in a thread; `_take` keeps
    what matters of each record, with its arrival time (epoch ms)."""

    keys: tuple[str, ...] = ()

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def __enter__(self):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(**client_config(self.settings), isolation_level="read_committed",
                                      enable_auto_commit=False, fetch_max_wait_ms=20)
        partitions = [TopicPartition(topic_name(k, self.settings.topic_prefix), p) for k in self.keys for p in range(BY_KEY[k].partitions)]
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
            arrived = now_ms()
            for records in polled.values():
                for record in records:
                    self._take(record.value, arrived)

    def _take(self, value: bytes, arrived_ms: int) -> None:
        raise NotImplementedError


class OutputWatcher(TopicWatcher):
    """Every department topic: each document's first arrival, split into the backlog and the paced
    phase (doc_id prefix)."""

    keys = tuple(department_topic_key(label) for label in DEPARTMENTS)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.arrivals: dict[str, dict[str, Arrival]] = {"backlog": {}, "paced": {}}

    def _take(self, value: bytes, arrived_ms: int) -> None:
        p = codec.decode(value, expected="department_document").record
        phase = "paced" if p["doc_id"].startswith(PACED_PREFIX) else "backlog"
        self.arrivals[phase].setdefault(p["doc_id"], Arrival(p["received_ms"], p["decision"]["scored_ms"], arrived_ms,
                                                             (p.get("ocr") or {}).get("status")))


class EventWatcher(TopicWatcher):
    """The model-events topic: every event, with its arrival (after the checkpoint that commits it)."""

    keys = ("model_events",)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.events: list[tuple[dict, int]] = []

    def _take(self, value: bytes, arrived_ms: int) -> None:
        try:
            self.events.append((codec.decode(value, expected="model_event").record, arrived_ms))
        except codec.DecodeError:
            pass  # not a model event: nothing the bench waits for


def stage_profile(corpus: Corpus, config, limit: int = 600) -> StageProfile:
    """The scoring logic (as PeerScorer runs it) over the first `limit` routed documents in plain Python, nothing
    cached, each stage timed: where a document's time goes, text and scans apart."""
    from collections import defaultdict

    from models.features import SenderHistory
    from udfs.dead_letters import SourceRecord
    from udfs.reading import ScanReader
    from udfs.scoring import BatchScorer, SenderFeatures

    scorer, reader, features = BatchScorer(config), ScanReader(config.ocr, config.read_scans, None), SenderFeatures(mirror=None)
    seconds: dict = defaultdict(lambda: dict.fromkeys(STAGES, 0.0))
    docs, histories, batch = Counter(), {}, []

    def score(batch: list) -> None:
        started = time.perf_counter()
        scorer.score([doc for _, doc in batch], now_ms())
        for kind, _ in batch:  # a batch's time, shared by its documents
            seconds[kind][STAGES[4]] += (time.perf_counter() - started) / len(batch)

    for _, value in tqdm(corpus.routed[:limit], desc="stages", unit="doc", leave=False):
        started = time.perf_counter()
        routed = codec.decode(value, expected="routed_document").record
        kind = "scan" if routed["content_type"] == "IMAGE" else "text"
        docs[kind] += 1
        read = time.perf_counter()
        seconds[kind][STAGES[0]] += read - started
        scan = None
        if kind == "scan":
            scan = reader.read(routed, routed["routed_ms"])  # as if it had just been routed: read, not waited out
            ocr_s = scan.reading.milliseconds / 1000
            seconds[kind][STAGES[2]] += ocr_s
            seconds[kind][STAGES[1]] += time.perf_counter() - read - ocr_s
            read = time.perf_counter()
        history = histories.setdefault(routed["sender"], SenderHistory())
        batch.append((kind, features.observe(history, routed, SourceRecord(value, "", -1, -1), scan)))
        seconds[kind][STAGES[3]] += time.perf_counter() - read
        if len(batch) == config.batch_size:
            score(batch)
            batch = []
    if batch:
        score(batch)
    reader.close()
    return StageProfile({kind: dict(stages) for kind, stages in seconds.items()}, dict(docs))


def profile_scoring(corpus: Corpus, config, top: int = 25) -> tuple[float, str]:
    """The peer's scoring logic over the corpus in plain Python (no Kafka): docs/s without the
    profiler, then the `top` functions by cumulative time under cProfile."""

    def score_all(scorer: PeerScorer) -> None:
        now = now_ms()
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
