"""kafka-python helpers shared by tools and tests: a safe producer, a read_committed reader."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from config.settings import Settings

from schemas.topics import BIG_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # large scans; the router rejects what exceeds its own limit


def producer(settings: Settings, **overrides) -> KafkaProducer:
    """Idempotent producer, acknowledged by all in-sync replicas."""
    config = dict(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=MAX_MESSAGE_BYTES,
        compression_type=None,
    )
    config.update(overrides)
    return KafkaProducer(**config)


def admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15000)


def ensure_topics(settings: Settings, names: list[str], partitions: int = 1) -> None:
    """Create topics that do not exist (used for ad-hoc and test topics)."""
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        new = [NewTopic(n, partitions, 1, topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)}) for n in names if n not in existing]
        if new:
            try:
                client.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        client.close()


def delete_topics(settings: Settings, names: list[str]) -> None:
    client = admin(settings)
    try:
        client.delete_topics(names)
    except UnknownTopicOrPartitionError:
        pass
    finally:
        client.close()


def read_topic(settings: Settings, topic: str, min_count: int = 0, timeout_s: float = 30.0) -> list:
    """All committed records of `topic` (read_committed), from the beginning to the end.

    Waits up to `timeout_s` until at least `min_count` records are there; returns what it has.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        consumer_timeout_ms=500,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while True:
            for batch in consumer.poll(timeout_ms=500, max_records=10000).values():
                records.extend(batch)
            ends = consumer.end_offsets(partitions)
            caught_up = all(consumer.position(tp) >= ends[tp] for tp in partitions)
            if (caught_up and len(records) >= min_count) or time.monotonic() > deadline:
                return records
    finally:
        consumer.close()
