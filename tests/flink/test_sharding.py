"""udfs.sharding against the JVM: the keys it picks land on the subtasks it says."""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction
from pyflink.java_gateway import get_gateway

from jobs.environment import make_env
from udfs.adapters.common import subtask_info
from udfs.sharding import MAX_PARALLELISM, row_hash, shard_keys, subtask_of


def test_key_group_assignment_matches_flink():
    jvm = get_gateway().jvm
    for key in (*range(-50, 300), 2**31 - 1, -(2**31), 123_456_789):
        row = jvm.org.apache.flink.types.Row(1)
        row.setField(0, jvm.java.lang.Integer.valueOf(key))
        assert row_hash(key) == row.hashCode()
        for parallelism in (1, 2, 3, 4, 8):
            assert subtask_of(key, parallelism) == jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment.assignKeyToParallelOperator(
                row, MAX_PARALLELISM, parallelism)


class WhereAmI(KeyedProcessFunction):
    def open(self, runtime_context):
        self.subtask = subtask_info(runtime_context)[0]

    def process_element(self, key, ctx):
        yield key, self.subtask


def test_integer_keys_from_python_reach_the_predicted_subtask(test_settings):
    env = make_env(test_settings, "smoke", parallelism=2)
    env.set_max_parallelism(MAX_PARALLELISM)
    keys = shard_keys(2) * 50
    stream = env.from_collection(keys, type_info=Types.INT()).key_by(lambda k: k, key_type=Types.INT())
    with stream.process(WhereAmI(), output_type=Types.TUPLE([Types.INT(), Types.INT()])).execute_and_collect() as results:
        placed = set(results)
    assert placed == {(key, index) for index, key in enumerate(shard_keys(2))}
