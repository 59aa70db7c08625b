"""The scoring job: routed documents in; one topic per department and the predictions log out.

    routed.text ------------------------------------------------+
    routed.scans --(key: scan)--> read scans (layout + OCR, engines side by side, own parallelism) --+--(key: sender)--> sender features (keyed state, Redis mirror)
        <-- predictions log (this job's own decisions: the sender's recent labels)
    --(key: subtask shard)--> micro-batched ONNX scoring --> dept.<department> (the document + decision) + predictions
        <-- model-control (broadcast: which model serves in which slot)   --> model-events
                                                    challenger in shadow --> shadow-predictions
    a record that makes decoding, features or a model raise --> dead-letters (PROCESSING_ERROR)

The champion models are resolved from the registry before the job starts (a model trained on
another feature set is refused there) and loaded once per operator instance; from then on the
model-control topic says what serves, without a restart (`mailroom models deploy`).
"""

from __future__ import annotations

import argparse
import functools
import sys

from pyflink.common import Types
from pyflink.datastream import DataStream

from config.settings import Settings
from jobs.connectors import BYTES, read_records, write_bytes
from jobs.environment import EXACTLY_ONCE, add_run_arguments, make_env, refuse_to_start_on_errors
from models.ocr import OcrConfig
from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name
from udfs.adapters.common import DEAD_LETTERS, DecodeOrDeadLetter
from udfs.adapters.scoring import (DEPARTMENT_OUTPUTS, JOB, MODEL_EVENTS, SHADOW_PREDICTIONS, ComputeSenderFeatures, CopyToEveryShard,
                                   ReadScans, ScoreMicroBatches, scan_key, sender_and_source,
                                   sender_label_and_source)
from udfs.scoring import SCORING_VERSION, ScoringConfig
from udfs.sharding import MAX_PARALLELISM


