"""The one place that turns Settings into a PyFlink execution environment."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from config.flinkconf import REPORTER_PORT, embedded_ui_port, job_config, reporter_jars
from config.monitoring import metrics_port
from config.settings import ConfigError, Settings
from models.registry import RegistryError
from models.scoring import FeatureSetMismatch


REFUSALS = (ConfigError, FeatureSetMismatch, RegistryError)  # what stops a job before it starts, with a message
EXACTLY_ONCE, AT_LEAST_ONCE = "exactly-once", "at-least-once"  # --delivery
HASHMAP, ROCKSDB = "hashmap", "rocksdb"  # --state-backend
# Each job's state backend, by what its state must hold (figures from `mailroom soak`, 80 docs/s):
STATE_BACKENDS = {
    # the duplicate window: ~42 checkpointed bytes per doc_id, 24 h at 80/s = ~290 MB; expiry by TTL, which on
    # RocksDB needs a compaction filter that a thread-mode Python worker cannot create (see udfs.adapters.common)
    "router": HASHMAP,
    # per-sender history (TTL) and model slots: bounded by the number of senders, read and written per record
    "scoring": HASHMAP,
    # every prediction waits up to 7 days for its verdict, with its model inputs (~1.8 KB each): 48 M at 80/s, far
    # beyond a TaskManager's heap; its waits end by timers (no TTL), so RocksDB on disk, checkpointed incrementally
    "accuracy": ROCKSDB,
}


def refuse_to_start_on_errors(main: Callable) -> Callable:
    """A job's `main`: a configuration or model problem ends it with its message (exit 1), not a traceback."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except REFUSALS as exc:
            sys.exit(f"Refusing to start: {exc}")

    return run


def add_run_arguments(parser: argparse.ArgumentParser, bounded_help: str, failure_budget: int | None = None) -> None:
    """The arguments every job takes: parallelism, bounded runs, restore; and the failure budget
    of the jobs after the router (`failure_budget`: its default)."""
    parser.add_argument("--parallelism", type=int, default=None, help="operator parallelism (default: flink-conf)")
    parser.add_argument("--bounded", action="store_true", help=bounded_help)
    parser.add_argument("--restore-from", default=None, help="resume from this checkpoint or savepoint path")
    parser.add_argument("--delivery", choices=[EXACTLY_ONCE, AT_LEAST_ONCE], default=EXACTLY_ONCE,
                        help="exactly-once (default): transactional output, visible to read_committed readers when the checkpoint "
                        "that commits it completes, never twice; at-least-once: output visible at once, but a restart sends again "
                        "what followed the last checkpoint, for consumers that de-duplicate by doc_id")
    parser.add_argument("--state-backend", choices=[HASHMAP, ROCKSDB], default=None,
                        help="where keyed state lives: hashmap (the heap) or rocksdb (local disk, incremental checkpoints); "
                        "default: the job's own (router and scoring hashmap, accuracy rocksdb; see jobs.environment.STATE_BACKENDS)")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=None, metavar="MS",
                        help="checkpoint every MS ms, at least MS/2 ms after the last one ended (default: flink-conf/config.yaml's); "
                        "with exactly-once, how long output waits")
    parser.add_argument("--buffer-timeout-ms", type=int, default=None, metavar="MS",
                        help="send a partly filled network buffer between operators after MS ms (default: flink-conf/config.yaml's): "
                        "at low load each hop between operators may wait this long")
    if failure_budget is not None:
        parser.add_argument("--max-failures-per-minute", type=int, default=failure_budget,
                            help="records per minute (per subtask) that may be dead-lettered for a processing error before "
                            "the job fails: more is a bug, not bad records (default: %(default)s)")


