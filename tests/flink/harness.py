"""A testing source and sink for the jobs' `build(...)` functions, in the spirit of Bytewax's
TestingSource/TestingSink: a list of Kafka-like records in, a dict of lists out. No Kafka."""

from __future__ import annotations

from collections import defaultdict

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment

KAFKA_ROW = Types.ROW_NAMED(["value", "topic", "partition", "offset"],
                            [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG()])


def kafka_rows(env: StreamExecutionEnvironment, values: list[bytes], topic: str, partition: int = 0) -> DataStream:
    """A bounded stream of (value, topic, partition, offset) rows, as `jobs.connectors.read_records` gives."""
    rows = [Row(value, topic, partition, offset) for offset, value in enumerate(values)]
    return env.from_collection(rows, type_info=KAFKA_ROW)


def collect(outputs: dict[str, DataStream]) -> dict[str, list[bytes]]:
    """Run the job to the end of its bounded inputs; every output's values, by output name."""
    tagged = [stream.map(lambda value, name=name: (name, bytes(value)), output_type=Types.PICKLED_BYTE_ARRAY()).name(f"collect {name}")
              for name, stream in outputs.items()]
    merged = tagged[0].union(*tagged[1:]) if len(tagged) > 1 else tagged[0]
    collected: dict[str, list[bytes]] = defaultdict(list)
    with merged.execute_and_collect() as results:
        for name, value in results:
            collected[name].append(value)
    return {name: collected.get(name, []) for name in outputs}
