"""The one place that turns Settings into a PyFlink execution environment."""

from __future__ import annotations

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from mailroom.flinkconf import job_config
from mailroom.settings import Settings


def make_env(settings: Settings, parallelism: int | None = None) -> StreamExecutionEnvironment:
    """An environment with the project's Flink config and the Kafka connector jar.

    Run as a plain Python program this starts a local MiniCluster; under `flink run -py` the
    same call picks up the session cluster the program was submitted to.
    """
    config = Configuration()
    for key, value in job_config(settings).items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(settings.connector_jar.resolve().as_uri())
    if parallelism:
        env.set_parallelism(parallelism)
    return env
