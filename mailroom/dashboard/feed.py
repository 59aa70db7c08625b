"""The operational topics the dashboard shows, read in the background: accuracy and shadow
reports (metrics), alerts, model events and model decisions, the newest `keep` of each."""

from __future__ import annotations

import logging
import threading
from collections import deque

from config.settings import Settings
from mailroom.kafkautil import client_config
from schemas import codec
from schemas.topics import BIG_MESSAGE_BYTES as MAX_MESSAGE_BYTES, topic_name

log = logging.getLogger("mailroom.dashboard")
FEED_TOPICS = ("metrics", "alerts", "model_events", "model_decisions")


class TopicFeed:
    """A read_committed consumer of FEED_TOPICS from their beginning, on a daemon thread; `snapshot()`
    gives lists by record type (accuracy_report, shadow_report, alert, model_event, model_decision)."""

    def __init__(self, settings: Settings, keep: int = 5000):
        self.settings, self.keep = settings.as_principal("dashboard"), keep
        self.records: dict[str, deque] = {}
        self.unreadable = 0
        self.connected = False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="topic-feed", daemon=True)

    def start(self) -> "TopicFeed":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def snapshot(self) -> dict[str, list[dict]]:
        with self.lock:
            return {kind: list(records) for kind, records in self.records.items()}

    def add(self, value: bytes) -> None:
        """One message of a feed topic, decoded; a message that does not decode is counted, not kept."""
        try:
            decoded = codec.decode(value)
        except codec.DecodeError:
            self.unreadable += 1
            return
        with self.lock:
            self.records.setdefault(decoded.record_type, deque(maxlen=self.keep)).append(decoded.record)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._consume()
            except Exception as exc:  # the broker is down or restarting: try again
                self.connected = False
                log.warning("dashboard feed: Kafka unavailable (%s); retrying", type(exc).__name__)
                self.stop.wait(5)

    def _consume(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(**client_config(self.settings), isolation_level="read_committed",
                                 enable_auto_commit=False, fetch_max_bytes=MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
        try:
            names = [topic_name(key, self.settings.topic_prefix) for key in FEED_TOPICS]
            partitions = [TopicPartition(name, p) for name in names for p in sorted(consumer.partitions_for_topic(name) or [])]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            with self.lock:
                self.records.clear()
            self.connected = True
            while not self.stop.is_set():
                for batch in consumer.poll(timeout_ms=1000, max_records=5000).values():
                    for message in batch:
                        self.add(message.value)
        finally:
            consumer.close()
