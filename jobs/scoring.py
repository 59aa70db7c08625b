"""The scoring job: routed documents in; one topic per department and the predictions log out.

    routed.text + routed.scans --(key: sender)--> sender features (keyed state, Redis mirror)
        <-- predictions log (this job's own decisions: the sender's recent labels)
    --(key: subtask shard)--> micro-batched ONNX scoring --> dept.<department> + predictions

The champion models are resolved from the registry before the job starts (a model trained on
another feature set is refused there) and loaded once per operator instance.
"""

from __future__ import annotations

import argparse
import sys

from pyflink.common import Types
from pyflink.datastream import DataStream

from jobs.connectors import BYTES, read_bytes, write_bytes
from jobs.environment import make_env
from config.settings import Settings
from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name
from udfs.functions import DEPARTMENT_OUTPUTS, ComputeSenderFeatures, DecodeRecords, ScoreMicroBatches
from udfs.scoring import ScoringConfig
from udfs.sharding import MAX_PARALLELISM

JOB = "scoring"


def build(documents: DataStream, own_predictions: DataStream, settings: Settings, config: ScoringConfig) -> dict[str, DataStream]:
    """Wire feature computation and scoring; returns the predictions and each department's stream."""
    routed = documents.map(DecodeRecords("routed_document"), output_type=Types.PICKLED_BYTE_ARRAY()).name("decode routed documents").uid("scoring-decode-documents")
    decided = own_predictions.map(DecodeRecords("prediction"), output_type=Types.PICKLED_BYTE_ARRAY()).name("decode own predictions").uid("scoring-decode-predictions")
    pending = (
        routed.connect(decided)
        .key_by(lambda doc: doc["sender"], lambda prediction: prediction["sender"], key_type=Types.STRING())
        .process(ComputeSenderFeatures(settings, config), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("sender features")
        .uid("scoring-sender-features")
    )
    predictions = (
        pending.key_by(lambda item: item[0], key_type=Types.INT())
        .process(ScoreMicroBatches(config), output_type=BYTES)
        .name("score micro-batches (onnxruntime)")
        .uid("scoring-score")
    )
    outputs = {"predictions": predictions}
    outputs.update({dept: predictions.get_side_output(tag) for dept, tag in DEPARTMENT_OUTPUTS.items()})
    return outputs


def parse_args(argv: list[str], settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs/scoring.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=str(settings.registry_dir), help="model registry (default: %(default)s)")
    parser.add_argument("--group-id", default="mailroom-scoring", help="consumer group; also names the sinks' transactions")
    parser.add_argument("--parallelism", type=int, default=None, help="operator parallelism (default: flink-conf)")
    parser.add_argument("--batch-size", type=int, default=ScoringConfig.batch_size, help="documents per ONNX call (default: %(default)s)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=ScoringConfig.max_batch_delay_ms,
                        help="score a partial batch after this wait (default: %(default)s)")
    parser.add_argument("--triage-threshold", type=float, default=ScoringConfig.triage_threshold,
                        help="below this top probability a document goes to triage (default: %(default)s)")
    parser.add_argument("--bounded", action="store_true", help="stop at the inputs' latest offsets at start")
    parser.add_argument("--restore-from", default=None, help="resume from this checkpoint or savepoint path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    args = parse_args(sys.argv[1:] if argv is None else argv, settings)
    config = ScoringConfig.from_registry(args.registry, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay_ms,
                                         triage_threshold=args.triage_threshold)
    env = make_env(settings, JOB, args.parallelism, args.restore_from)
    env.set_max_parallelism(MAX_PARALLELISM)
    prefix = settings.topic_prefix
    routed_topics = [topic_name("routed_text", prefix), topic_name("routed_scans", prefix)]
    predictions_topic = topic_name("predictions", prefix)
    documents = read_bytes(env, settings, routed_topics, args.group_id, uid="scoring-source-documents", bounded=args.bounded)
    own_predictions = read_bytes(env, settings, [predictions_topic], f"{args.group_id}-feedback", uid="scoring-source-predictions",
                                 bounded=args.bounded)
    outputs = build(documents, own_predictions, settings, config)
    outputs["predictions"].sink_to(write_bytes(settings, predictions_topic, f"{args.group_id}-predictions")).name(
        f"kafka: {predictions_topic}").uid("scoring-sink-predictions")
    for label, dept in DEPARTMENTS.items():
        topic = topic_name(department_topic_key(label), prefix)
        outputs[dept].sink_to(write_bytes(settings, topic, f"{args.group_id}-{dept}")).name(f"kafka: {topic}").uid(f"scoring-sink-{dept}")
    env.execute(f"mailroom-{JOB}")


if __name__ == "__main__":
    main()
