"""Every Redis key Mailroom writes or reads, built in one place (writers and readers both call these).

Redis is a cache here, never a source of truth: every key has a TTL, and each job writes its
own namespace.

    <features>:sender:<sender>        hash: the sender's history and latest features (scoring job)
    <features>:mirror                 hash: the feature mirror's counters, outages included
    <accuracy>:<model>:<version>      hash: a champion's latest window, last-N, counts (accuracy job)
    <accuracy>:<model>:<version>:<slot>   the same for the model version in another slot (fallback, prior)
    <accuracy>:unattributed           hash: counts of truths that matched no prediction
    <shadow>:<kind>:<champion model>:<version>:<challenger model>:<version>
                                      hash: champion vs challenger on the same documents (accuracy job)
    mailroom:smoke:<run id>           counter of the smoke test job

>>> sender_key(FEATURES_NAMESPACE, "a@example.com")
'mailroom:features:sender:a@example.com'
>>> accuracy_key(ACCURACY_NAMESPACE, "mailroom-text", "3"), accuracy_pattern(ACCURACY_NAMESPACE)
('mailroom:accuracy:mailroom-text:3', 'mailroom:accuracy:*')
>>> accuracy_key(ACCURACY_NAMESPACE, "mailroom-text", "2", "fallback")
'mailroom:accuracy:mailroom-text:2:fallback'
>>> shadow_key(SHADOW_NAMESPACE, "text", "mailroom-text", "3", "mailroom-text", "4")
'mailroom:shadow:text:mailroom-text:3:mailroom-text:4'
"""

from __future__ import annotations

FEATURES_NAMESPACE = "mailroom:features"
ACCURACY_NAMESPACE = "mailroom:accuracy"
SHADOW_NAMESPACE = "mailroom:shadow"
CHAMPION = "champion"  # the slot whose keys have no slot suffix (they were there before slots)
UNATTRIBUTED = "unattributed"


def sender_key(namespace: str, sender: str) -> str:
    """The mirrored history and features of one sender."""
    return f"{namespace}:sender:{sender}"


def mirror_stats_key(namespace: str) -> str:
    """The feature mirror's own counters (written, outages, failed flushes, dropped)."""
    return f"{namespace}:mirror"


def accuracy_key(namespace: str, model_name: str, model_version: str, slot: str = CHAMPION) -> str:
    """The dashboard hash of one model version in one slot; empty name and version: truths that matched no prediction."""
    if not model_name and not model_version:
        return f"{namespace}:{UNATTRIBUTED}"
    return f"{namespace}:{model_name}:{model_version}" + ("" if slot == CHAMPION else f":{slot}")


def accuracy_pattern(namespace: str) -> str:
    """A SCAN pattern over every accuracy dashboard hash."""
    return f"{namespace}:*"


def shadow_key(namespace: str, kind: str, champion_model: str, champion_version: str, challenger_model: str,
               challenger_version: str) -> str:
    """The dashboard hash of one champion/challenger pair of one kind."""
    return f"{namespace}:{kind}:{champion_model}:{champion_version}:{challenger_model}:{challenger_version}"


def shadow_pattern(namespace: str) -> str:
    """A SCAN pattern over every champion/challenger hash."""
    return f"{namespace}:*"


def smoke_counter_key(run_id: str) -> str:
    return f"mailroom:smoke:{run_id}"
