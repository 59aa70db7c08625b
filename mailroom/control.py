"""Model deployment through the model-control topic: the logic of `mailroom models deploy | retire | status`.

`deploy` checks a registered version the way every scoring subtask will (`models.pointers.load_checked`)
before anything is published, then publishes its pointer (key `<kind>/<slot>`) and waits for the ack. A
champion deploy first keeps the current champion (the control topic's, else the registry's) as PREVIOUS,
and moves the registry's champion too, so a job started later from the registry agrees (a challenger
deploy or retire moves the registry's `challenger` alias). `status` puts
side by side what the registry, the control topic and the scoring subtasks (model-events topic) say,
the shadow comparison so far, and flags where they disagree.

>>> control_key("text", "CHALLENGER")
'text/challenger'
>>> newest_per_key([("a", {"v": 1}), ("b", {"v": 2}), ("a", {"v": 3}), ("b", None)])
{'a': {'v': 3}}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from config.settings import Settings
from models.pointers import ModelPointer, ModelRefused, load_checked
from models.modelio import KINDS
from models.registry import Registry, RegistryError
from schemas import codec
from schemas.topics import topic_name
from schemas.units import now_ms

SLOTS = ("champion", "challenger", "previous")  # as the command line and the record keys spell them; records: upper-case
SHA_PREFIX = 12
K = TypeVar("K")


class ControlError(Exception):
    """Kafka does not answer or a topic is missing; the message says what to do."""


class DeployRefused(Exception):
    """A deploy or retire that must not be published; the message says why."""


@dataclass(frozen=True)
class Publication:
    """One model_control record and its key."""

    key: str
    record: dict

    def describe(self) -> str:
        record = self.record
        what = f"v{record['version']}" if record["action"] == "DEPLOY" else "retired"
        sample = f", shadow sample {record['shadow_sample']:g}" if record["slot"] == "CHALLENGER" and record["action"] == "DEPLOY" else ""
        return f"{self.key} = {what}{sample}"


@dataclass
class DeployResult:
    """What a deploy published (in order), what the registry did, and what was left out and why."""

    published: list[Publication]
    promotion: dict | None = None  # Registry.promote's answer, for a champion
    warnings: list[str] = field(default_factory=list)


def control_key(kind: str, slot: str) -> str:
    """The control topic's key of a slot: `<kind>/<slot>`, the slot lower-case."""
    return f"{kind}/{slot.lower()}"


# --- building records (no Kafka) -------------------------------------------------------------


def shadow_sample(slot: str, sample: float | None) -> float:
    """The shadow share a deploy records: `sample` for a challenger (0 < s <= 1), else 1.0."""
    if sample is None:
        return 1.0
    if slot != "challenger":
        raise DeployRefused(f"--sample is the share of documents a challenger scores in shadow; a {slot} serves every document (drop --sample)")
    if not 0 < sample <= 1:
        raise DeployRefused(f"--sample {sample:g} is not a share: give 0 < s <= 1 (0.25 scores a quarter of the documents in shadow)")
    return sample


def checked_pointer(registry: Registry, kind: str, version: int, sample: float = 1.0) -> ModelPointer:
    """The pointer to a registered version once it passed the scoring subtasks' checks, else DeployRefused."""
    try:
        model = registry.get(kind, version)
    except RegistryError as exc:
        raise DeployRefused(f"{exc}: `mailroom models list {kind}` shows the registered versions") from None
    try:
        pointer = ModelPointer.of(model, sample)
    except OSError as exc:
        raise DeployRefused(f"{kind} v{version}: cannot read {model.onnx_path}: {exc.strerror or exc}") from None
    registered = model.card.get("files", {}).get("model.onnx", {}).get("sha256")
    if registered and registered != pointer.sha256:
        raise DeployRefused(f"{kind} v{version}: {model.onnx_path} changed since it was registered (sha256 {pointer.sha256[:SHA_PREFIX]}…, "
                            f"the card says {registered[:SHA_PREFIX]}…): register the model again with `mailroom train`")
    try:
        load_checked(pointer)
    except ModelRefused as exc:
        raise DeployRefused(f"{kind} v{version} fails the checks every scoring subtask runs: {exc}") from None
    return pointer


def current_champion(registry: Registry, kind: str, control: dict[str, dict]) -> ModelPointer | None:
    """The champion serving now: the control topic's, else the registry's (None if neither has one)."""
    record = control.get(control_key(kind, "champion"))
    if record is not None and record["action"] == "DEPLOY":
        return ModelPointer.from_record(record)
    try:
        return ModelPointer.of(registry.champion(kind))
    except RegistryError:
        return None


