"""The scoring job's Flink adapters over `ScanReader`, `SenderFeatures`, `IdleSenderRule`, `MicroBatcher`, `BatchScorer` and `ModelSlots`."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from pyflink.common import Types
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext, TimeDomain
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from models.modelio import KINDS
from models.ocr import READING_STATUSES
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.metric_names import DELIVERED, OCR_PAGES, OCR_SCANS, POPULATION, PREDICTIONS, REDIS_OUTAGES
from udfs.adapters.common import BYTES, FailurePath, OperatorMetrics, now_ms, state_ttl, subtask_info
from udfs.batching import MicroBatcher
from udfs.dead_letters import SourceRecord
from udfs.feature_cache import FeatureMirror
from udfs.operator_metrics import batch_counts, population_series, reading_counts, version_counts
from udfs.reading import ReadingPool, ReadScan
from udfs.scoring import DECIDING_SLOTS, SCORING_VERSION, BatchScorer, IdleSenderRule, SenderFeatures
from udfs.sharding import shard_keys

JOB = "scoring"
DEPARTMENT_OUTPUTS = {dept: OutputTag(f"dept-{dept}", BYTES) for dept in DEPARTMENTS.values()}
MODEL_EVENTS = OutputTag("model-events", BYTES)
SHADOW_PREDICTIONS = OutputTag("shadow-predictions", BYTES)
# the model-control records in force, by "<kind>/<slot>" (keyed by shard: one copy per subtask), checkpointed
CONTROL_STATE = MapStateDescriptor("model_control", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
log = logging.getLogger("mailroom.scoring")


def sender_and_source(record: dict, source: SourceRecord) -> tuple[str, SourceRecord, str]:
    """What crosses the key-by to the sender features: the key, the bytes as read (decoded again
    there: cheaper than shipping the decoded record and the bytes both) and the content type
    (which `ReadScans` replaces by what it read of a scan)."""
    return record["sender"], source, record["content_type"]


def scan_key(item) -> str:
    """A routed scan's key for its reader: where it was read from, so each scan is a key of its own."""
    source = item[1]
    return f"{source.topic}/{source.partition}/{source.offset}"


class ReadScans(KeyedProcessFunction):
    """Keyed by `scan_key`: (sender, routed scan as read, "IMAGE") -> (sender, the same, ReadScan):
    layout features and OCR (`udfs.reading.ReadingPool`: `OcrConfig.engines` read side by side),
    in an operator of its own so that reading can be given more parallelism (TaskManagers) than
    scoring. Flink's async I/O, built here because PyFlink's `AsyncDataStream` refuses thread mode:
    a scan waits in keyed state (checkpointed; a restored one is read again) while an engine reads
    it, a processing-time timer every `OcrConfig.poll_ms` emits it once read (unordered), and an
    event-time timer reads what is left when a bounded input ends. A text document behind a scan
    therefore no longer waits for its OCR. A scan whose page does not decode is dead-lettered.
    Counts OCR_PAGES and OCR_SCANS{status}, pushed per `FlushPolicy`."""

    def __init__(self, config):
        self.config = config

    def open(self, runtime_context: RuntimeContext):
        ocr = self.config.ocr
        self.pool = ReadingPool(ocr, self.config.read_scans, self.config.ocr_cache_dir, engines=ocr.engines)
        self.waiting = runtime_context.get_state(ValueStateDescriptor("scan_being_read", Types.PICKLED_BYTE_ARRAY()))
        self.reading: dict[str, Future] = {}  # by scan_key; empty after a restore: what `waiting` holds is read again
        self.failures = FailurePath(runtime_context, JOB, SCORING_VERSION, self.config.max_failures_per_minute)
        self.metrics = OperatorMetrics(runtime_context)
        self.metrics.declare(OCR_PAGES)
        for status in READING_STATUSES:
            self.metrics.declare(OCR_SCANS, status)

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        try:
            routed = codec.decode(item[1].value, expected="routed_document").record
        except Exception as exc:  # not a routed document after all: this record only
            yield self.failures.dead_letter(item[1], exc)
            return
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        self.waiting.update((item, routed["doc_id"], now))
        self.reading[ctx.get_current_key()] = self.pool.submit(routed, now_ms())
        timers.register_processing_time_timer(now + self.config.ocr.poll_ms)
        timers.register_event_time_timer(now)  # fires only when a bounded input ends (no watermarks before)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        held = self.waiting.value()
        if held is None:  # emitted already (by the other timer)
            return
        (sender, source, _), doc_id, end_timer = held
        key, timers = ctx.get_current_key(), ctx.timer_service()
        if key not in self.reading:  # restored from a checkpoint while an engine was reading it
            self.reading[key] = self.pool.submit(codec.decode(source.value, expected="routed_document").record, now_ms())
        ending = ctx.time_domain() == TimeDomain.EVENT_TIME
        if not (self.reading[key].done() or ending):
            timers.register_processing_time_timer(timers.current_processing_time() + self.config.ocr.poll_ms)
            return
        future = self.reading.pop(key)
        self.waiting.clear()
        if not ending:
            timers.delete_event_time_timer(end_timer)
        try:
            scan = future.result()
        except Exception as exc:  # a page that is no image: this record only
            yield self.failures.dead_letter(source, exc, doc_id)
            return
        reading_counts(self.metrics.counts, scan.reading.pages_read, scan.reading.status)
        self.metrics.record()
        yield sender, source, scan

    def close(self):
        self.metrics.push()
        self.pool.close()


