"""The router job: raw documents in; cleaned text, cleaned scans and dead letters out.

    input topic --(raw bytes + coordinates)--> decode, validate, clean --key by doc_id-->
    drop duplicate ids --> routed.text | routed.scans ;  every rejection --> dead-letters

Exactly-once: checkpointed Kafka offsets, transactional sinks; readers use read_committed.
"""

from __future__ import annotations

import argparse
import sys

from pyflink.common import Types
from pyflink.datastream import DataStream

from jobs.connectors import BYTES, read_records, write_bytes
from jobs.environment import EXACTLY_ONCE, add_run_arguments, make_env, refuse_to_start_on_errors
from config.settings import Settings
from schemas.topics import topic_name
from udfs.adapters.common import DEAD_LETTERS
from udfs.adapters.router import ROUTED_SCANS, ROUTED_TEXT, DropDuplicateIds, RouteDocuments
from udfs.routing import RouterConfig

JOB = "router"


def build(raw: DataStream, config: RouterConfig) -> dict[str, DataStream]:
    """Wire the router over a stream of (value, topic, partition, offset) rows."""
    candidates = raw.process(RouteDocuments(config), output_type=Types.PICKLED_BYTE_ARRAY()).name("decode, validate, clean").uid("router-route")
    unique = (
        candidates.key_by(lambda c: c[0], key_type=Types.STRING())
        .process(DropDuplicateIds(config), output_type=BYTES)
        .name("drop duplicate ids")
        .uid("router-drop-duplicates")
    )
    return {
        "text": unique.get_side_output(ROUTED_TEXT),
        "scans": unique.get_side_output(ROUTED_SCANS),
        "dead_letters": candidates.get_side_output(DEAD_LETTERS).union(unique.get_side_output(DEAD_LETTERS)),
    }


def parse_args(argv: list[str], settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs/router.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prefix = settings.topic_prefix
    parser.add_argument("--input", default=topic_name("documents", prefix), help="documents topic (default: %(default)s)")
    parser.add_argument("--text-topic", default=topic_name("routed_text", prefix), help="default: %(default)s")
    parser.add_argument("--scans-topic", default=topic_name("routed_scans", prefix), help="default: %(default)s")
    parser.add_argument("--dead-letter-topic", default=topic_name("dead_letters", prefix), help="default: %(default)s")
    parser.add_argument("--group-id", default="mailroom-router", help="consumer group; also names the sinks' transactions")
    parser.add_argument("--duplicate-window-ms", type=int, default=RouterConfig.duplicate_window_ms, help="default: %(default)s (24 h)")
    add_run_arguments(parser, "stop at the input's latest offsets at start (batch-like runs)")
    return parser.parse_args(argv)


@refuse_to_start_on_errors
def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env().as_principal(JOB)  # each job is its own Kafka principal (schemas/access.py)
    args = parse_args(sys.argv[1:] if argv is None else argv, settings)
    env = make_env(settings, JOB, args.parallelism, args.restore_from, args.delivery, args.checkpoint_interval_ms,
                   args.state_backend, args.buffer_timeout_ms)
    config = RouterConfig(duplicate_window_ms=args.duplicate_window_ms)
    raw = read_records(env, settings, [args.input], args.group_id, bounded=args.bounded)
    outputs = build(raw, config)
    for name, topic in (("text", args.text_topic), ("scans", args.scans_topic), ("dead_letters", args.dead_letter_topic)):
        sink = write_bytes(settings, topic, f"{args.group_id}-{name}", exactly_once=args.delivery == EXACTLY_ONCE)
        outputs[name].sink_to(sink).name(f"kafka: {topic}").uid(f"router-sink-{name}")
    env.execute(f"mailroom-{JOB}")


if __name__ == "__main__":
    main()
