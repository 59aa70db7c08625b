"""Every Redis key Mailroom writes or reads, built in one place (writers and readers both call these).

Redis is a cache here, never a source of truth: every key has a TTL, and each job writes its
own namespace.

    <features>:sender:<sender>        hash: the sender's history and latest features (scoring job)
    <features>:mirror                 hash: the feature mirror's counters, outages included
    <accuracy>:<model>:<version>      hash: a model version's latest window, last-N, counts (accuracy job)
    <accuracy>:unattributed           hash: counts of truths that matched no prediction
    mailroom:smoke:<run id>           counter of the smoke test job

>>> sender_key(FEATURES_NAMESPACE, "a@example.com")
'mailroom:features:sender:a@example.com'
>>> accuracy_key(ACCURACY_NAMESPACE, "mailroom-text", "3"), accuracy_pattern(ACCURACY_NAMESPACE)
('mailroom:accuracy:mailroom-text:3', 'mailroom:accuracy:*')
"""

from __future__ import annotations

FEATURES_NAMESPACE = "mailroom:features"
ACCURACY_NAMESPACE = "mailroom:accuracy"
UNATTRIBUTED = "unattributed"


def sender_key(namespace: str, sender: str) -> str:
    """The mirrored history and features of one sender."""
    return f"{namespace}:sender:{sender}"


def mirror_stats_key(namespace: str) -> str:
    """The feature mirror's own counters (written, outages, failed flushes, dropped)."""
    return f"{namespace}:mirror"


def accuracy_key(namespace: str, model_name: str, model_version: str) -> str:
    """The dashboard hash of one model version; empty name and version: truths that matched no prediction."""
    if not model_name and not model_version:
        return f"{namespace}:{UNATTRIBUTED}"
    return f"{namespace}:{model_name}:{model_version}"


def accuracy_pattern(namespace: str) -> str:
    """A SCAN pattern over every accuracy dashboard hash."""
    return f"{namespace}:*"


def smoke_counter_key(run_id: str) -> str:
    return f"mailroom:smoke:{run_id}"
