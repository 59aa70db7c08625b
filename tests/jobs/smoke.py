"""Smoke job (a test fixture): Kafka bytes -> a Python function that touches Redis -> Kafka.

It proves the plumbing: the connector jar, the Python workers, Redis from a worker, and the
transactional KafkaSink. The bytes pass through unchanged; Redis counts them per run id.
Run embedded with `python -m tests.jobs.smoke`, or on the session cluster with `flink run -py`.
"""

from __future__ import annotations

import argparse
import sys

from pyflink.datastream import DataStream, MapFunction, RuntimeContext

from config.settings import Settings
from jobs.connectors import BYTES, read_records, write_bytes
from jobs.environment import make_env
from schemas.redis_keys import smoke_counter_key
from schemas.units import DAY_S


class CountInRedis(MapFunction):
    """Counts every (value, topic, partition, offset) row under `smoke_counter_key(run_id)`; passes the value on unchanged."""

    def __init__(self, settings: Settings, run_id: str):
        self.settings, self.run_id = settings, run_id
        self.client = None

    def open(self, runtime_context: RuntimeContext):
        self.client = self.settings.redis_client("smoke")

    def map(self, row):
        pipe = self.client.pipeline()
        pipe.incr(smoke_counter_key(self.run_id))
        pipe.expire(smoke_counter_key(self.run_id), DAY_S)
        pipe.execute()
        return bytes(row[0])

    def close(self):
        if self.client is not None:
            self.client.close()


def build(raw: DataStream, settings: Settings, run_id: str) -> DataStream:
    return raw.map(CountInRedis(settings, run_id), output_type=BYTES).name("count in redis").uid("smoke-count-in-redis")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests/jobs/smoke.py", description=__doc__)
    parser.add_argument("--input", required=True, help="topic to read (bounded: up to its latest offset at start)")
    parser.add_argument("--output", required=True, help="topic to write")
    parser.add_argument("--run-id", required=True, help="Redis counter key suffix: mailroom:smoke:<run-id>")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    env = make_env(settings, "smoke")
    raw = read_records(env, settings, [args.input], f"smoke-{args.run_id}", bounded=True)
    build(raw, settings, args.run_id).sink_to(write_bytes(settings, args.output, f"smoke-{args.run_id}")).name("kafka sink").uid("smoke-sink")
    env.execute(f"mailroom-smoke-{args.run_id}")


if __name__ == "__main__":
    main(sys.argv[1:])
