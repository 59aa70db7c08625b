"""Every Kafka topic Mailroom uses, declared once, with partitions and retention.

`stack up` creates the missing ones; jobs and tools look names up here, never spell them.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.labels import DEPARTMENTS
from schemas.units import DAY_MS

BIG_MESSAGE_BYTES = 64 * 2**20  # the input must accept oversized documents so the router can dead-letter them


@dataclass(frozen=True)
class Topic:
    """One topic: its short key, name suffix, partition count, retention and purpose."""

    key: str
    suffix: str
    partitions: int
    retention_ms: int
    purpose: str
    max_message_bytes: int = 2**20  # Kafka's default; topics carrying scans take more
    compacted: bool = False  # keep the newest record per key (and never expire it): a state topic

    def configs(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact", "retention.ms": "-1", "max.message.bytes": str(self.max_message_bytes)}
        return {"retention.ms": str(self.retention_ms), "max.message.bytes": str(self.max_message_bytes)}

    def name(self, prefix: str) -> str:
        return prefix + self.suffix


TOPICS: tuple[Topic, ...] = (
    Topic("documents", "documents", 4, 7 * DAY_MS, "incoming documents from upstream systems", BIG_MESSAGE_BYTES),
    Topic("routed_text", "routed.text", 4, 7 * DAY_MS, "validated, cleaned text documents", BIG_MESSAGE_BYTES),
    Topic("routed_scans", "routed.scans", 4, 7 * DAY_MS, "validated, cleaned scanned images", BIG_MESSAGE_BYTES),
    Topic("dead_letters", "dead-letters", 1, 30 * DAY_MS, "what the router could not read: reason + original bytes", BIG_MESSAGE_BYTES),
    *(
        Topic(f"dept_{dept}", f"dept.{dept}", 2, 14 * DAY_MS, f"documents for {dept} ({label}), each with its decision", BIG_MESSAGE_BYTES)
        for label, dept in DEPARTMENTS.items()
    ),
    Topic("predictions", "predictions", 4, 30 * DAY_MS, "every prediction, for audit and the accuracy join"),
    Topic("ground_truth", "ground-truth", 2, 30 * DAY_MS, "labels confirmed or corrected by departments"),
    Topic("metrics", "metrics", 1, 30 * DAY_MS, "online accuracy reports"),
    Topic("alerts", "alerts", 1, 30 * DAY_MS, "model quality alerts"),
    Topic("retraining_requests", "retraining-requests", 1, 30 * DAY_MS, "requests to retrain a degraded model"),
    Topic("labelled_examples", "labelled-examples", 2, 90 * DAY_MS, "matched prediction + truth pairs for retraining"),
    Topic("model_control", "model-control", 1, -1, "which model version serves in which slot, per kind (key kind/slot)", compacted=True),
    Topic("model_events", "model-events", 1, 30 * DAY_MS, "what each scoring subtask serves, refuses or falls back to"),
    Topic("shadow_predictions", "shadow-predictions", 2, 30 * DAY_MS, "champion and challenger on the same documents, paired"),
    Topic("labelled_shadow_pairs", "labelled-shadow-pairs", 2, 90 * DAY_MS, "shadow pairs joined with their truth, for the judge"),
    Topic("model_decisions", "model-decisions", 1, 365 * DAY_MS, "the retrainer's and the judge's decisions, with their figures"),
)
BY_KEY = {t.key: t for t in TOPICS}


def topic_name(key: str, prefix: str) -> str:
    """The full name of a declared topic, e.g. topic_name('documents', 'mailroom.')."""
    return BY_KEY[key].name(prefix)


def department_topic_key(label: str) -> str:
    return f"dept_{DEPARTMENTS[label]}"
