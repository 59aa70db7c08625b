"""The names of Mailroom's metrics: what the Flink operators register, what the services export,
and what the dashboard and the alert rules query. One list, so a renamed metric breaks a test,
not a chart.

An operator registers a metric as `group.add_group("mailroom")`, then `add_group(label, value)`
for each of its labels in order, then `counter(name)` or `distribution(name)` (a settable
last-value gauge in thread mode). Flink's Prometheus reporter names it
flink_taskmanager_job_task_operator_mailroom_<label keys..._>name, with one series per subtask
(labels job_name, operator_name, subtask_index, ...) and the label values as labels.

>>> DELIVERED.prometheus
'flink_taskmanager_job_task_operator_mailroom_department_delivered'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GROUP = "mailroom"
_NOT_IN_NAMES = re.compile(r"[^a-zA-Z0-9:_]")


def reported_label(value: str) -> str:
    """A label value as Flink's Prometheus reporter writes it: every character outside [a-zA-Z0-9:_]
    becomes "_" (a department "customer-care" is queried as "customer_care", a bin "0.25-0.5" as "0_25_0_5").

    >>> reported_label("customer-care"), reported_label("0.25-0.5"), reported_label("10000+")
    ('customer_care', '0_25_0_5', '10000_')
    """
    return _NOT_IN_NAMES.sub("_", str(value))
OPERATOR_PREFIX = f"flink_taskmanager_job_task_operator_{GROUP}_"


@dataclass(frozen=True)
class OperatorMetric:
    """A metric of a Python operator: its name and, in registration order, its label keys."""

    name: str
    labels: tuple[str, ...] = ()
    kind: str = "counter"  # or "last" (distribution used as a settable gauge)
    help: str = ""

    @property
    def prometheus(self) -> str:
        return OPERATOR_PREFIX + "_".join((*self.labels, self.name))


# router
DOCUMENTS_IN = OperatorMetric("documents_in", help="messages read from the input topic")
ROUTED = OperatorMetric("routed", ("destination",), help="documents routed, by destination (text, scans)")
DEAD_LETTERS = OperatorMetric("dead_letters", ("reason",), help="records dead-lettered, by reason code (every job)")
# scoring
DELIVERED = OperatorMetric("delivered", ("department",), help="documents handed to a department's topic")
PREDICTED = OperatorMetric("predicted", ("label",), help="documents by predicted label (the output mix)")
PREDICTIONS = OperatorMetric("predictions", ("kind", "slot"), help="documents decided, by model kind and slot (champion; fallback, prior: the champion missed its deadline)")
MODEL_VERSION = OperatorMetric("model_version", ("kind", "slot"), "last",
                               help="the version number each slot (champion, challenger, previous) serves (0: none): the version is its value")
BATCHES = OperatorMetric("batches", help="scoring micro-batches")
BATCH_DOCUMENTS = OperatorMetric("batch_documents", help="documents in scoring micro-batches (with BATCHES: the mean size)")
BATCH_SIZE = OperatorMetric("batch_size", (), "last", help="documents in the last micro-batch")
BATCH_SCORE_MS = OperatorMetric("batch_score_ms", (), "last", help="milliseconds the last micro-batch took to score")
LATENCY_MS = OperatorMetric("receipt_to_department_ms", ("quantile",), "last",
                            help="p50/p95/p99 over the last batch: ms from receipt (received_ms) to the department topic's sink")
OCR_PAGES = OperatorMetric("ocr_pages_read", help="scan pages read by Tesseract")
OCR_SCANS = OperatorMetric("ocr_scans", ("status",), help="scans by reading status (READ; the others make the layout model decide)")
SHADOW_PAIRS = OperatorMetric("shadow_pairs", ("kind",), help="documents the challenger scored in shadow")
SHADOW_DISAGREEMENTS = OperatorMetric("shadow_disagreements", ("kind",), help="shadow pairs where challenger and champion disagree")
REDIS_OUTAGES = OperatorMetric("redis_outages", help="times the feature mirror found Redis down")
CONTENT = OperatorMetric("content", ("type",), help="documents scored by content type (TEXT, IMAGE): the scan share")
POPULATION = OperatorMetric("population", ("kind", "feature", "bin"),
                            help="documents per model kind and bin of a monitored input (models.population; feature label: the decided "
                                 "label): the live side of the drift figures, against the card's `population`")
# accuracy
JOIN_OUTCOMES = OperatorMetric("join_outcomes", ("outcome",), help="prediction/truth join events (matched, corrected, late, orphan, unmatched, duplicate_truth, "
                                   "stale_truth, duplicate_prediction: udfs.joining), per join operator")
ALERT_OPEN = OperatorMetric("alert_open", ("model", "slot"), "last", help="1 while an accuracy alert is open for the model in that slot")

OPERATOR_METRICS = tuple(v for v in dict(globals()).values() if isinstance(v, OperatorMetric))

# the project's own services (prometheus-client), prefixed mailroom_
RETRAINER_EXAMPLES = "mailroom_retrainer_examples_total"
RETRAINER_RUNS = "mailroom_retrainer_runs_total"  # labels: kind, outcome
JUDGE_DECISIONS = "mailroom_judge_decisions_total"  # labels: kind, decision
JUDGE_PAIRS = "mailroom_judge_pairs"  # labels: kind; labelled shadow pairs gathered for the challenger on trial