def sender_label_and_source(record: dict, source: SourceRecord) -> tuple[str, str, SourceRecord]:
    """What the sender features need of one of the job's own predictions."""
    return record["sender"], record["label"], source


class ComputeSenderFeatures(KeyedCoProcessFunction):
    """Keyed by sender. Input 1: (sender, routed record as read, ReadScan of a scan or "TEXT") -> (shard, PendingDocument).
    Input 2: (sender, label, record) of this job's own predictions, read back from the
    predictions log, which feed the sender's recent label shares (`SenderHistory.record_label`).

    State: the sender's history (TTL), and an idle timer (`IdleSenderRule`). A record whose
    features raise is dead-lettered (`FailurePath`); the sender's history stays as it was.
    `redis_client_factory` (None: no mirror) makes the Redis client of the feature mirror.
    Counts REDIS_OUTAGES, pushed per `FlushPolicy` (records, timers, close).
    """

    def __init__(self, config, redis_client_factory=None):
        self.config, self.redis_client_factory = config, redis_client_factory

    def open(self, runtime_context: RuntimeContext):
        history = ValueStateDescriptor("sender_history", Types.PICKLED_BYTE_ARRAY())
        history.enable_time_to_live(state_ttl(self.config.sender_state_ttl_ms))
        self.history = runtime_context.get_state(history)
        self.touched = runtime_context.get_state(ValueStateDescriptor("touched_ms", Types.LONG()))
        self.mirror = None
        if self.redis_client_factory is not None:
            self.mirror = FeatureMirror(self.redis_client_factory, self.config.redis_namespace, self.config.redis_ttl_s)
        self.features = SenderFeatures(self.mirror)
        self.idle = IdleSenderRule(self.config.sender_idle_ms)
        self.outages = 0
        self.metrics = OperatorMetrics(runtime_context)
        self.failures = FailurePath(runtime_context, JOB, SCORING_VERSION, self.config.max_failures_per_minute)
        subtask, parallelism = subtask_info(runtime_context)
        self.shard = shard_keys(parallelism)[subtask]

    def process_element1(self, item, ctx: KeyedCoProcessFunction.Context):
        sender, source, scan = item
        doc_id = None
        try:
            routed = codec.decode(source.value, expected="routed_document").record
            doc_id = routed["doc_id"]
            history = self.history.value() or self.features.warm_start(sender)
            pending = self.features.observe(history, routed, source, scan if isinstance(scan, ReadScan) else None)
        except Exception as exc:  # a scan that is no image, a decoder bug, ...: this record only
            yield self.failures.dead_letter(source, exc, doc_id)
            return
        self.history.update(history)
        now = ctx.timer_service().current_processing_time()
        timer = self.idle.timer_for_new_document(self.touched.value(), now)
        if timer is not None:
            ctx.timer_service().register_processing_time_timer(timer)
        self.touched.update(now)
        self._count_outages()
        yield self.shard, pending

    def process_element2(self, item, ctx: KeyedCoProcessFunction.Context):
        sender, label, source = item
        history = self.history.value()
        if history is None:
            return
        try:
            history.record_label(label)
        except Exception as exc:  # a label this code does not know
            yield self.failures.dead_letter(source, exc)
            return
        self.history.update(history)

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        self.metrics.timer()
        following = self.idle.on_timer(self.touched.value(), timestamp)
        if following is not None:
            ctx.timer_service().register_processing_time_timer(following)
            return
        self.history.clear()
        self.touched.clear()

    def _count_outages(self):
        if self.mirror is not None:
            self.metrics.counts.add(REDIS_OUTAGES, n=self.mirror.stats.outages - self.outages)
            self.outages = self.mirror.stats.outages
        self.metrics.record()

    def close(self):
        self.metrics.push()
        if self.mirror is not None:
            self.mirror.close()


class CopyToEveryShard(ProcessFunction):
    """Decoded model-control records -> (shard, record) once for every shard key, so that each
    scoring subtask receives every record on its keyed input 2 (a broadcast by keys: Flink's
    broadcast operator cannot emit side outputs from timers in thread mode, and the scorer needs both)."""

    def open(self, runtime_context: RuntimeContext):
        self.shards = shard_keys(subtask_info(runtime_context)[1])

    def process_element(self, item, ctx: ProcessFunction.Context):
        record, _ = item
        for shard in self.shards:
            yield shard, record


