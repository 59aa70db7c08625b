"""The hand-written peer: what a user would write instead of Mailroom, a kafka-python loop
from the routed topics to the department topics and predictions (`python -m mailroom.bench`)."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import signal
import threading

from kafka import ConsumerRebalanceListener

from config.settings import Settings
from mailroom.kafkautil import client_config
from schemas.units import now_ms as clock_ms  # the methods below take a `now_ms` argument
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name
from udfs.batching import MicroBatcher
from udfs.dead_letters import SourceRecord

_BUFFER = 0  # the peer's one buffer key


class PeerScorer:
    """The hand-written peer's logic: decode, scans read as the job reads them (ScanReader), sender
    features (a dict of SenderHistory), micro-batches of `config.batch_size` or
    `config.max_batch_delay_ms` (MicroBatcher), BatchScorer.

    `add` and `flush` return (department, department_document, prediction) to send. The decided
    label feeds the sender's history at once (the Flink job reads it back from the predictions topic).
    """

    def __init__(self, config, scorer=None):
        from udfs.reading import ScanReader
        from udfs.scoring import BatchScorer, SenderFeatures

        self.config = config
        self.scorer = scorer if scorer is not None else BatchScorer(config)
        self.reader = ScanReader(config.ocr, config.read_scans, config.ocr_cache_dir)
        self.features = SenderFeatures(mirror=None)
        self.histories: dict = {}
        self.pending: list = []
        self.batcher = MicroBatcher(config.batch_size, config.max_batch_delay_ms)

    def add(self, value: bytes, now_ms: int, topic: str = "", partition: int = -1, offset: int = -1) -> list[tuple[str, bytes, bytes]]:
        """Take one routed record (and where it was read); the batch's predictions once it is due."""
        from models.features import SenderHistory

        routed = codec.decode(value, expected="routed_document").record
        history = self.histories.get(routed["sender"])
        if history is None:
            history = self.histories[routed["sender"]] = SenderHistory()
        scan = self.reader.read(routed, now_ms) if routed["content_type"] == "IMAGE" else None
        self.pending.append(self.features.observe(history, routed, SourceRecord(value, topic, partition, offset), scan))
        return self.flush(now_ms) if self.batcher.added(_BUFFER, now_ms).flush else []

    def wait_ms(self, now_ms: int, idle_ms: int = 100) -> int:
        """How long to wait for input before the pending batch is due; `idle_ms` when none is pending."""
        wait = self.batcher.wait_ms(_BUFFER, now_ms)
        return idle_ms if wait is None else wait

    def is_due(self, now_ms: int) -> bool:
        """True when a pending batch's oldest document has waited `config.max_batch_delay_ms`."""
        return self.batcher.is_due(_BUFFER, now_ms)

    def flush(self, now_ms: int) -> list[tuple[str, bytes, bytes]]:
        batch, self.pending = self.pending, []
        self.batcher.flushed(_BUFFER)
        if not batch:
            return []
        scored = self.scorer.score(batch, now_ms).predictions
        for doc, (_, _, prediction) in zip(batch, scored):
            self.histories[doc.sender].record_label(codec.decode(prediction, expected="prediction").record["label"])
        return scored


class _LogAssignment(ConsumerRebalanceListener):
    """Says in the peer's log which partitions the group gave this process (none: it waits for a rebalance)."""

    def on_partitions_revoked(self, revoked) -> None:
        print(f"peer {os.getpid()}: revoked {len(revoked)} partitions", flush=True)

    def on_partitions_assigned(self, assigned) -> None:
        print(f"peer {os.getpid()}: assigned {len(assigned)} partitions: {sorted((tp.topic, tp.partition) for tp in assigned)}", flush=True)


def _joined_consumer(settings: Settings, topics: list[str], group_id: str):
    """A group consumer of `topics` that knows their partitions before it joins.

    kafka-python joins the group before its first metadata of the subscribed topics has arrived: the group leader's
    first assignment then holds no partitions ("No partition metadata for topic", seen at every start here), and it
    recovers only if a later metadata response differs from the one the assignment was made with. When the refresh
    it requests is answered by a response already in flight (from before the subscription), nothing differs, and the
    process polls an empty assignment until metadata_max_age_ms (5 minutes): the bench's "0 of 6,000, then nothing
    for 120 s". So: the topics' metadata first, then subscribe; and a 10 s metadata age bounds any later miss."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    consumer = KafkaConsumer(**client_config(settings), group_id=group_id, auto_offset_reset="earliest", enable_auto_commit=True,
                             metadata_max_age_ms=10_000)
    for topic in topics:
        if not consumer.partitions_for_topic(topic):  # a blocking metadata fetch of the topic
            consumer.close()
            raise KafkaError(f"topic {topic} has no partitions the peer can see")
    consumer.subscribe(topics, listener=_LogAssignment())
    return consumer


def peer_main(argv: list[str] | None = None) -> int:
    """One peer process: routed topics -> PeerScorer -> department topics + predictions, until SIGTERM."""
    from mailroom.kafkautil import producer
    from udfs.scoring import ScoringConfig

    parser = argparse.ArgumentParser(prog="python -m mailroom.bench", description=peer_main.__doc__)
    parser.add_argument("--group-id", required=True, help="consumer group (processes of one peer share it)")
    parser.add_argument("--ocr-max-wait-ms", type=int, help="read scans that waited up to this long since routing (default: the scoring job's)")
    parser.add_argument("--max-batch-delay-ms", type=int, help="score a partial batch after this wait (default: the scoring job's)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    prefix = settings.topic_prefix
    config = ScoringConfig.from_registry(settings.registry_dir)
    if args.ocr_max_wait_ms is not None:
        config = dataclasses.replace(config, ocr=dataclasses.replace(config.ocr, max_wait_ms=args.ocr_max_wait_ms))
    if args.max_batch_delay_ms is not None:
        config = dataclasses.replace(config, max_batch_delay_ms=args.max_batch_delay_ms)
    scorer = PeerScorer(config)
    departments = {dept: topic_name(department_topic_key(label), prefix) for label, dept in DEPARTMENTS.items()}
    predictions = topic_name("predictions", prefix)
    consumer = _joined_consumer(settings, [topic_name("routed_text", prefix), topic_name("routed_scans", prefix)], args.group_id)
    out = producer(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where is it stuck?

    def send(scored: list[tuple[str, bytes, bytes]]) -> None:
        for department, delivery, prediction in scored:
            out.send(departments[department], delivery)
            out.send(predictions, prediction)

    while not stopping.is_set():
        for records in consumer.poll(timeout_ms=scorer.wait_ms(clock_ms()), max_records=scorer.config.batch_size).values():
            for record in records:
                send(scorer.add(record.value, clock_ms(), record.topic, record.partition, record.offset))
        if scorer.is_due(clock_ms()):
            send(scorer.flush(clock_ms()))
    send(scorer.flush(clock_ms()))
    out.flush()
    out.close()
    consumer.close()
    return 0