def deploy_records(registry: Registry, pointer: ModelPointer, slot: str, control: dict[str, dict], note: str | None,
                   at_ms: int) -> tuple[list[Publication], list[str]]:
    """The records a deploy of a checked `pointer` publishes, in order, and warnings. For the champion
    slot: the current champion as PREVIOUS first (unless it is the same version), then the new one."""
    publications, warnings = [], []
    if slot == "champion":
        try:
            current = current_champion(registry, pointer.kind, control)
            if current is not None and current.version != pointer.version:
                load_checked(current)
                why = f"champion until v{pointer.version} replaced it" + (f" ({note})" if note else "")
                publications.append(Publication(control_key(pointer.kind, "previous"), current.to_record("PREVIOUS", at_ms, why)))
        except (ModelRefused, OSError) as exc:
            warnings.append(f"the current {pointer.kind} champion is not kept as PREVIOUS, it fails the checks: {exc}; "
                            f"the PREVIOUS slot keeps what it had")
        challenger = control.get(control_key(pointer.kind, "challenger"))
        if challenger is not None and challenger["action"] == "DEPLOY" and challenger["version"] == pointer.version:
            warnings.append(f"v{pointer.version} is the {pointer.kind} challenger too, now shadowing itself: "
                            f"`mailroom models retire {pointer.kind} --slot challenger` ends that")
    publications.append(Publication(control_key(pointer.kind, slot), pointer.to_record(slot.upper(), at_ms, note)))
    return publications, warnings


def retire_record(kind: str, slot: str, note: str | None, at_ms: int) -> Publication:
    """The record that empties a challenger or previous slot (the champion's cannot be emptied)."""
    if slot == "champion":
        raise DeployRefused(f"the champion slot cannot be emptied: deploy another champion instead "
                            f"(`mailroom models deploy {kind} VERSION --slot champion`)")
    return Publication(control_key(kind, slot), {"kind": kind, "slot": slot.upper(), "action": "RETIRE", "model_name": f"mailroom-{kind}",
                                                 "version": None, "onnx_path": None, "sha256": None, "feature_set_id": None, "labels": [],
                                                 "shadow_sample": 1.0, "published_ms": at_ms, "note": note})


# --- Kafka -----------------------------------------------------------------------------------


@contextmanager
def kafka_errors(settings: Settings) -> Iterator[None]:
    """Kafka's own errors as ControlError, saying what to do."""
    from kafka.errors import KafkaError, TopicAuthorizationFailedError

    try:
        yield
    except KafkaError as exc:
        from mailroom.kafkautil import explain

        raise ControlError(explain(exc, settings, "Write" if isinstance(exc, TopicAuthorizationFailedError) else "use")) from None


def require_topics(settings: Settings, keys: Iterable[str]) -> None:
    """ControlError unless Kafka answers and the declared topics `keys` exist."""
    from mailroom.kafkautil import admin
    from mailroom.stack import accepts

    if not accepts(settings.host, settings.kafka_port):
        raise ControlError(f"Kafka is not answering at {settings.bootstrap_servers}: start the stack with `mailroom stack up`")
    client = admin(settings)
    try:
        existing = set(client.list_topics())
    finally:
        client.close()
    missing = [name for name in (topic_name(key, settings.topic_prefix) for key in keys) if name not in existing]
    if missing:
        from mailroom.kafkautil import check_topic_access

        check_topic_access(settings, missing[0], "Describe")  # not listed: maybe hidden from this principal
        raise ControlError(f"topic {', '.join(missing)} does not exist: `mailroom stack up` creates the declared topics")


def read_records(settings: Settings, key: str, record_type: str) -> tuple[list[tuple[str | None, dict | None]], int]:
    """(message key, record) of a declared topic in topic order (record None: a tombstone), and how many
    messages were not `record_type` records (skipped)."""
    from mailroom.kafkautil import read_topic

    items, unreadable = [], 0
    for message in read_topic(settings, topic_name(key, settings.topic_prefix), timeout_s=15):
        message_key = message.key.decode("utf-8", "replace") if message.key is not None else None
        if message.value is None:
            items.append((message_key, None))
            continue
        try:
            items.append((message_key, codec.decode(message.value, expected=record_type).record))
        except codec.DecodeError:
            unreadable += 1
    return items, unreadable


def newest_per_key(items: Iterable[tuple[K, dict | None]]) -> dict[K, dict]:
    """The last record per key, in topic order; a None record (a tombstone) drops its key."""
    newest: dict[K, dict] = {}
    for key, record in items:
        if record is None:
            newest.pop(key, None)
        else:
            newest[key] = record
    return newest


def read_control(settings: Settings) -> tuple[dict[str, dict], int]:
    """What the control topic says now (newest record per key) and how many messages were unreadable."""
    items, unreadable = read_records(settings, "model_control", "model_control")
    return newest_per_key(items), unreadable