class ScoreMicroBatches(KeyedCoProcessFunction):
    """Keyed by shard: buffers documents in checkpointed list state and scores them with one
    onnxruntime call per model kind when `MicroBatcher` says so (full, waited
    `max_batch_delay_ms`), or when a bounded input ends. Emits predictions (main output) and
    each to its department's output; a document the model fails on is dead-lettered and the
    rest of its batch scored; the challenger's paired answers go to `SHADOW_PREDICTIONS`.

    Input 2 is the model-control topic, a copy per shard (`CopyToEveryShard`, `ModelSlots`): each
    subtask checks and loads a deployed model between two records, keeps the record in keyed
    state (so a restored job serves what the control topic said), and reports to `MODEL_EVENTS`.

    Metrics (`udfs.operator_metrics.batch_counts`) are pushed once per batch; MODEL_VERSION at
    open and on every control record.
    """

    def __init__(self, config):
        self.config = config

    def open(self, runtime_context: RuntimeContext):
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("batch", Types.PICKLED_BYTE_ARRAY()))
        self.end_timer = runtime_context.get_state(ValueStateDescriptor("end_of_input_timer", Types.LONG()))
        self.control = runtime_context.get_map_state(CONTROL_STATE)
        self.batcher = MicroBatcher(self.config.batch_size, self.config.max_batch_delay_ms)
        self.failures = FailurePath(runtime_context, JOB, SCORING_VERSION, self.config.max_failures_per_minute)
        self.subtask = subtask_info(runtime_context)[0]
        self.metrics = OperatorMetrics(runtime_context)
        for department in DEPARTMENTS.values():
            self.metrics.declare(DELIVERED, department)
        for kind in KINDS:
            for slot in DECIDING_SLOTS:
                self.metrics.declare(PREDICTIONS, kind, slot)
        for series in population_series():
            self.metrics.declare(POPULATION, *series)
        # onnxruntime (pybind11) deadlocks when imported or called from a thread-mode (pemja) task
        # thread, whose thread state pybind11's GIL handling does not know; a thread Python itself
        # started is fine. So the sessions live on, and every batch runs on, one such thread.
        self.onnx_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.scorer = self.onnx_thread.submit(BatchScorer, self.config).result()  # the registry's champions, once per operator
        self.unreported = self.scorer.slots.at_start()  # reported with the first record: open() has no output
        self.metrics.push(version_counts(self.scorer.slots.versions()))
        self.restored = False  # the control state (what the control topic said) is applied at the first record

    def process_element1(self, item, ctx: KeyedCoProcessFunction.Context):
        if self.unreported or not self.restored:
            yield from self._catch_up()
        shard, pending = item
        self.buffer.add(pending)
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        step = self.batcher.added(shard, now, recount=lambda: sum(1 for _ in self.buffer.get()))
        if step.timer_ms is not None:
            timers.register_processing_time_timer(step.timer_ms)
        if self.end_timer.value() is None:
            # The sources emit no watermarks, so event time only advances (to the maximum) when a
            # bounded input ends: this one timer per shard scores what is left then. Its time is a
            # plausible record timestamp, which Kafka requires of what the flush emits.
            self.end_timer.update(now)
            timers.register_event_time_timer(now)
        if step.flush:
            yield from self._flush(shard, now)

    def process_element2(self, item, ctx: KeyedCoProcessFunction.Context):
        _, record = item
        yield from self._catch_up()
        self.control.put(f"{record['kind']}/{record['slot']}", record)
        yield from self._apply(record)

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        yield from self._flush(ctx.get_current_key(), ctx.timer_service().current_processing_time())

    def _catch_up(self):
        """Once per subtask: report what it serves, then apply the restored control state."""
        if self.unreported:
            for change in self.unreported:
                yield MODEL_EVENTS, codec.encode("model_event", change.record(JOB, self.subtask, now_ms()))
            self.unreported = []
        if not self.restored:
            self.restored = True
            for record in list(self.control.values()):
                yield from self._apply(record)

    def _apply(self, record: dict):
        change = self.onnx_thread.submit(self.scorer.slots.apply, record).result()
        if change.outcome == "REFUSED":
            log.warning("subtask %d refused %s v%s for %s: %s", self.subtask, change.kind, change.version, change.slot, change.reason)
        self.metrics.push(version_counts(self.scorer.slots.versions()))
        yield MODEL_EVENTS, codec.encode("model_event", change.record(JOB, self.subtask, now_ms()))

    def _flush(self, shard: int, now: int):
        batch = list(self.buffer.get() or [])
        self.buffer.clear()
        self.batcher.flushed(shard)
        if not batch:
            return
        started = time.perf_counter()
        scored = self.onnx_thread.submit(self.scorer.score_isolating, batch, int(now)).result()
        self.metrics.push(batch_counts(scored, len(batch), (time.perf_counter() - started) * 1000, now_ms()))
        for department, delivery, prediction in scored.predictions:
            yield DEPARTMENT_OUTPUTS[department], delivery
            yield prediction
        for shadow in scored.shadows:
            yield SHADOW_PREDICTIONS, shadow
        for doc, exc in scored.failed:
            yield self.failures.dead_letter(doc.source, exc, doc.doc_id)

    def close(self):
        self.scorer.deadline.close()
        self.onnx_thread.shutdown()
