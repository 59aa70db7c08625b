"""Who may do what on Kafka: the one table of principals and their rights.

`mailroom stack up` (and every `Kafka.create_topics()` for a topic prefix) creates a SCRAM user per principal
and exactly these ACLs, on the broker's StandardAuthorizer with `allow.everyone.if.no.acl.found=false`: what
is not granted here is refused. The operator is the broker's super user (no ACL needed, none given).

Topics are granted by their full literal name (`prefix + suffix`, so `dept.hr` never covers `dept.hrx`);
consumer groups and transactional ids (Flink's exactly-once sinks name theirs `<group id>-<sink>-...`) by
prefix: `mailroom-<role>` (the defaults) and `<topic prefix><role>` (what the tests pass as `--group-id`).

>>> sorted(grants("mailroom."))[:3]
['accuracy', 'dashboard', 'dept-customer-care']
>>> [g for g in grants("mailroom.")["dept-hr"] if g.resource == "TOPIC"][0]
Grant(resource='TOPIC', name='mailroom.dept.hr', pattern='LITERAL', operations=('READ', 'DESCRIBE'))
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name

OPERATOR = "operator"  # the admin: the broker's super user, creates topics, users and ACLs; every tool not listed below
JOB_PRINCIPALS = ("router", "scoring", "accuracy")  # each Flink job authenticates as its own name (jobs/*.py JOB)

# what each principal is for, in the order the README lists them
PURPOSES = {
    OPERATOR: "admin (super user): `mailroom stack up`, topics, users and ACLs, the operator's tools and the tests",
    "producer": "upstream systems (`mailroom produce`): write incoming documents",
    "router": "the router job: read documents; write routed text, routed scans, dead letters",
    "scoring": "the scoring job: read routed documents, its own predictions and model control; write predictions, "
               "department topics, dead letters, model events, shadow predictions",
    "accuracy": "the accuracy job: read predictions, ground truth, shadow predictions; write metrics, alerts, retraining "
                "requests, labelled examples, labelled shadow pairs, dead letters",
    "retrainer": "the learning loop (`mailroom retrainer`, `mailroom judge`, `mailroom models deploy/retire`): read labelled "
                 "examples, retraining requests, labelled shadow pairs, model control, model decisions; the only one "
                 "besides the operator that may write model control; writes model decisions",
    "dashboard": "the dashboard (read only): metrics, alerts, model events, model decisions",
}
for _label, _dept in DEPARTMENTS.items():
    PURPOSES[f"dept-{_dept}"] = f"the {_dept} department (`mailroom inbox {_dept}`, `mailroom feedback`): read its own topic; read and write ground truth (verdicts)"

READ = ("READ", "DESCRIBE")
WRITE = ("WRITE", "DESCRIBE")
# A Flink job's exactly-once sink also reads its topic's producers (DescribeProducers), to abort what a run before it
# left open: its transactional ids are pooled (jobs/connectors.py write_bytes)
SINK = ("WRITE", "READ", "DESCRIBE")


@dataclass(frozen=True)
class Grant:
    """ALLOW `operations` on one resource (kafka-python's ResourceType / ACLResourcePatternType / ACLOperation names)."""

    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    name: str
    pattern: str  # LITERAL or PREFIXED
    operations: tuple[str, ...]


def department_principal(department: str) -> str:
    """The principal of a department, e.g. 'dept-finance' (department as in schemas/labels.DEPARTMENTS values)."""
    return f"dept-{department}"


def _topics(prefix: str, keys: list[str], operations: tuple[str, ...]) -> list[Grant]:
    return [Grant("TOPIC", topic_name(key, prefix), "LITERAL", operations) for key in keys]


def _consumer(prefix: str, role: str, transactions: bool) -> list[Grant]:
    names = [f"mailroom-{role}", f"{prefix}{role}"]
    grants = [Grant("GROUP", name, "PREFIXED", READ) for name in names]
    if transactions:
        grants += [Grant("TRANSACTIONAL_ID", name, "PREFIXED", WRITE) for name in names]
    return grants


IDEMPOTENT = Grant("CLUSTER", "kafka-cluster", "LITERAL", ("IDEMPOTENT_WRITE",))


def grants(prefix: str) -> dict[str, list[Grant]]:
    """Every principal but the operator -> its ALLOW grants, for topics named with `prefix`."""
    dept_keys = [department_topic_key(label) for label in DEPARTMENTS]
    table = {
        "producer": _topics(prefix, ["documents"], WRITE) + [IDEMPOTENT],
        "router": _topics(prefix, ["documents"], READ) + _topics(prefix, ["routed_text", "routed_scans", "dead_letters"], SINK)
        + _consumer(prefix, "router", True) + [IDEMPOTENT],
        "scoring": _topics(prefix, ["routed_text", "routed_scans", "predictions", "model_control"], READ)
        + _topics(prefix, ["predictions", *dept_keys, "dead_letters", "model_events", "shadow_predictions"], SINK)
        + _consumer(prefix, "scoring", True) + [IDEMPOTENT],
        "accuracy": _topics(prefix, ["predictions", "ground_truth", "shadow_predictions"], READ)
        + _topics(prefix, ["metrics", "alerts", "retraining_requests", "labelled_examples", "labelled_shadow_pairs", "dead_letters"], SINK)
        + _consumer(prefix, "accuracy", True) + [IDEMPOTENT],
        "retrainer": _topics(prefix, ["labelled_examples", "retraining_requests", "labelled_shadow_pairs", "model_control",
                                      "model_decisions", "model_events", "shadow_predictions"], READ)
        + _topics(prefix, ["model_control", "model_decisions"], WRITE) + _consumer(prefix, "retrainer", False) + [IDEMPOTENT],
        "dashboard": _topics(prefix, ["metrics", "alerts", "model_events", "model_decisions"], READ),
    }
    for label, dept in DEPARTMENTS.items():
        # Read on ground truth too: the inbox shows each document's earlier verdict (doc ids and labels, no content)
        table[department_principal(dept)] = (_topics(prefix, [department_topic_key(label), "ground_truth"], READ)
                                             + _topics(prefix, ["ground_truth"], WRITE) + [IDEMPOTENT])
    return table


def principals() -> list[str]:
    """Every principal, the operator first."""
    return [OPERATOR, *sorted(grants("mailroom."))]