def publish(settings: Settings, publications: list[Publication], timeout_s: float = 30) -> list:
    """Send the records in order with an idempotent producer, each acknowledged before the next; their metadata."""
    from mailroom.kafkautil import producer

    topic = topic_name("model_control", settings.topic_prefix)
    from kafka.errors import TopicAuthorizationFailedError

    from mailroom.kafkautil import AccessRefused, refusal

    kafka = producer(settings, max_block_ms=int(timeout_s * 1000))
    try:
        return [kafka.send(topic, key=p.key.encode(), value=codec.encode("model_control", p.record, validate=True)).get(timeout=timeout_s)
                for p in publications]
    except TopicAuthorizationFailedError as exc:
        raise AccessRefused(refusal(exc, settings.principal, "Write", f"topic {topic}"), exc) from None
    finally:
        kafka.close()


def deploy(settings: Settings, registry: Registry, kind: str, version: int, slot: str, sample: float | None = None,
           note: str | None = None) -> DeployResult:
    """Check `kind` v`version`, publish it to `slot` (a champion: the current one as PREVIOUS first) and,
    for a champion, promote it in the registry. DeployRefused before anything is published (and before
    Kafka is asked); ControlError when Kafka does not answer or the topic is missing."""
    pointer = checked_pointer(registry, kind, version, shadow_sample(slot, sample))
    with kafka_errors(settings):
        require_topics(settings, ["model_control"])
        control = read_control(settings)[0] if slot == "champion" else {}
        publications, warnings = deploy_records(registry, pointer, slot, control, note, now_ms())
        publish(settings, publications)
    promotion = None
    if slot == "champion":
        promotion = registry.promote(kind, version, force_reason=f"deployed by an operator: {note or 'no note given'}")
    elif slot == "challenger":
        registry.set_challenger(kind, version, f"deployed by an operator: {note or 'no note given'}")
    return DeployResult(publications, promotion, warnings)


def retire(settings: Settings, registry: Registry, kind: str, slot: str, note: str | None = None) -> tuple[Publication, dict | None]:
    """Publish the RETIRE record of a slot; with what the control topic had in it before (None: nothing).
    A challenger loses the registry's `challenger` alias too; the `previous` alias stays (rollback's target)."""
    publication = retire_record(kind, slot, note, now_ms())
    with kafka_errors(settings):
        require_topics(settings, ["model_control"])
        before = read_control(settings)[0].get(publication.key)
        publish(settings, [publication])
    if slot == "challenger":
        registry.retire_challenger(kind, f"retired: {note or 'no note given'}")
    return publication, before


# --- status ----------------------------------------------------------------------------------


def registry_champions(registry: Registry) -> dict[str, str | None]:
    """The registry's champion version per kind (None: no champion)."""
    champions: dict[str, str | None] = {}
    for kind in KINDS:
        try:
            champions[kind] = str(registry.champion(kind).version)
        except RegistryError:
            champions[kind] = None
    return champions


def read_status(settings: Settings, registry: Registry) -> dict:
    """`status_view` of what the registry and the three topics say now."""
    with kafka_errors(settings):
        require_topics(settings, ["model_control", "model_events", "shadow_predictions"])
        control, bad_control = read_control(settings)
        events, bad_events = read_records(settings, "model_events", "model_event")
        shadow, bad_shadow = read_records(settings, "shadow_predictions", "shadow_prediction")
    view = status_view(registry_champions(registry), control, newest_per_key((_event_key(r), r) for _, r in events if r),
                       [r for _, r in shadow if r], now_ms())
    view["registry"]["dir"] = str(registry.root)
    view["topics"] = {key: topic_name(key, settings.topic_prefix) for key in ("model_control", "model_events", "shadow_predictions")}
    view["unreadable"] = {"model_control": bad_control, "model_events": bad_events, "shadow_predictions": bad_shadow}
    return view


def _event_key(event: dict) -> tuple[str, int, str, str]:
    return event["job"], event["subtask"], event["kind"], event["slot"]


