"""The accuracy job: predictions joined with delayed ground truth; online accuracy per model
version and slot; champion vs challenger on the same documents.

    predictions (event time: received_ms) --+
                                            +--(key: doc_id)--> join --> labelled-examples
    ground truth (event time: sent_ms) -----+        |
                       |              (key: model name + version + slot) --> windows + last N
                       |              --> metrics (accuracy reports), alerts, retraining requests, Redis
                       +-------------------------+
    shadow pairs (event time: received_ms) ------+--(key: doc_id)--> shadow join --> labelled-shadow-pairs (the judge's)
                                      (key: kind + champion + challenger) --> windows + last N
                                      --> metrics (shadow reports), Redis
    a record that does not decode, or that makes a join raise --> dead-letters (PROCESSING_ERROR)

A separate job (not a side stream of the scoring job): ground truth arrives days later and at
its own pace, its event-time watermarks must not hold back scoring, and it can be restarted,
rescaled or replayed from the predictions log without touching the scoring path.
"""

from __future__ import annotations

import argparse
import functools
import sys

from pyflink.common import Duration, Types, WatermarkStrategy

from config.settings import Settings
from jobs.connectors import BYTES, read_records, write_bytes
from jobs.environment import EXACTLY_ONCE, add_run_arguments, make_env, refuse_to_start_on_errors
from schemas.topics import topic_name
from schemas.units import DAY_S, MINUTE_MS
from udfs.adapters.accuracy import (ACCURACY_OUTPUTS, JOB, JOIN_OUTPUTS, EventTimeOf, JoinPredictionsWithTruth, JoinShadowsWithTruth, TrackAccuracy,
                                    TrackShadowPairs)
from udfs.adapters.common import DEAD_LETTERS, DecodeOrDeadLetter
from udfs.joining import JOIN_VERSION, JoinConfig
from udfs.metrics import MetricsConfig


IDLE_INPUT_MS = 30_000  # an unbounded input silent this long stops holding back the joins' watermark


def build(predictions, truths, shadows, join: JoinConfig, metrics: MetricsConfig, out_of_orderness_ms: int | None, redis_ttl_s: int,
          redis_client_factory=None) -> dict:
    """Wire the joins and the metrics over (value, topic, partition, offset) rows of predictions,
    ground truth and shadow pairs. Returns the metrics (accuracy and shadow reports), alerts,
    retraining requests, labelled examples, labelled shadow pairs and dead letters. `redis_client_factory` (None: no
    Redis) feeds the dashboard hashes.

    `out_of_orderness_ms` is the watermark's lag behind the newest event of an input (an input silent
    for IDLE_INPUT_MS stops holding the joins back). None, for a bounded run: no watermark before the
    end of the input, so every wait ends when all of it has been read. A backlog is read a partition
    at a time, so its event time jumps back and forth by up to its whole span; a watermark that
    followed it would end the waits of records still unread, and the counts would depend on which
    partition and topic happened to be read first."""

    def event_time(rows, record_type: str, field: str, uid: str):
        if out_of_orderness_ms is None:
            strategy = WatermarkStrategy.no_watermarks()
        else:
            strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(out_of_orderness_ms)).with_idleness(
                Duration.of_millis(IDLE_INPUT_MS))
        strategy = strategy.with_timestamp_assigner(EventTimeOf(field))  # with_idleness drops a Python assigner: assigner last
        decoded = rows.process(DecodeOrDeadLetter(record_type, JOB, JOIN_VERSION, join.max_failures_per_minute),
                               output_type=Types.PICKLED_BYTE_ARRAY()).name(f"decode {record_type}").uid(f"{uid}-decode")
        return decoded, decoded.assign_timestamps_and_watermarks(strategy).name(f"event time: {field}").uid(f"{uid}-event-time")

    decoded_predictions, timed_predictions = event_time(predictions, "prediction", "received_ms", "accuracy-predictions")
    decoded_truths, timed_truths = event_time(truths, "ground_truth", "sent_ms", "accuracy-truths")
    decoded_shadows, timed_shadows = event_time(shadows, "shadow_prediction", "received_ms", "accuracy-shadows")

    def judged(timed, joiner, tracker, joined_name: str, joined_uid: str, reports_name: str, reports_uid: str):
        """`timed` joined with the ground truth by doc_id, then figures per key: (joined, reports)."""
        joined = (
            timed.connect(timed_truths)
            .key_by(lambda item: item[0]["doc_id"], lambda truth: truth[0]["doc_id"], key_type=Types.STRING())
            .process(joiner, output_type=Types.PICKLED_BYTE_ARRAY())
            .name(joined_name)
            .uid(joined_uid)
        )
        reports = (
            joined.key_by(lambda keyed_event: keyed_event[0], key_type=Types.STRING())
            .process(tracker, output_type=BYTES)
            .name(reports_name)
            .uid(reports_uid)
        )
        return joined, reports

    joined, reports = judged(timed_predictions, JoinPredictionsWithTruth(join), TrackAccuracy(metrics, redis_ttl_s, redis_client_factory),
                             "join predictions with ground truth", "accuracy-join", "online accuracy per model version", "accuracy-metrics")
    paired, shadow_reports = judged(timed_shadows, JoinShadowsWithTruth(join), TrackShadowPairs(metrics, redis_ttl_s, redis_client_factory),
                                    "join shadow pairs with ground truth", "accuracy-shadow-join",
                                    "champion vs challenger per pair of versions", "accuracy-shadow-metrics")
    outputs = {key: reports.get_side_output(tag) for key, tag in ACCURACY_OUTPUTS.items() if key not in JOIN_OUTPUTS}
    outputs["metrics"] = outputs["metrics"].union(shadow_reports.get_side_output(ACCURACY_OUTPUTS["metrics"]))
    outputs["labelled_examples"] = joined.get_side_output(ACCURACY_OUTPUTS["labelled_examples"])
    outputs["labelled_shadow_pairs"] = paired.get_side_output(ACCURACY_OUTPUTS["labelled_shadow_pairs"])
    outputs["dead_letters"] = decoded_predictions.get_side_output(DEAD_LETTERS).union(
        decoded_truths.get_side_output(DEAD_LETTERS), decoded_shadows.get_side_output(DEAD_LETTERS), joined.get_side_output(DEAD_LETTERS),
        paired.get_side_output(DEAD_LETTERS))
    return outputs