def make_env(settings: Settings, job: str, parallelism: int | None = None, restore_from: str | None = None,
             delivery: str = EXACTLY_ONCE, checkpoint_interval_ms: int | None = None,
             state_backend: str | None = None, buffer_timeout_ms: int | None = None) -> StreamExecutionEnvironment:
    """An environment with the project's Flink config and the Kafka connector jar.

    Run as a plain Python program this starts a local MiniCluster; under `flink run -py` the
    same call picks up the session cluster the program was submitted to. An embedded job's Prometheus
    reporter listens on `settings.host:metrics_port(settings, job)`. Checkpoints go to
    <run_dir>/checkpoints/<job>/; `restore_from` resumes from a checkpoint or savepoint path. At-least-once
    `delivery` also checkpoints without aligning barriers (no input waits for a slow channel's barrier).
    Keyed state lives in `state_backend` (default: the job's, `STATE_BACKENDS`); RocksDB keeps its files under
    <run_dir>/flink/rocksdb/ and checkpoints incrementally. `checkpoint_interval_ms` and `buffer_timeout_ms` (None:
    flink-conf/config.yaml's) override the config's; the pause between checkpoints is then half the interval, as there
    (a fixed pause would bound how often a shorter interval can checkpoint).
    """
    config = Configuration()
    for key, value in job_config(settings).items():
        config.set_string(key, value)
    config.set_string("execution.checkpointing.dir", checkpoint_root(settings, job).as_uri())
    if embedded():
        config.set_string("rest.port", str(embedded_ui_port(settings, job)))  # the MiniCluster's web UI
        config.set_string(REPORTER_PORT, str(metrics_port(settings, job)))  # its Prometheus reporter
    for key, value in state_backend_config(settings, state_backend or STATE_BACKENDS.get(job, HASHMAP)).items():
        config.set_string(key, value)
    if restore_from:
        config.set_string("execution.state-recovery.path", restore_from)
    if delivery == AT_LEAST_ONCE:
        config.set_string("execution.checkpointing.mode", "AT_LEAST_ONCE")
    if checkpoint_interval_ms:
        config.set_string("execution.checkpointing.interval", f"{checkpoint_interval_ms}ms")
        config.set_string("execution.checkpointing.min-pause", f"{checkpoint_interval_ms // 2}ms")
    if buffer_timeout_ms is not None:
        config.set_string("execution.buffer-timeout.interval", f"{buffer_timeout_ms}ms")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(settings.connector_jar.resolve().as_uri())
    if embedded():  # the MiniCluster ignores plugins/: the reporter comes from the class path (one call: one class loader)
        env.add_jars(*(jar.as_uri() for jar in reporter_jars(settings)))
    if parallelism:
        env.set_parallelism(parallelism)
    return env


def state_backend_config(settings: Settings, backend: str) -> dict[str, str]:
    """The Flink options of a state backend.

    >>> state_backend_config(Settings(run_dir=Path("/r")), ROCKSDB)["execution.checkpointing.incremental"]
    'true'
    """
    if backend == HASHMAP:
        return {"state.backend.type": HASHMAP}
    if backend == ROCKSDB:
        return {"state.backend.type": ROCKSDB, "execution.checkpointing.incremental": "true",
                "state.backend.rocksdb.localdir": str((settings.run_dir / "flink" / "rocksdb").resolve())}
    raise ConfigError(f"unknown state backend {backend!r}: {HASHMAP} or {ROCKSDB}")


def checkpoint_root(settings: Settings, job: str) -> Path:
    return (settings.run_dir / "checkpoints" / job).resolve()


def latest_checkpoint(settings: Settings, job: str) -> Path | None:
    """The newest complete checkpoint (a chk-N folder with _metadata) of `job`, if any."""
    done = [p.parent for p in checkpoint_root(settings, job).glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None



def embedded() -> bool:
    """True when this program starts its own MiniCluster; False under `flink run`, whose
    client hands the program a gateway (PYFLINK_GATEWAY_PORT) and owns the REST settings."""
    return "PYFLINK_GATEWAY_PORT" not in os.environ
