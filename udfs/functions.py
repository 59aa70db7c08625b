"""Flink adapters: the only module under udfs/ that imports pyflink. No business logic here."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, MapFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from schemas.labels import DEPARTMENTS
from schemas import codec
from udfs.dashboard import DashboardWriter
from udfs.feature_cache import FeatureMirror
from udfs.joining import Joiner, labelled_examples
from udfs.metrics import AccuracyTracker, metrics_key

from udfs.routing import Destination, DuplicateWindow, Router
from udfs.scoring import BatchScorer, SenderFeatures
from udfs.sharding import shard_keys

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
DEAD_LETTERS = OutputTag("dead-letters", BYTES)
ROUTED_TEXT = OutputTag("routed-text", BYTES)
ROUTED_SCANS = OutputTag("routed-scans", BYTES)


# --- router ----------------------------------------------------------------------------------


class RouteDocuments(ProcessFunction):
    """Decode, validate and clean each raw message (`Router.route`).

    Main output: (doc_id, destination, routed bytes, original bytes, topic, partition, offset)
    for the duplicate check; dead letters go to `DEAD_LETTERS`. Unexpected exceptions propagate:
    the task fails and Flink restarts from the last checkpoint.
    """

    def __init__(self, config):
        self.config = config
        self.router = None

    def open(self, runtime_context: RuntimeContext):
        self.router = Router(self.config)

    def process_element(self, row, ctx: ProcessFunction.Context):
        value = b"" if row[0] is None else bytes(row[0])
        topic, partition, offset = row[1], row[2], row[3]
        result = self.router.route(value, topic, partition, offset, _now_ms())
        if result.destination is Destination.DEAD_LETTER:
            yield DEAD_LETTERS, result.value
        else:
            yield result.doc_id, result.destination.value, result.value, value, topic, partition, offset


class DropDuplicateIds(KeyedProcessFunction):
    """Keyed by doc_id: the first sighting within the window passes, later ones are dead-lettered.

    The first-seen time lives in keyed state whose TTL is the window, so state stays bounded.
    """

    def __init__(self, config):
        self.config = config

    def open(self, runtime_context: RuntimeContext):
        self.router = Router(self.config)
        self.window = DuplicateWindow(self.config.duplicate_window_ms)
        descriptor = ValueStateDescriptor("first_seen_ms", Types.LONG())
        descriptor.enable_time_to_live(_ttl(self.config.duplicate_window_ms))
        self.first_seen = runtime_context.get_state(descriptor)

    def process_element(self, candidate, ctx: KeyedProcessFunction.Context):
        doc_id, destination, routed, original, topic, partition, offset = candidate
        now = _now_ms()
        if self.window.is_duplicate(self.first_seen.value(), now):
            yield DEAD_LETTERS, self.router.duplicate(original, topic, partition, offset, now, doc_id).value
            return
        self.first_seen.update(now)
        yield (ROUTED_TEXT if destination == Destination.TEXT.value else ROUTED_SCANS), routed


def _subtask(runtime_context: RuntimeContext) -> tuple[int, int]:
    """(index of this subtask, parallelism). Thread mode's runtime context still calls the
    pre-2.0 Java getters, which Flink 2 moved to getTaskInfo(); go there when they fail."""
    try:
        return runtime_context.get_index_of_this_subtask(), runtime_context.get_number_of_parallel_subtasks()
    except AttributeError:
        info = runtime_context._runtime_context.getTaskInfo()
        return info.getIndexOfThisSubtask(), info.getNumberOfParallelSubtasks()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ttl(ms: int) -> StateTtlConfig:
    """Expire state `ms` after its last write; clean up incrementally on the heap backend.

    The cleanup strategy is named explicitly: PyFlink's default adds a RocksDB compaction
    filter whose Python object needs a py4j gateway, which a thread-mode worker does not have
    (it tries to launch one and hangs).
    """
    return (
        StateTtlConfig.new_builder(Time.milliseconds(ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(10, False)
        .cleanup_full_snapshot()
        .build()
    )


# --- scoring ---------------------------------------------------------------------------------

DEPARTMENT_OUTPUTS = {dept: OutputTag(f"dept-{dept}", BYTES) for dept in DEPARTMENTS.values()}


class DecodeRecords(MapFunction):
    """Bytes -> record dict with the shared codec. A record our own jobs wrote that does not
    decode is a bug, not bad input: it fails the task."""

    def __init__(self, record_type: str):
        self.record_type = record_type

    def map(self, value):
        return codec.decode(value, expected=self.record_type).record


class ComputeSenderFeatures(KeyedCoProcessFunction):
    """Keyed by sender. Input 1: routed documents -> (shard, PendingDocument) with features.
    Input 2: this job's own predictions, read back from the predictions log, which feed the
    sender's recent label shares (`SenderHistory.record_label`).

    State: the sender's history (TTL), and an idle timer that clears a silent sender.
    """

    def __init__(self, settings, config):
        self.settings, self.config = settings, config

    def open(self, runtime_context: RuntimeContext):
        history = ValueStateDescriptor("sender_history", Types.PICKLED_BYTE_ARRAY())
        history.enable_time_to_live(_ttl(self.config.sender_state_ttl_ms))
        self.history = runtime_context.get_state(history)
        self.touched = runtime_context.get_state(ValueStateDescriptor("touched_ms", Types.LONG()))
        settings = self.settings
        self.mirror = FeatureMirror(lambda: settings.redis_client(socket_timeout=2, socket_connect_timeout=2),
                                    self.config.redis_namespace, self.config.redis_ttl_s)
        self.features = SenderFeatures(self.mirror)
        group = runtime_context.get_metrics_group()
        self.outages = 0
        self.outage_counter = group.counter("redis_outages")
        subtask, parallelism = _subtask(runtime_context)
        self.shard = shard_keys(parallelism)[subtask]

    def process_element1(self, routed, ctx: KeyedCoProcessFunction.Context):
        history = self.history.value() or self.features.warm_start(routed["sender"])
        pending = self.features.observe(history, routed)
        self.history.update(history)
        now = ctx.timer_service().current_processing_time()
        if self.touched.value() is None:
            ctx.timer_service().register_processing_time_timer(now + self.config.sender_idle_ms)
        self.touched.update(now)
        self._count_outages()
        yield self.shard, pending

    def process_element2(self, prediction, ctx: KeyedCoProcessFunction.Context):
        history = self.history.value()
        if history is not None:
            history.record_label(prediction["label"])
            self.history.update(history)

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        touched = self.touched.value()
        if touched is not None and timestamp - touched < self.config.sender_idle_ms:
            ctx.timer_service().register_processing_time_timer(touched + self.config.sender_idle_ms)
            return
        self.history.clear()
        self.touched.clear()

    def _count_outages(self):
        if self.mirror.stats.outages != self.outages:
            self.outage_counter.inc(self.mirror.stats.outages - self.outages)
            self.outages = self.mirror.stats.outages

    def close(self):
        self.mirror.close()


class ScoreMicroBatches(KeyedProcessFunction):
    """Keyed by shard: buffers documents in checkpointed list state and scores them with one
    onnxruntime call per model when the buffer is full, when its oldest entry waited
    `max_batch_delay_ms`, or when a bounded input ends. Emits predictions (main output) and
    each to its department's output.
    """

    def __init__(self, config):
        self.config = config

    def open(self, runtime_context: RuntimeContext):
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("batch", Types.PICKLED_BYTE_ARRAY()))
        self.end_timer = runtime_context.get_state(ValueStateDescriptor("end_of_input_timer", Types.LONG()))
        self.sizes: dict[int, int] = {}
        # onnxruntime (pybind11) deadlocks when imported or called from a thread-mode (pemja) task
        # thread, whose thread state pybind11's GIL handling does not know; a thread Python itself
        # started is fine. So the sessions live on, and every batch runs on, one such thread.
        self.onnx_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.scorer = self.onnx_thread.submit(BatchScorer, self.config).result()  # once per operator instance

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        shard, pending = item
        self.buffer.add(pending)
        size = self.sizes.get(shard)
        size = sum(1 for _ in self.buffer.get()) if size is None else size + 1  # after a restore: count
        timers = ctx.timer_service()
        if size == 1:
            timers.register_processing_time_timer(timers.current_processing_time() + self.config.max_batch_delay_ms)
        if self.end_timer.value() is None:
            # The sources emit no watermarks, so event time only advances (to the maximum) when a
            # bounded input ends: this one timer per shard scores what is left then. Its time is a
            # plausible record timestamp, which Kafka requires of what the flush emits.
            self.end_timer.update(timers.current_processing_time())
            timers.register_event_time_timer(self.end_timer.value())
        self.sizes[shard] = size
        if size >= self.config.batch_size:
            yield from self._flush(shard, timers.current_processing_time())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        yield from self._flush(ctx.get_current_key(), ctx.timer_service().current_processing_time())

    def _flush(self, shard: int, now_ms: int):
        batch = list(self.buffer.get() or [])
        self.buffer.clear()
        self.sizes[shard] = 0
        if not batch:
            return
        for department, prediction in self.onnx_thread.submit(self.scorer.score, batch, int(now_ms)).result():
            yield DEPARTMENT_OUTPUTS[department], prediction
            yield prediction

    def close(self):
        self.onnx_thread.shutdown()


# --- accuracy --------------------------------------------------------------------------------

ACCURACY_OUTPUTS = {key: OutputTag(key, BYTES) for key in ("metrics", "alerts", "retraining_requests", "labelled_examples")}


class EventTimeOf(TimestampAssigner):
    """Event time of a decoded record: a prediction's received_ms, a truth's sent_ms."""

    def __init__(self, field_name: str):
        self.field_name = field_name

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value[self.field_name]


class JoinPredictionsWithTruth(KeyedCoProcessFunction):
    """Keyed by doc_id: `Joiner` over predictions (input 1) and ground truth (input 2).

    Emits the join's events (for the metrics) and labelled examples (side output). The pair
    state lives in keyed state; event-time timers end each side's wait.
    """

    def __init__(self, config):
        self.config = config

    def open(self, runtime_context: RuntimeContext):
        descriptor = ValueStateDescriptor("pair", Types.PICKLED_BYTE_ARRAY())
        descriptor.enable_time_to_live(_ttl(self.config.truth_wait_ms + self.config.remember_closed_ms))  # a safety net
        self.pair = runtime_context.get_state(descriptor)
        self.joiner = Joiner(self.config)

    def process_element1(self, prediction, ctx: KeyedCoProcessFunction.Context):
        yield from self._settle(ctx, *self.joiner.on_prediction(self.pair.value(), prediction, ctx.timestamp()))

    def process_element2(self, truth, ctx: KeyedCoProcessFunction.Context):
        yield from self._settle(ctx, *self.joiner.on_truth(self.pair.value(), truth, ctx.timestamp()))

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        yield from self._settle(ctx, *self.joiner.on_timer(self.pair.value(), timestamp))

    def _settle(self, ctx, state, events):
        if state is None:
            self.pair.clear()
        else:
            self.pair.update(state)
            if state.next_timer_ms() is not None:
                ctx.timer_service().register_event_time_timer(state.next_timer_ms())
        for example in labelled_examples(events):
            yield ACCURACY_OUTPUTS["labelled_examples"], example.encode()
        for event in events:
            yield "\x1f".join(metrics_key(event)), event


class MapStateView(MutableMapping):
    """A MapState seen as the mutable mapping AccuracyTracker expects."""

    def __init__(self, state):
        self.state = state

    def __getitem__(self, key):
        if not self.state.contains(key):
            raise KeyError(key)
        return self.state.get(key)

    def __setitem__(self, key, value):
        self.state.put(key, value)

    def __delitem__(self, key):
        self.state.remove(key)

    def __iter__(self):
        return iter(list(self.state.keys()))

    def __len__(self):
        return sum(1 for _ in self.state.keys())


class TrackAccuracy(KeyedProcessFunction):
    """Keyed by model name + version: `AccuracyTracker` over the join's events. On event-time
    timers it emits accuracy reports, alerts and retraining requests (side outputs) and keeps
    the dashboard hash in Redis (with a TTL; a Redis outage is logged once and skipped)."""

    def __init__(self, settings, config, redis_ttl_s: int):
        self.settings, self.config, self.redis_ttl_s = settings, config, redis_ttl_s

    def open(self, runtime_context: RuntimeContext):
        self.metrics = runtime_context.get_state(ValueStateDescriptor("model_metrics", Types.PICKLED_BYTE_ARRAY()))
        self.panes = MapStateView(runtime_context.get_map_state(MapStateDescriptor("panes", Types.LONG(), Types.PICKLED_BYTE_ARRAY())))
        self.tracker = AccuracyTracker(self.config)
        self.redis = DashboardWriter(self.settings.redis_client(socket_timeout=2, socket_connect_timeout=2), self.redis_ttl_s)

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        state = self.tracker.apply(self.metrics.value(), self.panes, item[1])
        self._store(state, ctx)
        if self.tracker.next_timer_ms(state) is None:  # no window will report (orphan truths): show the counts now
            self.redis.write(self.tracker.redis_key(state), self.tracker.redis_mapping(state, _now_ms()))
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        state = self.metrics.value()
        outgoing = self.tracker.on_timer(state, self.panes, timestamp, _now_ms())
        self._store(state, ctx)
        self.redis.write(self.tracker.redis_key(state), self.tracker.redis_mapping(state, _now_ms()))
        for record in outgoing:
            yield ACCURACY_OUTPUTS[record.topic], record.encode()

    def _store(self, state, ctx):
        self.metrics.update(state)
        due = self.tracker.next_timer_ms(state)
        if due is not None:
            ctx.timer_service().register_event_time_timer(due)
