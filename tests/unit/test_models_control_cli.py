"""mailroom/control.py and `mailroom models deploy | retire | status` without Kafka: the records a deploy
builds, the refusals, the newest-per-key reduction, the status rows and their disagreement flags."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from rich.console import Console

from mailroom.cli import main
from mailroom.control import (DeployRefused, checked_pointer, deploy_records, newest_per_key, retire_record, shadow_comparison,
                              shadow_sample, status_view)
from mailroom.models_cli import status_tables
from models.features import FEATURE_SET_ID
from models.pointers import ModelPointer
from models.registry import Registry
from schemas import codec


def copy_with_second_version(source: Path, target: Path, kind: str = "text") -> Registry:
    """A copy of a registry whose `kind` has a v2 (the same model registered again); v1 stays champion."""
    shutil.copytree(source, target)
    registry = Registry(target)
    champion = registry.champion(kind)
    inputs, labels = registry.eval_set(kind, champion.card["eval_set"]["fingerprint"])
    card = {k: v for k, v in champion.card.items() if k not in ("version", "created", "eval_set", "files", "promotions")}
    assert registry.register(kind, champion.onnx_path.read_bytes(), card, inputs, labels) == 2
    return registry


@pytest.fixture
def two(registry, tmp_path) -> Registry:
    return copy_with_second_version(registry, tmp_path / "registry")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run dir and Redis password in tmp_path; Kafka on a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MAILROOM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MAILROOM_REDIS_PASSWORD", "test")
    monkeypatch.setenv("MAILROOM_KAFKA_PORT", str(port))
    monkeypatch.delenv("MAILROOM_REGISTRY_DIR", raising=False)


def _edit_card(registry: Registry, kind: str, version: int, **changes) -> None:
    path = registry.get(kind, version).onnx_path.parent / "card.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


# --- building records ------------------------------------------------------------------------


def test_a_champion_deploy_keeps_the_registry_champion_as_previous_first(two):
    publications, warnings = deploy_records(two, checked_pointer(two, "text", 2), "champion", {}, "after review", at_ms=1000)
    assert warnings == []
    assert [(p.key, p.record["slot"], p.record["action"], p.record["version"]) for p in publications] == [
        ("text/previous", "PREVIOUS", "DEPLOY", "1"), ("text/champion", "CHAMPION", "DEPLOY", "2")]
    previous, champion = (p.record for p in publications)
    assert previous["sha256"] == two.get("text", 1).card["files"]["model.onnx"]["sha256"] and "v2" in previous["note"]
    assert champion["note"] == "after review" and champion["feature_set_id"] == FEATURE_SET_ID and champion["published_ms"] == 1000
    for p in publications:  # what the scoring job decodes
        assert codec.decode(codec.encode("model_control", p.record, validate=True), expected="model_control").record == p.record


def test_a_champion_deploy_takes_the_current_champion_from_the_control_topic(two):
    on_topic = ModelPointer.of(two.get("text", 1)).to_record("CHAMPION", 5, "earlier")
    publications, _ = deploy_records(two, checked_pointer(two, "text", 2), "champion", {"text/champion": on_topic}, None, at_ms=9)
    assert ModelPointer.from_record(publications[0].record) == ModelPointer.from_record(on_topic)
    v2 = ModelPointer.of(two.get("text", 2))
    again, warnings = deploy_records(two, checked_pointer(two, "text", 2), "champion",
                                     {"text/champion": v2.to_record("CHAMPION", 5), "text/challenger": v2.to_record("CHALLENGER", 6)}, None, at_ms=9)
    assert [p.key for p in again] == ["text/champion"]  # the same version: no PREVIOUS
    assert warnings == ["v2 is the text challenger too, now shadowing itself: `mailroom models retire text --slot challenger` ends that"]


def test_a_current_champion_that_fails_its_checks_is_not_kept_as_previous(two):
    on_topic = {**ModelPointer.of(two.get("text", 1)).to_record("CHAMPION", 5), "sha256": "0" * 64}
    publications, warnings = deploy_records(two, checked_pointer(two, "text", 2), "champion", {"text/champion": on_topic}, None, at_ms=9)
    assert [p.key for p in publications] == ["text/champion"]
    assert "not kept as PREVIOUS" in warnings[0] and "sha256" in warnings[0]


def test_a_challenger_deploy_is_one_record_with_its_sample(two):
    pointer = checked_pointer(two, "text", 2, shadow_sample("challenger", 0.25))
    [publication], _ = deploy_records(two, pointer, "challenger", {}, None, at_ms=1)
    assert publication.key == "text/challenger" and publication.record["shadow_sample"] == 0.25
    assert publication.describe() == "text/challenger = v2, shadow sample 0.25"


def test_retire_empties_a_slot_but_never_the_champion():
    publication = retire_record("image", "previous", "rolled back", at_ms=3)
    assert publication.key == "image/previous" and publication.describe() == "image/previous = retired"
    assert codec.decode(codec.encode("model_control", publication.record, validate=True)).record == publication.record
    assert publication.record["action"] == "RETIRE" and publication.record["slot"] == "PREVIOUS" and publication.record["version"] is None
    with pytest.raises(DeployRefused, match="deploy another champion instead"):
        retire_record("image", "champion", None, at_ms=3)


# --- refusals --------------------------------------------------------------------------------


def test_a_missing_version_is_refused(registry):
    with pytest.raises(DeployRefused, match="no text model version 99") as refused:
        checked_pointer(Registry(registry), "text", 99)
    assert "`mailroom models list text`" in str(refused.value)


def test_a_model_with_another_feature_set_is_refused(two):
    _edit_card(two, "text", 2, feature_set_id="sender-v0")
    with pytest.raises(DeployRefused) as refused:
        checked_pointer(two, "text", 2)
    assert "'sender-v0'" in str(refused.value) and f"'{FEATURE_SET_ID}'" in str(refused.value)


def test_a_corrupt_or_missing_file_is_refused(two):
    onnx = two.get("text", 2).onnx_path
    onnx.write_bytes(b"not an onnx graph")
    with pytest.raises(DeployRefused, match="changed since it was registered"):
        checked_pointer(two, "text", 2)
    _edit_card(two, "text", 2, files={"model.onnx": {"sha256": ModelPointer.of(two.get("text", 2)).sha256}})
    with pytest.raises(DeployRefused, match="onnxruntime cannot load"):  # what load_checked says of it
        checked_pointer(two, "text", 2)
    onnx.unlink()
    with pytest.raises(DeployRefused, match="cannot read"):
        checked_pointer(two, "text", 2)


def test_the_sample_is_a_challengers_share():
    assert shadow_sample("champion", None) == 1.0 and shadow_sample("challenger", 0.1) == 0.1
    with pytest.raises(DeployRefused, match="drop --sample"):
        shadow_sample("champion", 0.5)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(DeployRefused, match="0 < s <= 1"):
            shadow_sample("challenger", bad)


def test_the_commands_refuse_before_kafka_and_say_what_to_do_when_it_is_down(registry, isolated, capsys):
    assert main(["models", "deploy", "text", "99", "--slot", "challenger", "--registry", str(registry)]) == 2
    assert "refused, nothing published: no text model version 99" in _err(capsys)
    assert main(["models", "retire", "text", "--slot", "champion"]) == 2
    assert "deploy another champion instead" in _err(capsys)
    assert main(["models", "deploy", "text", "1", "--slot", "challenger", "--registry", str(registry)]) == 1
    assert "Kafka is not answering" in _err(capsys)
    assert main(["models", "status", "--registry", str(registry)]) == 1
    assert "start the stack with `mailroom stack up`" in _err(capsys)
    assert main(["models", "status", "--json", "--watch"]) == 2


# --- status ----------------------------------------------------------------------------------


def test_newest_per_key_keeps_the_last_record_and_drops_tombstones():
    items = [("text/champion", {"v": "1"}), ("text/challenger", {"v": "3"}), ("text/champion", {"v": "2"}), ("text/challenger", None)]
    assert newest_per_key(items) == {"text/champion": {"v": "2"}}


def _control(kind: str, slot: str, version: str | None, at_ms: int) -> dict:
    if version is None:
        return retire_record(kind, slot.lower(), None, at_ms).record
    pointer = ModelPointer(kind, f"mailroom-{kind}", version, f"/m/{version}.onnx", version * 64, FEATURE_SET_ID, ("invoice", "other"))
    return pointer.to_record(slot, at_ms, f"deploy {version}")


def _event(subtask: int, kind: str, slot: str, outcome: str, version: str | None, serving: str | None, at_ms: int, reason=None) -> dict:
    return {"job": "scoring", "subtask": subtask, "kind": kind, "slot": slot, "outcome": outcome, "model_name": f"mailroom-{kind}",
            "version": version, "serving_version": serving, "reason": reason, "at_ms": at_ms}


def _events(*events: dict) -> dict:
    return newest_per_key(((e["job"], e["subtask"], e["kind"], e["slot"]), e) for e in events)


def test_status_rows_agree_when_every_subtask_serves_what_the_control_topic_says():
    control = newest_per_key([("text/champion", _control("text", "CHAMPION", "2", 100)), ("text/challenger", _control("text", "CHALLENGER", "3", 110)),
                              ("text/challenger", _control("text", "CHALLENGER", None, 120))])
    events = _events(_event(0, "text", "CHAMPION", "SERVING", "1", "1", 50), _event(0, "text", "CHAMPION", "SERVING", "2", "2", 101),
                     _event(0, "text", "CHALLENGER", "SERVING", "3", "3", 111), _event(0, "text", "CHALLENGER", "RETIRED", None, None, 121),
                     _event(0, "image", "CHAMPION", "SERVING", "1", "1", 50))
    view = status_view({"text": "2", "image": "1"}, control, events, [], at_ms=10_000)
    assert view["flags"] == []
    assert [(r["kind"], r["slot"], r["action"], r["version"]) for r in view["control"]] == [
        ("text", "CHAMPION", "DEPLOY", "2"), ("text", "CHALLENGER", "RETIRE", None)]
    assert view["control"][0]["sha256"] == "2" * 12
    rows = {(r["kind"], r["slot"]): r for r in view["subtasks"]}
    assert rows["text", "CHAMPION"]["expected_from"] == "control topic" and rows["image", "CHAMPION"]["expected_from"] == "registry"
    assert rows["text", "CHALLENGER"]["outcome"] == "RETIRED" and rows["text", "CHAMPION"]["age_s"] == pytest.approx(9.899)
    json.dumps(view)  # what --json prints


def test_status_flags_refusals_stale_subtasks_missing_reports_and_a_registry_that_disagrees():
    control = {"text/champion": _control("text", "CHAMPION", "2", 100_000), "text/challenger": _control("text", "CHALLENGER", "3", 110_000)}
    events = _events(_event(0, "text", "CHAMPION", "SERVING", "2", "2", 101_000),
                     _event(0, "text", "CHALLENGER", "REFUSED", "3", None, 111_000, reason="sha256 of /m/3.onnx is 00…"),
                     _event(1, "text", "CHAMPION", "SERVING", "1", "1", 50_000))
    view = status_view({"text": "1", "image": None}, control, events, [], at_ms=200_000)
    rows = {(r["subtask"], r["slot"]): r for r in view["subtasks"]}
    assert rows[0, "CHAMPION"]["flag"] is None
    assert rows[0, "CHALLENGER"]["flag"].startswith("scoring/0 refused text CHALLENGER v3: sha256 of /m/3.onnx")
    assert "serves nothing in text CHALLENGER, the control topic says v3" in rows[0, "CHALLENGER"]["flag"]
    assert "scoring/1 serves v1 in text CHAMPION, the control topic says v2" in rows[1, "CHAMPION"]["flag"]
    assert "predates that record: is the scoring job running?" in rows[1, "CHAMPION"]["flag"]
    flags = view["flags"]
    assert any(f.startswith("the registry's text champion is v1, the control topic's v2") for f in flags)
    assert "scoring/1 has not reported on text CHALLENGER v3, deployed 90 s ago: is the scoring job running?" in flags
    assert len(flags) == 4


def test_shadow_comparison_per_kind_and_version_pair():
    def pair(kind, champion, challenger, same, latencies):
        return {"kind": kind, "champion_version": champion, "challenger_version": challenger, "champion_label": "invoice",
                "challenger_label": "invoice" if same else "other", "champion_latency_ms": latencies[0], "challenger_latency_ms": latencies[1]}

    rows = shadow_comparison([pair("text", "2", "3", True, (2, 4)), pair("text", "2", "3", False, (4, 8)), pair("text", "2", "4", True, (1, 1)),
                              pair("image", "1", "2", True, (3, 3))])
    assert [(r["kind"], r["champion_version"], r["challenger_version"], r["pairs"]) for r in rows] == [
        ("image", "1", "2", 1), ("text", "2", "3", 2), ("text", "2", "4", 1)]
    assert rows[1]["agreement"] == 0.5 and rows[1]["champion_latency_ms"] == 3 and rows[1]["challenger_latency_ms"] == 6


def _render(view: dict) -> str:
    view = {**view, "registry": {**view["registry"], "dir": "/reg"}, "unreadable": {"model_control": 0, "model_events": 2, "shadow_predictions": 0},
            "topics": {"model_control": "m.model-control", "model_events": "m.model-events", "shadow_predictions": "m.shadow-predictions"}}
    console = Console(width=200, record=True)
    console.print(status_tables(view))
    return " ".join(console.export_text().split())


def test_status_tables_say_what_is_missing_and_show_the_flags():
    empty = _render(status_view({"text": None, "image": "1"}, {}, {}, [], at_ms=0))
    assert "no control records yet: deploy with `mailroom models deploy`" in empty
    assert "no scoring subtask has reported yet: is the scoring job running?" in empty
    assert "no shadow pairs yet" in empty and "none: train one with `mailroom train`" in empty and "2 in m.model-events" in empty
    control = {"text/champion": _control("text", "CHAMPION", "2", 0)}
    shown = _render(status_view({"text": "2", "image": "1"}, control, _events(_event(0, "text", "CHAMPION", "REFUSED", "2", "1", 1, "smoke batch")), [],
                                at_ms=5000))
    assert "REFUSED" in shown and "disagreements:" in shown and "scoring/0 refused text CHAMPION v2: smoke batch" in shown
