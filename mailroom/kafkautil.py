"""kafka-python helpers shared by tools and tests: the one client configuration (SASL/SCRAM as a principal),
a safe producer, a read_committed reader, the users and ACLs of schemas/access.py, refusals explained."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError
import kafka.errors as Errors

from config.settings import Settings
from schemas import access

from schemas.topics import BIG_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # large scans; the router rejects what exceeds its own limit


SASL_MECHANISM = "SCRAM-SHA-512"
# SCRAM never sends the password itself, and the broker listens on loopback only: kafka-python's warning about
# "credentials in the clear" on every connection says nothing here
logging.getLogger("kafka.net.sasl.scram").setLevel(logging.ERROR)


def client_config(settings: Settings, principal: str | None = None) -> dict:
    """The kafka-python arguments of every client: the broker, SASL/SCRAM as `principal` (default `settings.principal`)."""
    principal = principal or settings.principal
    return dict(
        bootstrap_servers=settings.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",  # loopback only, so no TLS
        sasl_mechanism=SASL_MECHANISM,
        sasl_plain_username=principal,
        sasl_plain_password=settings.kafka_password(principal),
    )


def producer(settings: Settings, **overrides) -> KafkaProducer:
    """Idempotent producer, acknowledged by all in-sync replicas."""
    config = dict(
        **client_config(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=MAX_MESSAGE_BYTES,
        compression_type=None,
    )
    config.update(overrides)
    return KafkaProducer(**config)


def admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**client_config(settings), request_timeout_ms=15000)


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
            await_leaders(client, [t.name for t in new])
    finally:
        client.close()


def await_leaders(client: KafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Return once every partition of the topics `names` answers at its leader. CreateTopics returns before that: a
    producer right after it gets NotLeaderForPartitionError (and retries), and the metadata may show no partitions yet."""
    from kafka.admin import OffsetSpec

    deadline = time.monotonic() + timeout_s
    while True:
        described = {t["name"]: t["partitions"] for t in client.describe_topics(names) if t["error_code"] == 0 and t["partitions"]}
        if described.keys() >= set(names):
            break
        if time.monotonic() > deadline:
            raise KafkaError(f"topics without partitions {timeout_s:.0f} s after their creation: {sorted(set(names) - described.keys())}")
        time.sleep(0.1)
    partitions = {TopicPartition(name, p["partition_index"]): OffsetSpec.LATEST for name, found in described.items() for p in found}
    client.list_partition_offsets(partitions, timeout_ms=max(1, int(1000 * (deadline - time.monotonic()))))  # retries NotLeader


def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete topics and the ACLs granted on them (grant_topics'), so that nothing is left behind in the metadata."""
    client = admin(settings)
    try:
        client.delete_topics(names)
    except UnknownTopicOrPartitionError:
        pass
    finally:
        client.close()
    revoke(settings, lambda resource: resource in set(names))


def revoke(settings: Settings, named) -> int:
    """Delete every ACL whose resource name satisfies `named` (a predicate); return how many were deleted.

    The tests' topics, groups and transactional ids are theirs alone (a unique topic prefix or name), so their
    grants go with them instead of piling up in the broker's metadata from session to session."""
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePatternFilter, ResourceType

    client = KafkaAdminClient(**client_config(settings, access.OPERATOR), request_timeout_ms=15000)
    try:
        every = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                          ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY))
        acls, _ = client.describe_acls(every)  # raises the broker's error itself
        doomed = [acl for acl in acls if named(acl.resource_pattern.resource_name)]  # an ACL is its own exact filter
        if doomed:
            client.delete_acls(doomed)
        return len(doomed)
    finally:
        client.close()


def read_topic(settings: Settings, topic: str, min_count: int = 0, timeout_s: float = 30.0) -> list:
    """All committed records of `topic` (read_committed), from the beginning to the end.

    Waits up to `timeout_s` until at least `min_count` records are there; returns what it has.
    """
    consumer = KafkaConsumer(
        **client_config(settings),
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        consumer_timeout_ms=500,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(partitions_of(consumer, topic, settings))]
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


def partitions_of(consumer: KafkaConsumer, topic: str, settings: Settings) -> set[int]:
    """The partitions of `topic`; AccessRefused when the broker will not even describe it to this principal (a listing
    of all topics just leaves such topics out, so kafka-python would see none)."""
    found = consumer.partitions_for_topic(topic)
    if found:
        return found
    check_topic_access(settings, topic, "Read")
    return set()


def check_topic_access(settings: Settings, topic: str, operation: str) -> None:
    """AccessRefused if the broker answers TOPIC_AUTHORIZATION_FAILED for `topic` to `settings.principal`."""
    client = admin(settings)
    try:
        for described in client.describe_topics([topic]):
            error = Errors.for_code(described.get("error_code", 0))
            if error is Errors.TopicAuthorizationFailedError:
                exc = error(topic)
                raise AccessRefused(refusal(exc, settings.principal, operation, f"topic {topic}"), exc)
    finally:
        client.close()


