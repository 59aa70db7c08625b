"""The session cluster's declared shape, without starting it: bounds, each TaskManager's identity, the slots."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from config.flinkconf import REPORTER_PORT, cluster_config
from config.monitoring import MAX_TASKMANAGERS, metrics_port
from config.settings import Settings
from mailroom.stack import FlinkCluster, StackError


def _settings(tmp_path, **env) -> Settings:
    return Settings.from_env({"MAILROOM_RUN_DIR": str(tmp_path), "MAILROOM_REDIS_PASSWORD": "x", **env})


def test_shape_comes_from_arguments_else_the_environment(tmp_path):
    assert (FlinkCluster(_settings(tmp_path)).taskmanagers, FlinkCluster(_settings(tmp_path)).slots) == (1, 1)
    env = _settings(tmp_path, MAILROOM_FLINK_TASKMANAGERS="3", MAILROOM_FLINK_SLOTS="2")
    assert (FlinkCluster(env).taskmanagers, FlinkCluster(env).slots) == (3, 2)
    assert FlinkCluster(env, taskmanagers=2).taskmanagers == 2
    # a shape file only counts while its JobManager runs (none here): a stale one from a crash is ignored
    (tmp_path / "flink").mkdir()
    (tmp_path / "flink" / "shape.json").write_text(json.dumps({"taskmanagers": 5, "slots": 4}))
    assert FlinkCluster(_settings(tmp_path)).taskmanagers == 1


@pytest.mark.parametrize("taskmanagers,slots,says", [(0, 1, "give 1 to"), (MAX_TASKMANAGERS + 1, 1, "give 1 to"), (1, 0, "at least 1")])
def test_shapes_out_of_bounds_are_refused_with_the_option_to_change(tmp_path, taskmanagers, slots, says):
    with pytest.raises(StackError, match=says):
        FlinkCluster(_settings(tmp_path), taskmanagers=taskmanagers, slots=slots)


def test_each_taskmanager_has_its_own_resource_id_and_reporter_port(tmp_path):
    s = _settings(tmp_path)
    cluster = FlinkCluster(s, taskmanagers=3)
    properties = [cluster._taskmanager_properties(i) for i in range(3)]
    assert [p[1] for p in properties] == [f"taskmanager.resource-id=mailroom-tm-{i}" for i in range(3)]
    assert [p[3] for p in properties] == [f"{REPORTER_PORT}={metrics_port(s, 'taskmanager') + i}" for i in range(3)]


def test_the_cluster_config_carries_the_declared_slots_and_spreads_subtasks(tmp_path):
    conf = cluster_config(FlinkCluster(_settings(tmp_path), slots=2).s)
    assert conf["taskmanager.numberOfTaskSlots"] == "2" and conf["cluster.evenly-spread-out-slots"] == "true"
    assert conf["restart-strategy.type"] == "exponential-delay"  # a lost TaskManager or broker is weathered, more than 3 times


def test_taskmanager_jvm_options_come_from_the_environment_beside_the_distributions(tmp_path):
    assert cluster_config(_settings(tmp_path))["env.java.opts.taskmanager"] == "-XX:+UseSerialGC"  # the default: measured cheaper
    assert "env.java.opts.taskmanager" not in cluster_config(replace(_settings(tmp_path), taskmanager_jvm_opts=""))  # the JVM chooses
    conf = cluster_config(_settings(tmp_path, MAILROOM_TASKMANAGER_JVM_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1"))
    assert conf["env.java.opts.taskmanager"] == "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in conf["env.java.opts.all"]  # Java 17's flags stay
