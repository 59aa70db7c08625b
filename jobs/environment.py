"""The one place that turns Settings into a PyFlink execution environment."""

from __future__ import annotations

import os
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from config.flinkconf import embedded_ui_port, job_config
from config.settings import Settings


def make_env(settings: Settings, job: str, parallelism: int | None = None, restore_from: str | None = None) -> StreamExecutionEnvironment:
    """An environment with the project's Flink config and the Kafka connector jar.

    Run as a plain Python program this starts a local MiniCluster; under `flink run -py` the
    same call picks up the session cluster the program was submitted to. Checkpoints go to
    <run_dir>/checkpoints/<job>/; `restore_from` resumes from a checkpoint or savepoint path.
    """
    config = Configuration()
    for key, value in job_config(settings).items():
        config.set_string(key, value)
    config.set_string("execution.checkpointing.dir", checkpoint_root(settings, job).as_uri())
    if embedded():
        config.set_string("rest.port", str(embedded_ui_port(settings, job)))  # the MiniCluster's web UI
    if restore_from:
        config.set_string("execution.state-recovery.path", restore_from)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(settings.connector_jar.resolve().as_uri())
    if parallelism:
        env.set_parallelism(parallelism)
    return env


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
