"""jobs.router.build on a MiniCluster with a bounded in-memory source: no Kafka."""

from __future__ import annotations

import time

from config.flinkconf import job_config
from jobs.environment import make_env
from jobs.router import build
from models.generator import generate
from schemas import codec
from tests.flink.harness import collect, kafka_rows
from tests.poison import encoded_documents
from udfs.routing import RouterConfig


def test_router_build_routes_cleans_and_dead_letters(test_settings):
    docs = generate(6, seed=3, scan_share=0.5)
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    values = encoded_documents(docs)
    values += [b"junk", values[0]]  # undecodable; a doc_id seen before
    env = make_env(test_settings, "router", parallelism=1)
    out = collect(build(kafka_rows(env, values, "in"), RouterConfig()))

    routed = [codec.decode(v, expected="routed_document").record for v in out["text"] + out["scans"]]
    assert sorted(r["doc_id"] for r in routed) == sorted(d["doc_id"] for d in docs)  # each once
    assert all(r["content_type"] == "TEXT" for r in (codec.decode(v).record for v in out["text"]))
    assert all(r["content_type"] == "IMAGE" for r in (codec.decode(v).record for v in out["scans"]))
    letters = sorted((codec.decode(v, expected="dead_letter").record for v in out["dead_letters"]), key=lambda r: r["source_offset"])
    assert [(r["reason"], r["source_offset"], r["original"]) for r in letters] == [
        ("UNDECODABLE", len(docs), b"junk"), ("DUPLICATE_ID", len(docs) + 1, values[0])]
    assert len(routed) + len(letters) == len(values)  # the books balance


def test_at_least_once_delivery_checkpoints_without_alignment_at_the_interval_asked(test_settings):
    from pyflink.datastream import CheckpointingMode

    from jobs.environment import AT_LEAST_ONCE, EXACTLY_ONCE

    default = make_env(test_settings, "router", parallelism=1).get_checkpoint_config()
    assert default.get_checkpointing_mode() == CheckpointingMode.EXACTLY_ONCE and default.get_checkpoint_interval() == 500
    assert default.get_min_pause_between_checkpoints() == 250
    chosen = make_env(test_settings, "router", parallelism=1, delivery=AT_LEAST_ONCE, checkpoint_interval_ms=250).get_checkpoint_config()
    assert chosen.get_checkpointing_mode() == CheckpointingMode.AT_LEAST_ONCE and chosen.get_checkpoint_interval() == 250
    assert chosen.get_min_pause_between_checkpoints() == 125  # half the interval, as the config's 500 ms / 250 ms
    kept = make_env(test_settings, "router", parallelism=1, delivery=EXACTLY_ONCE, checkpoint_interval_ms=500).get_checkpoint_config()
    assert kept.get_checkpointing_mode() == CheckpointingMode.EXACTLY_ONCE and kept.get_checkpoint_interval() == 500


def test_the_buffer_timeout_is_flink_confs_unless_a_job_asks_for_another(test_settings):
    default = make_env(test_settings, "router", parallelism=1).get_buffer_timeout()
    assert default == int(job_config(test_settings).get("execution.buffer-timeout.interval", "100ms").removesuffix("ms"))
    assert make_env(test_settings, "router", parallelism=1, buffer_timeout_ms=7).get_buffer_timeout() == 7
