"""What every job's adapters share: byte type, state TTL, subtask info, clocks, the failure
path, the operator metrics."""

from __future__ import annotations

from typing import Callable

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig

from schemas import codec
from schemas.metric_names import DEAD_LETTERS as DEAD_LETTER_COUNT, GROUP, OperatorMetric
from schemas.units import now_ms
from udfs.dead_letters import FailureBudget, Reason, SourceRecord, processing_error
from udfs.operator_metrics import FlushPolicy, MetricCounts

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
DEAD_LETTERS = OutputTag("dead-letters", BYTES)


def source_of(row) -> SourceRecord:
    """The (value, topic, partition, offset) row of `jobs.connectors.read_records` as a SourceRecord."""
    return SourceRecord(b"" if row[0] is None else bytes(row[0]), row[1], row[2], row[3])


def subtask_info(runtime_context: RuntimeContext) -> tuple[int, int]:
    """(index of this subtask, parallelism). Thread mode's runtime context still calls the
    pre-2.0 Java getters, which Flink 2 moved to getTaskInfo(); go there when they fail."""
    try:
        return runtime_context.get_index_of_this_subtask(), runtime_context.get_number_of_parallel_subtasks()
    except AttributeError:
        info = runtime_context._runtime_context.getTaskInfo()
        return info.getIndexOfThisSubtask(), info.getNumberOfParallelSubtasks()


def state_ttl(ms: int) -> StateTtlConfig:
    """Expire state `ms` after its last write; clean up incrementally on the heap backend.

    The cleanup strategy is named explicitly: PyFlink's default adds a RocksDB compaction
    filter whose Python object needs a py4j gateway, which a thread-mode worker does not have
    (it tries to launch one and hangs).
    """
    return (
        StateTtlConfig.new_builder(Time.milliseconds(ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(10, False)
        .cleanup_full_snapshot()
        .build()
    )


class OperatorMetrics:
    """An operator's metrics (`schemas.metric_names`): `counts` gathers what it counts, `push`
    hands it to Flink's metric objects in one go (one `inc(n)` or `update(v)` per metric and
    label values), made the first time under the "mailroom" group with one `add_group(key,
    value)` per label. Per-record operators call `record()` per record (and `timer()` on their
    timers): it pushes when `policy` says; and `push()` on close."""

    def __init__(self, runtime_context: RuntimeContext, policy: FlushPolicy | None = None):
        self.group = runtime_context.get_metrics_group().add_group(GROUP)
        self.counts, self.policy, self.objects = MetricCounts(), policy or FlushPolicy(), {}
        self.policy.started(now_ms())

    def record(self) -> None:
        if self.policy.record(now_ms()):
            self.push()

    def timer(self) -> None:
        if self.policy.due(now_ms()):
            self.push()

    def declare(self, metric: OperatorMetric, *values: str) -> None:
        """Register a metric before its first count: its series starts at 0, so a rate sees the first increase."""
        self._object(metric, tuple(str(v) for v in values))

    def push(self, counts: MetricCounts | None = None) -> None:
        """Push `counts` (None: what `counts` gathered, which then starts again)."""
        increments, last = (self.counts if counts is None else counts).take()
        for (metric, values), n in increments.items():
            self._object(metric, values).inc(n)
        for (metric, values), value in last.items():
            self._object(metric, values).update(value)

    def _object(self, metric: OperatorMetric, values: tuple[str, ...]):
        key = (metric, values)
        if key not in self.objects:
            group = self.group
            for label, value in zip(metric.labels, values):
                group = group.add_group(label, value)
            self.objects[key] = group.counter(metric.name) if metric.kind == "counter" else group.distribution(metric.name)
        return self.objects[key]


class FailurePath:
    """An operator's way out for one record that made it raise: the PROCESSING_ERROR dead
    letter, counted at once in DEAD_LETTERS{reason=PROCESSING_ERROR} (rare: the budget bounds
    them), and the failure budget (a storm fails the job)."""

    def __init__(self, runtime_context: RuntimeContext, job: str, job_version: str, max_per_minute: int):
        self.job, self.job_version = job, job_version
        self.budget = FailureBudget(max_per_minute)
        self.metrics = OperatorMetrics(runtime_context)

    def dead_letter(self, source: SourceRecord, exc: Exception, doc_id: str | None = None):
        """The (DEAD_LETTERS, dead letter) output for `source`; raises FailureStorm past the budget."""
        now = now_ms()
        self.metrics.counts.add(DEAD_LETTER_COUNT, Reason.PROCESSING_ERROR.value)
        self.metrics.push()
        self.budget.spend(now, exc)
        return DEAD_LETTERS, processing_error(source, exc, self.job, self.job_version, now, doc_id)


class DecodeOrDeadLetter(ProcessFunction):
    """Kafka rows (value, topic, partition, offset) -> `project(record, source)` with the shared
    codec, (record, SourceRecord) by default; a value that does not decode as `record_type` is
    dead-lettered (PROCESSING_ERROR).
    """

    def __init__(self, record_type: str, job: str, job_version: str, max_failures_per_minute: int,
                 project: Callable[[dict, SourceRecord], object] | None = None):
        self.record_type, self.job, self.job_version = record_type, job, job_version
        self.max_failures_per_minute, self.project = max_failures_per_minute, project

    def open(self, runtime_context: RuntimeContext):
        self.failures = FailurePath(runtime_context, self.job, self.job_version, self.max_failures_per_minute)

    def process_element(self, row, ctx: ProcessFunction.Context):
        source = source_of(row)
        try:
            record = codec.decode(source.value, expected=self.record_type).record
        except Exception as exc:  # codec.DecodeError, or anything a broken record makes fastavro raise
            yield self.failures.dead_letter(source, exc)
            return
        yield (record, source) if self.project is None else self.project(record, source)
