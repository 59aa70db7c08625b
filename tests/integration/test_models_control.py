"""`mailroom models deploy | retire | status` through the real broker: the records on the compacted
model-control topic, the registry's champion, a refused deploy that publishes nothing, and status."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace

import pytest

from mailroom.cli import main
from mailroom.control import DeployRefused, deploy
from mailroom.kafkautil import producer, read_topic

from schemas import codec
from schemas.topics import topic_name
from tests.unit.test_models_control_cli import copy_with_second_version


def _control_messages(settings) -> list[tuple[str, dict]]:
    return [(m.key.decode(), codec.decode(m.value, expected="model_control").record)
            for m in read_topic(settings, topic_name("model_control", settings.topic_prefix), timeout_s=10)]


def _send(settings, key: str, record_type: str, records: list[dict]) -> None:
    kafka = producer(settings)
    try:
        for record in records:
            kafka.send(topic_name(key, settings.topic_prefix), codec.encode(record_type, record)).get(timeout=30)
    finally:
        kafka.close()


def test_deploy_retire_and_status_through_the_broker(pipeline_settings, tmp_path, monkeypatch, capsys):
    registry = copy_with_second_version(pipeline_settings.registry_dir, tmp_path / "registry")  # text v1 champion, v2 not
    settings = replace(pipeline_settings, registry_dir=registry.root)
    for name, value in settings.as_env().items():  # the command line in-process: Settings.from_env reads these
        monkeypatch.setenv(name, value)

    assert main(["models", "deploy", "text", "2", "--slot", "challenger", "--sample", "0.25", "--note", "shadow it first"]) == 0
    assert "published text/challenger = v2, shadow sample 0.25" in capsys.readouterr().out
    assert [(k, r["slot"], r["version"], r["shadow_sample"]) for k, r in _control_messages(settings)] == [("text/challenger", "CHALLENGER", "2", 0.25)]

    result = deploy(settings, registry, "text", 2, "champion", note="won the shadow run")
    messages = _control_messages(settings)[1:]
    assert [(k, r["slot"], r["action"], r["version"]) for k, r in messages] == [("text/previous", "PREVIOUS", "DEPLOY", "1"),
                                                                              ("text/champion", "CHAMPION", "DEPLOY", "2")]
    assert messages[1][1]["sha256"] == registry.get("text", 2).card["files"]["model.onnx"]["sha256"]
    assert registry.champion("text").version == 2 and result.promotion["promoted"]
    assert registry.history("text")[-1]["reason"] == "deployed by an operator: won the shadow run"
    assert "challenger too" in result.warnings[0]

    assert main(["models", "retire", "text", "--slot", "challenger", "--note", "done"]) == 0
    assert "published text/challenger = retired (it held v2)" in capsys.readouterr().out
    key, record = _control_messages(settings)[-1]
    assert (key, record["slot"], record["action"], record["version"], record["note"]) == ("text/challenger", "CHALLENGER", "RETIRE", None, "done")

    card = registry.get("text", 1).onnx_path.parent / "card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "feature_set_id": "sender-v0"}))
    count = len(_control_messages(settings))
    with pytest.raises(DeployRefused, match="'sender-v0'"):
        deploy(settings, registry, "text", 1, "champion")
    assert len(_control_messages(settings)) == count and registry.champion("text").version == 2  # nothing published, nothing moved

    now = int(time.time() * 1000)
    _send(settings, "model_events", "model_event", [
        {"job": "scoring", "subtask": 0, "kind": "text", "slot": "CHAMPION", "outcome": "SERVING", "model_name": "mailroom-text",
         "version": "1", "serving_version": "1", "at_ms": now - 60_000}])
    _send(settings, "shadow_predictions", "shadow_prediction", [
        {"doc_id": f"d{i}", "kind": "text", "received_ms": now, "scored_ms": now, "champion_model": "mailroom-text", "champion_version": "1",
         "champion_label": "invoice", "champion_probabilities": {"invoice": 0.9}, "champion_latency_ms": 2.0, "challenger_model": "mailroom-text",
         "challenger_version": "2", "challenger_label": "invoice" if i else "other", "challenger_probabilities": {"invoice": 0.8},
         "challenger_latency_ms": 4.0} for i in range(4)])
    out = subprocess.run([settings.python_executable, "-m", "mailroom.cli", "models", "status", "--json"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **settings.as_env()})
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["registry"]["champions"] == {"text": "2", "scan": "1", "image": "1"}
    assert [(r["key"], r["action"], r["version"]) for r in status["control"]] == [
        ("text/champion", "DEPLOY", "2"), ("text/challenger", "RETIRE", None), ("text/previous", "DEPLOY", "1")]
    [subtask] = status["subtasks"]
    assert subtask["serving_version"] == "1" and subtask["expected_version"] == "2" and "predates that record" in subtask["flag"]
    [shadow] = status["shadow"]
    assert (shadow["pairs"], shadow["agreement"], shadow["challenger_latency_ms"]) == (4, 0.75, 4.0)
    assert status["unreadable"] == {"model_control": 0, "model_events": 0, "shadow_predictions": 0}
    assert main(["models", "status"]) == 0
    tables = " ".join(capsys.readouterr().out.split())
    assert "newest record per key" in tables and "disagreements:" in tables and "75.0%" in tables