# --- users and ACLs (schemas/access.py) --------------------------------------------------------


def ensure_users(client: KafkaAdminClient, settings: Settings, principals: list[str]) -> None:
    """(Re)set the SCRAM credential of each principal to its current password: idempotent, so an `up` after a password
    change (MAILROOM_KAFKA_PASSWORDS) takes effect."""
    from kafka.admin import UserScramCredentialUpsertion

    errors = client.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(p, SASL_MECHANISM, settings.kafka_password(p)) for p in principals])
    failed = {user: error for user, error in errors.items() if error}
    if failed:
        raise KafkaError(f"could not set the SCRAM credentials of {failed}")


def acls_of(prefix: str):
    """kafka-python ACL objects for every grant of schemas/access.py under topic prefix `prefix`."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    return [
        ACL(f"User:{principal}", "*", ACLOperation[operation], ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType[grant.resource], grant.name, ACLResourcePatternType[grant.pattern]))
        for principal, granted in access.grants(prefix).items()
        for grant in granted
        for operation in grant.operations
    ]


def ensure_access(settings: Settings) -> None:
    """Every principal's SCRAM user and the ACLs of schemas/access.py for `settings.topic_prefix` (as the operator).
    Creating an ACL that exists changes nothing."""
    client = KafkaAdminClient(**client_config(settings, access.OPERATOR), request_timeout_ms=15000)
    try:
        ensure_users(client, settings, access.principals())
        result = client.create_acls(acls_of(settings.topic_prefix))
        if result["failed"]:
            raise KafkaError(f"could not create {len(result['failed'])} ACL(s): {result['failed'][:3]}")
    finally:
        client.close()


def grant_topics(settings: Settings, topics: list[str], principals: list[str], operations=("READ", "WRITE", "DESCRIBE")) -> None:
    """ALLOW `operations` on ad-hoc topics (the tests' `test.*` topics) to `principals`."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    client = KafkaAdminClient(**client_config(settings, access.OPERATOR), request_timeout_ms=15000)
    try:
        client.create_acls([ACL(f"User:{p}", "*", ACLOperation[op], ACLPermissionType.ALLOW,
                                ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL))
                            for topic in topics for p in principals for op in operations])
    finally:
        client.close()


# --- refusals --------------------------------------------------------------------------------

REFUSALS = (
    Errors.TopicAuthorizationFailedError,
    Errors.GroupAuthorizationFailedError,
    Errors.TransactionalIdAuthorizationFailedError,
    Errors.ClusterAuthorizationFailedError,
    Errors.SaslAuthenticationFailedError,
)


def refusal(exc: BaseException, principal: str, operation: str, resource: str) -> str | None:
    """A broker's authentication or authorisation error as one sentence naming the principal and the right it lacked
    (e.g. "principal dept-finance may not Read topic mailroom.dept.hr"); None for any other error."""
    name = type(exc).__name__
    if isinstance(exc, Errors.SaslAuthenticationFailedError):
        return f"principal {principal} could not authenticate to Kafka ({name}: {exc}): check its password in MAILROOM_KAFKA_PASSWORDS or the run directory's kafka-passwords.json"
    if isinstance(exc, REFUSALS) or "AuthorizationFailed" in name:
        return f"principal {principal} may not {operation} {resource}: the broker refused it ({name})"
    return None


class AccessRefused(KafkaError):
    """The broker refused a principal a right; `str()` names the principal and the right, `cause` is the broker's error."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.message, self.cause = message, cause

    def __str__(self) -> str:
        return self.message


def explain(exc: BaseException, settings: Settings, operation: str = "use", resource: str | None = None) -> str:
    """One line for a tool to print about a Kafka error: who lacked which right, or where Kafka was not answering."""
    if isinstance(exc, AccessRefused):
        return exc.message
    if resource is None and isinstance(exc, Errors.TopicAuthorizationFailedError) and exc.args:
        resource = f"topic {', '.join(sorted(exc.args[0])) if isinstance(exc.args[0], (set, list, tuple)) else exc.args[0]}"
    said = refusal(exc, settings.principal, operation, resource or "this resource")
    if said:
        return said
    if isinstance(exc, Errors.KafkaTimeoutError) and "bootstrap" in str(exc):
        return (f"Kafka at {settings.bootstrap_servers} did not let principal {settings.principal} in ({exc}): is the stack up "
                "(`mailroom stack up`), and is its password right (MAILROOM_KAFKA_PASSWORDS or the run directory's kafka-passwords.json)?")
    return f"Kafka at {settings.bootstrap_servers}: {exc!r}. Is the stack up (`mailroom stack up`)?"