def build(documents: DataStream, own_predictions: DataStream, control: DataStream, config: ScoringConfig,
          redis_client_factory=None, ocr_parallelism: int | None = None) -> dict[str, DataStream]:
    """Wire reading, feature computation and scoring over (value, topic, partition, offset) rows
    of the routed documents (text and scans), of the job's own predictions and of the
    model-control topic. Returns the predictions, each department's stream, the model events,
    the shadow predictions and the dead letters. `redis_client_factory` (None: no Redis) feeds
    the sender feature mirror; `ocr_parallelism` (None: the job's) is the scan reader's."""
    budget = config.max_failures_per_minute
    routed = documents.process(DecodeOrDeadLetter("routed_document", JOB, SCORING_VERSION, budget, project=sender_and_source),
                               output_type=Types.PICKLED_BYTE_ARRAY()).name("decode routed documents").uid("scoring-decode-documents")
    texts = routed.filter(lambda item: item[2] == "TEXT").name("text documents").uid("scoring-texts")
    scans = routed.filter(lambda item: item[2] == "IMAGE").name("scans").uid("scoring-scans")
    readers = (scans.key_by(scan_key, key_type=Types.STRING()).process(ReadScans(config), output_type=Types.PICKLED_BYTE_ARRAY())
               .name("read scans (layout features + tesseract)").uid("scoring-read-scans"))
    read = readers
    if ocr_parallelism:
        readers.set_parallelism(ocr_parallelism)
        # PyFlink's key_by forwards into its own key-adding operator at the job's parallelism, whatever partitioning is set
        # before it: the readers' output is rebalanced into an operator of the job's parallelism first
        read = readers.rebalance().map(lambda item: item, output_type=Types.PICKLED_BYTE_ARRAY()).name("scans read, to the scorers").uid(
            "scoring-scans-read")
    documents_read = texts.union(read)
    decided = own_predictions.process(DecodeOrDeadLetter("prediction", JOB, SCORING_VERSION, budget, project=sender_label_and_source),
                                      output_type=Types.PICKLED_BYTE_ARRAY()).name("decode own predictions").uid("scoring-decode-predictions")
    pending = (
        documents_read.connect(decided)
        .key_by(lambda item: item[0], lambda item: item[0], key_type=Types.STRING())
        .process(ComputeSenderFeatures(config, redis_client_factory), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("sender features")
        .uid("scoring-sender-features")
    )
    deployments = control.process(DecodeOrDeadLetter("model_control", JOB, SCORING_VERSION, budget),
                                  output_type=Types.PICKLED_BYTE_ARRAY()).name("decode model control").uid("scoring-decode-control")
    per_shard = deployments.process(CopyToEveryShard(), output_type=Types.PICKLED_BYTE_ARRAY()).name("model control to every shard").uid(
        "scoring-control-to-shards")
    predictions = (
        pending.connect(per_shard)
        .key_by(lambda item: item[0], lambda item: item[0], key_type=Types.INT())
        .process(ScoreMicroBatches(config), output_type=BYTES)
        .name("score micro-batches (onnxruntime)")
        .uid("scoring-score")
    )
    outputs = {"predictions": predictions}
    outputs.update({dept: predictions.get_side_output(tag) for dept, tag in DEPARTMENT_OUTPUTS.items()})
    outputs["model_events"] = predictions.get_side_output(MODEL_EVENTS)
    outputs["shadow_predictions"] = predictions.get_side_output(SHADOW_PREDICTIONS)
    outputs["dead_letters"] = routed.get_side_output(DEAD_LETTERS).union(
        readers.get_side_output(DEAD_LETTERS), decided.get_side_output(DEAD_LETTERS), deployments.get_side_output(DEAD_LETTERS), pending.get_side_output(DEAD_LETTERS),
        predictions.get_side_output(DEAD_LETTERS))
    return outputs


def parse_args(argv: list[str], settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs/scoring.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=str(settings.registry_dir), help="model registry (default: %(default)s)")
    parser.add_argument("--group-id", default="mailroom-scoring", help="consumer group; also names the sinks' transactions")
    parser.add_argument("--batch-size", type=int, default=ScoringConfig.batch_size, help="documents per ONNX call (default: %(default)s)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=ScoringConfig.max_batch_delay_ms,
                        help="score a partial batch after this wait (default: %(default)s)")
    parser.add_argument("--deadline-ms", type=int, default=ScoringConfig.deadline_ms,
                        help="the champion's time for one micro-batch; past it the previous model (or the prior) decides (default: %(default)s)")
    parser.add_argument("--triage-threshold", type=float, default=ScoringConfig.triage_threshold,
                        help="below this top probability a scan goes to triage (default: %(default)s)")
    parser.add_argument("--text-triage-threshold", type=float, default=ScoringConfig.text_triage_threshold,
                        help="below this top probability a text document goes to triage (default: %(default)s)")
    ocr = parser.add_argument_group("reading scans (OCR)")
    ocr.add_argument("--no-ocr", action="store_true", help="do not read scans: the layout model decides every scan (the fallback-only path)")
    ocr.add_argument("--no-ocr-cache", action="store_true", help="read every page, even one read before (benchmarks); default: "
                     "page texts are kept by content hash under the cache directory, shared with training")
    ocr.add_argument("--ocr-parallelism", type=int, help="parallel scan readers (default: the job's parallelism); give reading more TaskManagers than scoring")
    ocr.add_argument("--ocr-engines", type=int, default=OcrConfig.engines,
                     help="Tesseract engines per scan reader, reading side by side on threads of their own (default: %(default)s)")
    ocr.add_argument("--ocr-inverted-retry", choices=["on", "off"], default="on",
                     help="read a poorly read line again as white on black (Tesseract's tessedit_do_invert; default: %(default)s); "
                     "off reads pages about 1.16x faster, for scans without inverted print")
    ocr.add_argument("--ocr-languages", default=OcrConfig.languages, help="Tesseract languages, joined by + (default: %(default)s; installed: eng, deu, fra)")
    ocr.add_argument("--ocr-page-timeout-ms", type=int, default=OcrConfig.page_timeout_ms,
                     help="the engine's timeout per page; past it the layout model decides (default: %(default)s)")
    ocr.add_argument("--ocr-max-pages", type=int, default=OcrConfig.max_pages, help="pages read per scan (default: %(default)s)")
    ocr.add_argument("--ocr-max-wait-ms", type=int, default=OcrConfig.max_wait_ms,
                     help="a scan that waited longer since routing is not read: the layout model decides (default: %(default)s)")
    add_run_arguments(parser, "stop at the inputs' latest offsets at start", failure_budget=ScoringConfig.max_failures_per_minute)
    return parser.parse_args(argv)


def ocr_config(args: argparse.Namespace) -> OcrConfig:
    """How the job's engines read scans, from its arguments."""
    return OcrConfig(languages=args.ocr_languages, engines=args.ocr_engines, page_timeout_ms=args.ocr_page_timeout_ms,
                     max_pages=args.ocr_max_pages, max_wait_ms=args.ocr_max_wait_ms, retry_inverted=args.ocr_inverted_retry == "on")


@refuse_to_start_on_errors
def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env().as_principal(JOB)  # each job is its own Kafka principal (schemas/access.py)
    args = parse_args(sys.argv[1:] if argv is None else argv, settings)
    config = ScoringConfig.from_registry(args.registry, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay_ms,
                                         triage_threshold=args.triage_threshold,
                                         text_triage_threshold=args.text_triage_threshold, max_failures_per_minute=args.max_failures_per_minute,
                                         deadline_ms=args.deadline_ms, read_scans=not args.no_ocr,
                                         ocr_cache_dir=None if args.no_ocr_cache else str(settings.cache_dir / "ocr"),
                                         ocr=ocr_config(args))
    env = make_env(settings, JOB, args.parallelism, args.restore_from, args.delivery, args.checkpoint_interval_ms,
                   args.state_backend, args.buffer_timeout_ms)
    env.set_max_parallelism(MAX_PARALLELISM)
    prefix = settings.topic_prefix
    routed_topics = [topic_name("routed_text", prefix), topic_name("routed_scans", prefix)]
    predictions_topic = topic_name("predictions", prefix)
    documents = read_records(env, settings, routed_topics, args.group_id, bounded=args.bounded)
    own_predictions = read_records(env, settings, [predictions_topic], f"{args.group_id}-feedback", bounded=args.bounded)
    control = read_records(env, settings, [topic_name("model_control", prefix)], f"{args.group_id}-control", bounded=args.bounded)
    redis = functools.partial(settings.redis_client, "scoring", socket_timeout=2, socket_connect_timeout=2)
    outputs = build(documents, own_predictions, control, config, redis, args.ocr_parallelism)
    sink = functools.partial(write_bytes, settings, exactly_once=args.delivery == EXACTLY_ONCE)
    outputs["predictions"].sink_to(sink(predictions_topic, f"{args.group_id}-predictions")).name(
        f"kafka: {predictions_topic}").uid("scoring-sink-predictions")
    for label, dept in DEPARTMENTS.items():
        topic = topic_name(department_topic_key(label), prefix)
        outputs[dept].sink_to(sink(topic, f"{args.group_id}-{dept}")).name(f"kafka: {topic}").uid(f"scoring-sink-{dept}")
    for key in ("dead_letters", "model_events", "shadow_predictions"):
        topic = topic_name(key, prefix)
        outputs[key].sink_to(sink(topic, f"{args.group_id}-{key.replace('_', '-')}")).name(f"kafka: {topic}").uid(
            f"scoring-sink-{key.replace('_', '-')}")
    env.execute(f"mailroom-{JOB}")


if __name__ == "__main__":
    main()
