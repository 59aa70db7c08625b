"""The accuracy job's Flink adapters over `udfs.joining.Joiner` / `ShadowJoiner` and
`udfs.metrics.AccuracyTracker` / `ShadowTracker`."""

from __future__ import annotations

from collections.abc import MutableMapping

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from udfs.adapters.common import BYTES, FailurePath, OperatorMetrics, now_ms, state_ttl
from udfs.dashboard import DashboardWriter
from udfs.joining import JOIN_VERSION, Joiner, ShadowJoiner, labelled_examples, labelled_shadow_pairs
from udfs.metrics import AccuracyTracker, ModelMetrics, ShadowTracker, metrics_key, shadow_metrics_key
from udfs.operator_metrics import AlertStates, join_counts

JOB = "accuracy"
JOIN_OUTPUTS = ("labelled_examples", "labelled_shadow_pairs")  # side outputs of the joins; the others come from the metrics
ACCURACY_OUTPUTS = {key: OutputTag(key, BYTES) for key in ("metrics", "alerts", "retraining_requests", *JOIN_OUTPUTS)}


class EventTimeOf(TimestampAssigner):
    """Event time of a decoded (record, source) pair: a prediction's or shadow pair's received_ms, a truth's sent_ms."""

    def __init__(self, field_name: str):
        self.field_name = field_name

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value[0][self.field_name]


class JoinPredictionsWithTruth(KeyedCoProcessFunction):
    """Keyed by doc_id: `Joiner` over (prediction, source) (input 1) and (truth, source) (input 2).

    Emits the join's events (for the metrics) and labelled examples (side output). The pair
    state lives in keyed state; event-time timers end each side's wait. A record the join
    raises on is dead-lettered (`FailurePath`) and the pair's state stays as it was.
    Counts JOIN_OUTCOMES{outcome}, pushed per `FlushPolicy` (records, timers, close).
    """

    def __init__(self, config):
        self.config = config

    joiner_type = Joiner

    def open(self, runtime_context: RuntimeContext):
        descriptor = ValueStateDescriptor("pair", Types.PICKLED_BYTE_ARRAY())
        descriptor.enable_time_to_live(state_ttl(self.config.truth_wait_ms + self.config.remember_closed_ms))  # a safety net
        self.pair = runtime_context.get_state(descriptor)
        self.joiner = self.joiner_type(self.config)
        self.failures = FailurePath(runtime_context, JOB, JOIN_VERSION, self.config.max_failures_per_minute)
        self.metrics = OperatorMetrics(runtime_context)

    def process_element1(self, item, ctx: KeyedCoProcessFunction.Context):
        prediction, source = item
        yield from self._apply(ctx, source, prediction.get("doc_id"), self.joiner.on_prediction, prediction)

    def process_element2(self, item, ctx: KeyedCoProcessFunction.Context):
        truth, source = item
        yield from self._apply(ctx, source, truth.get("doc_id"), self.joiner.on_truth, truth)

    def on_timer(self, timestamp: int, ctx: KeyedCoProcessFunction.OnTimerContext):
        yield from self._settle(ctx, *self.joiner.on_timer(self.pair.value(), timestamp))
        self.metrics.timer()

    def close(self):
        self.metrics.push()

    def _apply(self, ctx, source, doc_id, step, record):
        try:
            state, events = step(self.pair.value(), record, ctx.timestamp())
        except Exception as exc:  # a record the join cannot take: this record only
            yield self.failures.dead_letter(source, exc, doc_id)
            return
        yield from self._settle(ctx, state, events)
        self.metrics.record()

    def _settle(self, ctx, state, events):
        join_counts(self.metrics.counts, events)
        if state is None:
            self.pair.clear()
        else:
            self.pair.update(state)
            if state.next_timer_ms() is not None:
                ctx.timer_service().register_event_time_timer(state.next_timer_ms())
        yield from self._emit(events)

    def _emit(self, events):
        """Labelled examples (side output), and every event keyed for the metrics."""
        for example in labelled_examples(events):
            yield ACCURACY_OUTPUTS["labelled_examples"], example.encode()
        for event in events:
            yield "\x1f".join(metrics_key(event)), event


class JoinShadowsWithTruth(JoinPredictionsWithTruth):
    """Keyed by doc_id: `ShadowJoiner` over (shadow pair, source) (input 1) and (truth, source)
    (input 2). Emits labelled shadow pairs (side output, for the judge) and the events keyed for
    the paired metrics; truths that matched no shadow pair are dropped (`shadow_metrics_key`).
    No labelled examples: the prediction join writes them."""

    joiner_type = ShadowJoiner

    def _emit(self, events):
        for pair in labelled_shadow_pairs(events):
            yield ACCURACY_OUTPUTS["labelled_shadow_pairs"], pair.encode()
        for event in events:
            key = shadow_metrics_key(event)
            if key is not None:
                yield "\x1f".join(key), event


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
    """Keyed by model name + version + slot: `AccuracyTracker` over the join's events. On
    event-time timers it emits accuracy reports, alerts and retraining requests (side outputs)
    and keeps the dashboard hash in Redis (with a TTL; a Redis outage is logged once and
    skipped). `redis_client_factory` (None: no dashboard) makes the Redis client. Sets
    ALERT_OPEN{model,slot} on every timer (`AlertStates`)."""

    tracker_type = AccuracyTracker

    def __init__(self, config, redis_ttl_s: int, redis_client_factory=None):
        self.config, self.redis_ttl_s, self.redis_client_factory = config, redis_ttl_s, redis_client_factory

    def open(self, runtime_context: RuntimeContext):
        self.metrics = runtime_context.get_state(ValueStateDescriptor("model_metrics", Types.PICKLED_BYTE_ARRAY()))
        self.panes = MapStateView(runtime_context.get_map_state(MapStateDescriptor("panes", Types.LONG(), Types.PICKLED_BYTE_ARRAY())))
        self.tracker = self.tracker_type(self.config)
        self.redis = None if self.redis_client_factory is None else DashboardWriter(self.redis_client_factory(), self.redis_ttl_s)
        self.operator_metrics, self.alerts = OperatorMetrics(runtime_context), AlertStates()

    def process_element(self, item, ctx: KeyedProcessFunction.Context):
        state = self.tracker.apply(self.metrics.value(), self.panes, item[1])
        self._store(state, ctx)
        if self.tracker.next_timer_ms(state) is None:  # no window will report (orphan truths): show the counts now
            self._show(state)
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        state = self.metrics.value()
        outgoing = self.tracker.on_timer(state, self.panes, timestamp, now_ms())
        self._store(state, ctx)
        self._show(state)
        if isinstance(state, ModelMetrics) and state.model_name:  # not the orphans' key, not a shadow pair
            self.operator_metrics.push(self.alerts.counts(state.model_name, state.model_version, state.slot, state.alerting))
        for record in outgoing:
            yield ACCURACY_OUTPUTS[record.topic], record.encode()

    def _show(self, state):
        if self.redis is not None:
            self.redis.write(self.tracker.redis_key(state), self.tracker.redis_mapping(state, now_ms()))

    def _store(self, state, ctx):
        self.metrics.update(state)
        due = self.tracker.next_timer_ms(state)
        if due is not None:
            ctx.timer_service().register_event_time_timer(due)


class TrackShadowPairs(TrackAccuracy):
    """Keyed by kind + champion + challenger: `ShadowTracker` over the shadow join's events. On
    event-time timers it emits shadow reports (side output "metrics") and keeps the pair's
    dashboard hash in Redis, as `TrackAccuracy` does."""

    tracker_type = ShadowTracker
