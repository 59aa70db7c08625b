"""The router job's Flink adapters over `udfs.routing.Router` and `DuplicateWindow`."""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from udfs.adapters.common import BYTES, DEAD_LETTERS, OperatorMetrics, now_ms, source_of, state_ttl
from schemas.metric_names import DOCUMENTS_IN, ROUTED
from udfs.operator_metrics import route_counts, routed_counts
from udfs.routing import Destination, DuplicateWindow, Router

ROUTED_TEXT = OutputTag("routed-text", BYTES)
ROUTED_SCANS = OutputTag("routed-scans", BYTES)


class RouteDocuments(ProcessFunction):
    """Decode, validate and clean each raw message (`Router.route`).

    Main output: (doc_id, destination, routed bytes, original bytes, topic, partition, offset)
    for the duplicate check; dead letters go to `DEAD_LETTERS`. Unexpected exceptions propagate:
    the task fails and Flink restarts from the last checkpoint. Counts DOCUMENTS_IN and
    DEAD_LETTERS{reason}: pushed with every dead letter (rare), else per `FlushPolicy` (a
    non-keyed function has no timers: the last second's documents wait for the next record).
    """

    def __init__(self, config):
        self.config = config
        self.router = None

    def open(self, runtime_context: RuntimeContext):
        self.router = Router(self.config)
        self.metrics = OperatorMetrics(runtime_context)
        self.metrics.declare(DOCUMENTS_IN)

    def process_element(self, row, ctx: ProcessFunction.Context):
        value, topic, partition, offset = source_of(row)
        result = self.router.route(value, topic, partition, offset, now_ms())
        route_counts(self.metrics.counts, result)
        if result.destination is Destination.DEAD_LETTER:
            self.metrics.push()
            yield DEAD_LETTERS, result.value
        else:
            self.metrics.record()
            yield result.doc_id, result.destination.value, result.value, value, topic, partition, offset

    def close(self):
        self.metrics.push()


class DropDuplicateIds(KeyedProcessFunction):
    """Keyed by doc_id: the first sighting within the window passes, later ones are dead-lettered.

    The first-seen time lives in keyed state whose TTL is the window, so state stays bounded.
    Counts ROUTED{destination} and DEAD_LETTERS{reason=DUPLICATE_ID}: pushed per `FlushPolicy`,
    and by a processing-time timer a flush interval after the first count still pending.
    """

    def __init__(self, config):
        self.config = config

    def open(self, runtime_context: RuntimeContext):
        self.router = Router(self.config)
        self.window = DuplicateWindow(self.config.duplicate_window_ms)
        descriptor = ValueStateDescriptor("first_seen_ms", Types.LONG())
        descriptor.enable_time_to_live(state_ttl(self.config.duplicate_window_ms))
        self.first_seen = runtime_context.get_state(descriptor)
        self.metrics = OperatorMetrics(runtime_context)
        for destination in (Destination.TEXT, Destination.SCANS):
            self.metrics.declare(ROUTED, destination.name.lower())
        self.flush_timer_set = False

    def process_element(self, candidate, ctx: KeyedProcessFunction.Context):
        doc_id, destination, routed, original, topic, partition, offset = candidate
        now = now_ms()
        duplicate = self.window.is_duplicate(self.first_seen.value(), now)
        routed_counts(self.metrics.counts, None if duplicate else destination)
        self.metrics.record()
        if self.metrics.counts and not self.flush_timer_set:
            ctx.timer_service().register_processing_time_timer(now + self.metrics.policy.interval_ms)
            self.flush_timer_set = True
        if duplicate:
            yield DEAD_LETTERS, self.router.duplicate(original, topic, partition, offset, now, doc_id).value
            return
        self.first_seen.update(now)
        yield (ROUTED_TEXT if destination == Destination.TEXT.value else ROUTED_SCANS), routed

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        self.flush_timer_set = False
        self.metrics.push()

    def close(self):
        self.metrics.push()
