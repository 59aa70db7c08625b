"""Flink adapters: the only module under udfs/ that imports pyflink. No business logic here."""

from __future__ import annotations

import time

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, MapFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from udfs.routing import Destination, DuplicateWindow, Router
from udfs.smoke import RedisCounter

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
DEAD_LETTERS = OutputTag("dead-letters", BYTES)
ROUTED_TEXT = OutputTag("routed-text", BYTES)
ROUTED_SCANS = OutputTag("routed-scans", BYTES)


class CountInRedisFunction(MapFunction):
    """Smoke fixture: `RedisCounter.count` on every record."""

    def __init__(self, settings, run_id: str):
        self.settings, self.run_id = settings, run_id
        self.counter = None

    def open(self, runtime_context: RuntimeContext):
        self.counter = RedisCounter(self.settings, self.run_id)
        self.counter.open()

    def map(self, value):
        return self.counter.count(value)

    def close(self):
        if self.counter:
            self.counter.close()


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ttl(ms: int) -> StateTtlConfig:
    return (
        StateTtlConfig.new_builder(Time.milliseconds(ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .build()
    )
