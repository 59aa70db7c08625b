"""Flink adapters: the only module under udfs/ that imports pyflink. No business logic here."""

from __future__ import annotations

from pyflink.datastream import MapFunction, RuntimeContext

from udfs.smoke import RedisCounter


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