def status_view(champions: dict[str, str | None], control: dict[str, dict], events: dict[tuple, dict], shadow: list[dict],
                at_ms: int) -> dict:
    """The status as plain data (what `--json` prints): the registry's champions, the control topic's
    newest record per key, the newest event per (job, subtask, kind, slot) with what the control topic
    expects there, the shadow comparison, and every disagreement in `flags`."""
    flags = []
    control_rows = []
    for key, record in sorted(control.items(), key=lambda item: (item[1]["kind"], _slot_order(item[1]["slot"]))):
        control_rows.append({"key": key, "kind": record["kind"], "slot": record["slot"], "action": record["action"], "version": record["version"],
                             "sha256": (record["sha256"] or "")[:SHA_PREFIX] or None, "shadow_sample": record["shadow_sample"],
                             "published_ms": record["published_ms"], "note": record["note"]})
        if record["slot"] == "CHAMPION" and champions.get(record["kind"]) not in (None, record["version"]):
            flags.append(f"the registry's {record['kind']} champion is v{champions[record['kind']]}, the control topic's v{record['version']} "
                         f"(`mailroom models promote` moves only the registry): `mailroom models deploy {record['kind']} N --slot champion` "
                         f"makes both say vN")
    subtask_rows = []
    for key in sorted(events, key=lambda k: (k[0], k[1], k[2], _slot_order(k[3]))):
        event = events[key]
        row = {**event, "age_s": max(0, at_ms - event["at_ms"]) / 1000, **_expected(event["kind"], event["slot"], control, champions)}
        row["flag"] = _event_flag(row)
        if row["flag"]:
            flags.append(row["flag"])
        subtask_rows.append(row)
    flags += _unreported(events, control, at_ms)
    return {"registry": {"champions": champions}, "control": control_rows, "subtasks": subtask_rows, "shadow": shadow_comparison(shadow),
            "flags": flags}


def _slot_order(slot: str) -> int:
    return SLOTS.index(slot.lower())


def _expected(kind: str, slot: str, control: dict[str, dict], champions: dict[str, str | None]) -> dict:
    """What a subtask should serve in a slot: the control topic's record, else (champion only) the registry's."""
    record = control.get(control_key(kind, slot))
    if record is not None:
        return {"expected_version": record["version"], "expected_from": "control topic", "expected_since_ms": record["published_ms"]}
    if slot == "CHAMPION" and champions.get(kind) is not None:
        return {"expected_version": champions[kind], "expected_from": "registry", "expected_since_ms": None}
    return {"expected_version": None, "expected_from": None, "expected_since_ms": None}


def _event_flag(row: dict) -> str | None:
    """Why a subtask's newest report disagrees with the control topic (or the registry), or None."""
    who, where = f"{row['job']}/{row['subtask']}", f"{row['kind']} {row['slot']}"
    problems = []
    if row["outcome"] == "REFUSED":
        problems.append(f"{who} refused {where} {_v(row['version'])}: {row['reason']}")
    if row["serving_version"] != row["expected_version"]:
        said = f"the {row['expected_from']} says {_v(row['expected_version'])}" if row["expected_from"] else "nothing was deployed there"
        stale = row["expected_since_ms"] is not None and row["at_ms"] < row["expected_since_ms"]
        problems.append(f"{who} serves {_v(row['serving_version'])} in {where}, {said}"
                        + (f" (its last report, {age(row['age_s'])} ago, predates that record: is the scoring job running?)" if stale else ""))
    return "; ".join(problems) or None


def _unreported(events: dict[tuple, dict], control: dict[str, dict], at_ms: int) -> list[str]:
    """A subtask that reported on a kind but not on a deployed slot of it: it has not taken that deploy."""
    reported = {(job, subtask, kind) for job, subtask, kind, _ in events}
    flags = []
    for job, subtask, kind in sorted(reported):
        for record in control.values():
            if record["kind"] == kind and record["action"] == "DEPLOY" and (job, subtask, kind, record["slot"]) not in events:
                flags.append(f"{job}/{subtask} has not reported on {kind} {record['slot']} {_v(record['version'])}, deployed "
                             f"{age(max(0, at_ms - record['published_ms']) / 1000)} ago: is the scoring job running?")
    return flags


def shadow_comparison(pairs: Iterable[dict]) -> list[dict]:
    """Per kind and (champion version, challenger version): paired documents, the share where both
    gave the same label, and each one's mean latency (its micro-batch's run time, per document)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for pair in pairs:
        groups.setdefault((pair["kind"], pair["champion_version"], pair["challenger_version"]), []).append(pair)
    return [{"kind": kind, "champion_version": champion, "challenger_version": challenger, "pairs": len(rows),
             "agreement": sum(r["champion_label"] == r["challenger_label"] for r in rows) / len(rows),
             "champion_latency_ms": sum(r["champion_latency_ms"] for r in rows) / len(rows),
             "challenger_latency_ms": sum(r["challenger_latency_ms"] for r in rows) / len(rows)}
            for (kind, champion, challenger), rows in sorted(groups.items())]


def _v(version: str | None) -> str:
    return "nothing" if version is None else f"v{version}"


def age(seconds: float) -> str:
    """A short age: 12 s, 5 min, 3 h, 2 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds > 1.5 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
