"""The learning loop's decisions as events (model_decision.v1 on the model-decisions topic, key: kind),
and moving a champion through the control topic with the registry following.

Shared by the retrainer and the judge. A decision about a registered version is also noted on
it in the registry (`Registry.note_decision`: a history event and a version tag in MLflow, with
the reasons and the figures' summary); the full figures live in the event.

>>> r = decision("text", "REFUSE", "judge", challenger_version="4", champion_version="3", reasons=["p too high"],
...              figures={"n": 400}, at_ms=1)
>>> r["decision"], r["figures"], r["reasons"]
('REFUSE', '{"n": 400}', ['p too high'])
"""

from __future__ import annotations

import json
import uuid

from config.settings import Settings
from mailroom import control
from models.registry import Registry
from schemas import codec
from schemas.topics import topic_name
from schemas.units import now_ms

RECORD_TYPE = "model_decision"


def decision(kind: str, what: str, decided_by: str, challenger_version: str | None = None, champion_version: str | None = None,
             reasons: list[str] | tuple[str, ...] = (), figures: dict | None = None, request_id: str | None = None,
             at_ms: int | None = None) -> dict:
    """A model_decision record; `figures` as a JSON string (numpy scalars and paths as text)."""
    return {"decision_id": uuid.uuid4().hex, "kind": kind, "decision": what, "decided_by": decided_by,
            "challenger_version": None if challenger_version is None else str(challenger_version),
            "champion_version": None if champion_version is None else str(champion_version), "reasons": [str(r) for r in reasons],
            "figures": json.dumps(figures or {}, default=str), "request_id": request_id,
            "decided_ms": now_ms() if at_ms is None else at_ms}


def publish_decision(settings: Settings, record: dict, registry: Registry | None = None, timeout_s: float = 30) -> None:
    """Write one decision (validated), acknowledged; with `registry`, note it on the version it is about
    (the challenger's, else the champion's)."""
    from mailroom.kafkautil import producer

    version = record["challenger_version"] or record["champion_version"]
    if registry is not None and version is not None:
        summary = json.loads(record["figures"]).get("summary", "")
        registry.note_decision(record["kind"], int(version), record["decision"], record["decided_by"], record["reasons"], str(summary))

    kafka = producer(settings, max_block_ms=int(timeout_s * 1000))
    try:
        kafka.send(topic_name("model_decisions", settings.topic_prefix), key=record["kind"].encode(),
                   value=codec.encode(RECORD_TYPE, record, validate=True)).get(timeout=timeout_s)
    finally:
        kafka.close()


def read_decisions(settings: Settings) -> list[dict]:
    """Every decision on the topic so far, in topic order."""
    items, _ = control.read_records(settings, "model_decisions", RECORD_TYPE)
    return [record for _, record in items if record is not None]


def move_champion(settings: Settings, registry: Registry, kind: str, version: str, reason: str, rollback: bool = False) -> list[str]:
    """Serve `version` as `kind`'s champion: the current champion kept as PREVIOUS (control.deploy_records),
    then the registry follows: `rollback` (back to its previous champion; promoted with `reason` if that
    was not `version`) or a promotion recorded with `reason`. Returns the published records, described."""
    pointer = control.checked_pointer(registry, kind, int(version))
    with control.kafka_errors(settings):
        current = control.read_control(settings)[0]
        publications, _ = control.deploy_records(registry, pointer, "champion", current, reason, now_ms())
        control.publish(settings, publications)
    if not rollback or str(registry.rollback(kind).version) != str(version):
        registry.promote(kind, int(version), force_reason=reason)
    return [p.describe() for p in publications]
