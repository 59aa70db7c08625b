"""Kafka sources (rows of value + coordinates) and sinks of raw bytes, configured the same way for every job."""

from __future__ import annotations

import re

from pyflink.common import Types
from pyflink.java_gateway import get_gateway
from pyflink.common.serialization import ByteArraySchema
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink

from config.settings import Settings
from schemas.topics import BIG_MESSAGE_BYTES

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
# Must stay below the broker's transaction.max.timeout.ms (15 min, see mailroom/stack.py).
TRANSACTION_TIMEOUT_MS = "600000"


# the connector jar shades the Kafka client: its login module lives under Flink's package
SCRAM_LOGIN_MODULE = "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule"


def sasl_properties(settings: Settings) -> dict[str, str]:
    """The Kafka client properties that authenticate as `settings.principal` (SASL/SCRAM on loopback).

    Kafka's client logs its configuration with passwords `[hidden]`; the JAAS value is a Password type there."""
    principal = settings.principal
    password = settings.kafka_password(principal)
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": f'{SCRAM_LOGIN_MODULE} required username="{principal}" password="{password}";',
    }


def _sql_string(value: str) -> str:
    return value.replace("'", "''")


def write_bytes(settings: Settings, topic: str, transactional_id_prefix: str, exactly_once: bool = True) -> KafkaSink:
    """A sink of raw `bytes` values into one topic: transactional (exactly-once), or, for --delivery at-least-once,
    plain idempotent writes that readers see at once.

    Transactional ids are pooled (the connector's POOLING naming strategy: a subtask reuses a few ids) rather than
    one new id per checkpoint (its default, INCREMENTING): the broker keeps every id it has seen for
    transactional.id.expiration.ms (7 days), so at a checkpoint every 500 ms eleven sinks would leave it millions.
    Pooling needs Read on the sink's topic (it asks the broker which transactions a run before it left open:
    schemas/access.py); PyFlink has no wrapper for the strategy, so it is set on the Java builder."""
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.bootstrap_servers)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder().set_topic(topic).set_value_serialization_schema(ByteArraySchema()).build()
        )
        .set_property("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
        .set_property("max.request.size", str(BIG_MESSAGE_BYTES))  # dead letters carry originals
        .set_property("buffer.memory", str(2 * BIG_MESSAGE_BYTES))  # an upper bound, allocated as needed
    )
    for key, value in sasl_properties(settings).items():
        builder = builder.set_property(key, value)
    if exactly_once:
        builder = builder.set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE).set_transactional_id_prefix(transactional_id_prefix)
        pooling = get_gateway().jvm.org.apache.flink.connector.kafka.sink.TransactionNamingStrategy.POOLING
        builder._j_builder.setTransactionNamingStrategy(pooling)
    else:
        builder = builder.set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
    return builder.build()


def read_records(
    env: StreamExecutionEnvironment,
    settings: Settings,
    topics: list[str],
    group_id: str,
    bounded: bool = False,
    start_ms: int | None = None,
) -> DataStream:
    """Rows of (value, topic, partition, offset) from `topics`, read_committed.

    The DataStream KafkaSource in PyFlink only hands Python the value; a dead letter needs the
    source coordinates too, so this reads through the Kafka table connector's metadata columns
    (same KafkaSource underneath, same checkpointed offsets) with the `raw` format: the value
    arrives as the original bytes, or None for a null (tombstone) message. `bounded=True` stops
    at the offsets that were latest at start; `start_ms` starts at the first record written at
    or after that time instead of the group's offsets.
    """
    t_env = StreamTableEnvironment.create(env)
    sasl = "".join(f"'properties.{key}' = '{_sql_string(value)}',\n          " for key, value in sasl_properties(settings).items())
    table = "kafka_" + re.sub(r"\W", "_", "_".join(topics))
    if start_ms is None:
        startup = "'scan.startup.mode' = 'group-offsets',"
    else:
        startup = f"'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '{start_ms}',"
    t_env.execute_sql(
        f"""
        CREATE TEMPORARY TABLE {table} (
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{";".join(topics)}',
          'properties.bootstrap.servers' = '{settings.bootstrap_servers}',
          'properties.group.id' = '{group_id}',
          'properties.isolation.level' = 'read_committed',
          'properties.auto.offset.reset' = 'earliest',
          'properties.max.partition.fetch.bytes' = '{BIG_MESSAGE_BYTES}',
          {sasl}          {startup}
          {"'scan.bounded.mode' = 'latest-offset'," if bounded else ""}
          'format' = 'raw'
        )"""
    )
    return t_env.to_data_stream(t_env.from_path(table))