def parse_args(argv: list[str]) -> argparse.Namespace:
    j, m = JoinConfig(), MetricsConfig()
    parser = argparse.ArgumentParser(prog="jobs/accuracy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-id", default="mailroom-accuracy", help="consumer group; also names the sinks' transactions")
    parser.add_argument("--truth-wait-ms", type=int, default=j.truth_wait_ms,
                        help="how long a prediction (or shadow pair) waits for ground truth (default 7 days)")
    parser.add_argument("--prediction-wait-ms", type=int, default=j.prediction_wait_ms,
                        help="how long early truth waits for its prediction (or shadow pair) (default 1 h)")
    parser.add_argument("--window-ms", type=int, default=m.window_ms, help="sliding window size in event time (default 1 h)")
    parser.add_argument("--slide-ms", type=int, default=m.slide_ms, help="window slide (default 5 min)")
    parser.add_argument("--settle-ms", type=int, default=m.settle_ms, help="report a window this long after it ends (default 1 h)")
    parser.add_argument("--last-n", type=int, default=m.last_n, help="labelled pairs in the last-N view (default %(default)s)")
    parser.add_argument("--min-support", type=int, default=m.min_support, help="labelled pairs before alerting (default %(default)s)")
    parser.add_argument("--min-macro-f1", type=float, default=m.min_macro_f1, help="alert below this macro-F1 (default %(default)s)")
    parser.add_argument("--min-accuracy", type=float, default=m.min_accuracy, help="alert below this accuracy (default %(default)s)")
    parser.add_argument("--out-of-orderness-ms", type=int, default=5 * MINUTE_MS, help="watermark lag behind the newest event (default 5 min); a --bounded run has none before its end")
    parser.add_argument("--redis-ttl-s", type=int, default=7 * DAY_S, help="TTL of the dashboard keys in Redis (default 7 days)")
    add_run_arguments(parser, "stop at the inputs' latest offsets at start; every wait ends there, all of the input known",
                      failure_budget=j.max_failures_per_minute)
    parser.add_argument("--from-ms", type=int, default=None, help="read records written from this epoch ms on, not from the group's offsets")
    return parser.parse_args(argv)


@refuse_to_start_on_errors
def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env().as_principal(JOB)  # each job is its own Kafka principal (schemas/access.py)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    join = JoinConfig(truth_wait_ms=args.truth_wait_ms, prediction_wait_ms=args.prediction_wait_ms,
                      max_failures_per_minute=args.max_failures_per_minute)
    metrics = MetricsConfig(window_ms=args.window_ms, slide_ms=args.slide_ms, settle_ms=args.settle_ms, last_n=args.last_n,
                            min_support=args.min_support, min_macro_f1=args.min_macro_f1, min_accuracy=args.min_accuracy)
    env = make_env(settings, JOB, args.parallelism, args.restore_from, args.delivery, args.checkpoint_interval_ms,
                   args.state_backend, args.buffer_timeout_ms)
    prefix = settings.topic_prefix
    predictions = read_records(env, settings, [topic_name("predictions", prefix)], f"{args.group_id}-predictions",
                               bounded=args.bounded, start_ms=args.from_ms)
    truths = read_records(env, settings, [topic_name("ground_truth", prefix)], f"{args.group_id}-truth", bounded=args.bounded,
                          start_ms=args.from_ms)
    shadows = read_records(env, settings, [topic_name("shadow_predictions", prefix)], f"{args.group_id}-shadow", bounded=args.bounded,
                           start_ms=args.from_ms)
    redis = functools.partial(settings.redis_client, "accuracy", socket_timeout=2, socket_connect_timeout=2)
    outputs = build(predictions, truths, shadows, join, metrics, None if args.bounded else args.out_of_orderness_ms,
                    args.redis_ttl_s, redis)
    exactly_once = args.delivery == EXACTLY_ONCE
    for key, stream in outputs.items():
        topic = topic_name(key, prefix)
        stream.sink_to(write_bytes(settings, topic, f"{args.group_id}-{key}", exactly_once)).name(f"kafka: {topic}").uid(f"accuracy-sink-{key}")
    env.execute(f"mailroom-{JOB}")


if __name__ == "__main__":
    main()
