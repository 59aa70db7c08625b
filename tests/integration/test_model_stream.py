"""Models as a stream through the real stack: deploys on the model-control topic reach a running
scoring job (parallelism 2) without a restart; bad deploys are refused and reported; a restored
job serves what the control topic said; a champion that misses its deadline is replaced by the
previous model, marked and counted."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager

import psutil

from jobs.environment import latest_checkpoint
from mailroom.kafkautil import producer, read_topic
from mailroom.submit import start_job, stop_job, wait_until_running
from config.flinkconf import embedded_ui_port
from models.generator import generate
from models.pointers import ModelPointer, file_sha256
from models.registry import Registry
from schemas import codec
from schemas.topics import topic_name
from tests.poison import routed_values, slow_text_model


def _texts(n: int, seed: int, prefix: str) -> list[bytes]:
    docs = [d for d in generate(3 * n, seed=seed, scan_share=0.0)][:n]
    now = int(time.time() * 1000)
    for i, doc in enumerate(docs):
        doc.update(doc_id=f"{prefix}-{i}", received_ms=now)
    return routed_values(docs)


def _publish(settings, *pointers_and_slots) -> None:
    prod = producer(settings)
    for pointer, slot in pointers_and_slots:
        record = pointer.to_record(slot, int(time.time() * 1000), "test")
        prod.send(topic_name("model_control", settings.topic_prefix), codec.encode("model_control", record),
                  key=f"{pointer.kind}/{slot.lower()}".encode()).get(10)
    prod.close()


def _copy(pointer: ModelPointer, version: str, path) -> ModelPointer:
    shutil.copy(pointer.onnx_path, path)
    return dataclasses.replace(pointer, version=version, onnx_path=str(path), sha256=file_sha256(path))


def _events(settings, min_count: int = 0) -> list[dict]:
    return [codec.decode(r.value, expected="model_event").record
            for r in read_topic(settings, topic_name("model_events", settings.topic_prefix), min_count=min_count, timeout_s=60)]


def _wait_for(condition, what: str, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_swap_under_load_refusals_and_restart(pipeline_settings, tmp_path):
    settings = pipeline_settings
    champion = ModelPointer.of(Registry(settings.registry_dir).champion("text"))
    new = _copy(champion, "2", tmp_path / "v2.onnx")
    corrupt_file = tmp_path / "corrupt.onnx"
    corrupt_file.write_bytes(b"not a model")
    bad = [dataclasses.replace(new, version="7", onnx_path=str(corrupt_file), sha256=file_sha256(corrupt_file)),  # corrupt file
           dataclasses.replace(new, version="8", sha256="00" * 32),  # wrong sha256
           dataclasses.replace(new, version="9", feature_set_id="sender-v0")]  # wrong feature set
    values = _texts(900, seed=41, prefix="swap")
    topic = topic_name("routed_text", settings.topic_prefix)
    args = ["--parallelism", "2", "--group-id", f"{settings.topic_prefix}scoring", "--batch-size", "16"]
    job = start_job(settings, "jobs.scoring", args, tmp_path / "first.log")
    stop = threading.Event()

    def feed(batch: list[bytes]):
        prod = producer(settings)
        for i, value in enumerate(batch):
            if stop.is_set():
                break
            prod.send(topic, value, partition=i % 4)
            time.sleep(0.02)  # ~50 documents a second, while the deploys happen
        prod.flush()
        prod.close()

    try:
        wait_until_running(settings, "scoring", job)
        jvm = [p for p in psutil.Process(job.pid).children(recursive=True) if p.name() == "java"]  # the MiniCluster's
        assert len(jvm) == 1 and set(settings.embedded_jvm_opts.split()) <= set(jvm[0].cmdline())
        feeder = threading.Thread(target=feed, args=(values[:600],))
        feeder.start()
        time.sleep(4)
        _publish(settings, *[(pointer, "CHAMPION") for pointer in bad])
        time.sleep(2)
        _publish(settings, (new, "CHAMPION"))
        feeder.join()
        swapped = _wait_for(lambda: [e for e in _events(settings) if e["outcome"] == "SERVING" and e["version"] == "2"], "both subtasks on v2")
        _wait_for(lambda: len({e["subtask"] for e in _events(settings) if e["outcome"] == "SERVING" and e["version"] == "2"}) == 2,
                  "both subtasks on v2")
        _wait_for(lambda: latest_checkpoint(settings, "scoring"), "a checkpoint")
        time.sleep(3)  # a checkpoint after the swap
    finally:
        stop.set()
        os.killpg(job.pid, signal.SIGKILL)  # a crash
        job.wait(30)
    checkpoint = latest_checkpoint(settings, "scoring")

    events = _events(settings)
    refused = [e for e in events if e["outcome"] == "REFUSED"]
    assert sorted((e["subtask"], e["version"]) for e in refused) == [(s, v) for s in (0, 1) for v in ("7", "8", "9")]  # each, on each subtask
    reasons = {e["version"]: e["reason"] for e in refused}
    assert "onnxruntime cannot load" in reasons["7"] and "sha256" in reasons["8"] and "feature set 'sender-v0'" in reasons["9"]
    assert all(e["serving_version"] == str(champion.version) for e in refused)  # the old champion kept serving
    for subtask in (0, 1):  # each subtask switched once and never went back
        mine = [e["serving_version"] for e in events if e["subtask"] == subtask and e["kind"] == "text" and e["slot"] == "CHAMPION"]
        switched = mine.index("2")
        assert set(mine[:switched]) == {str(champion.version)} and set(mine[switched:]) == {"2"}

    resumed = start_job(settings, "jobs.scoring", args + ["--restore-from", str(checkpoint)], tmp_path / "second.log")
    try:
        wait_until_running(settings, "scoring", resumed)
        stop.clear()
        feed(values[600:])
        records = read_topic(settings, topic_name("predictions", settings.topic_prefix), min_count=len(values), timeout_s=180)
    finally:
        stop_job(resumed)
    predictions = [codec.decode(r.value, expected="prediction").record for r in records]
    counts = Counter(p["doc_id"] for p in predictions)
    assert len(counts) == len(values) and max(counts.values()) == 1  # none lost, none twice (read_committed)
    after = {p["model_version"] for p in predictions if int(p["doc_id"].split("-")[1]) >= 600}
    assert after == {"2"}  # restored: it serves what the control topic said, not the registry's champion
    switch_ms = min(e["at_ms"] for e in swapped)
    assert all(p["model_version"] == str(champion.version) for p in predictions if p["scored_ms"] < switch_ms - 1_000)


def test_a_champion_past_its_deadline_is_replaced_by_the_previous_model(pipeline_settings, tmp_path):
    settings = pipeline_settings
    normal = ModelPointer.of(Registry(settings.registry_dir).champion("text"))
    slow_file = slow_text_model(settings.registry_dir, tmp_path / "slow.onnx")
    slow = dataclasses.replace(normal, version="5", onnx_path=str(slow_file), sha256=file_sha256(slow_file))
    _publish(settings, (dataclasses.replace(normal, version=str(normal.version)), "PREVIOUS"), (slow, "CHAMPION"))
    values = _texts(60, seed=43, prefix="late")
    with _scoring(settings, ["--deadline-ms", "300", "--max-batch-delay-ms", "100"], tmp_path / "job.log",
                  lambda e: e["version"] == "5" and e["outcome"] == "SERVING", "the slow champion"):
        predictions = _send_and_score(settings, values)
        counted = _wait_for(lambda: _metric_sum(settings, "kind.text.slot.fallback.predictions"), "the fallback counter", timeout_s=30)
    assert len(predictions) == len(values)
    assert {(p["slot"], p["model_version"]) for p in predictions} == {("fallback", str(normal.version))}
    assert all("v5 missed the 300 ms deadline" in p["fallback_reason"] for p in predictions)
    assert counted == len(values)  # the counter matches the marked predictions


@contextmanager
def _scoring(settings, args: list[str], log, ready, what: str):
    """A running (unbounded, embedded) scoring job, once a model event satisfies `ready`; stopped after."""
    job = start_job(settings, "jobs.scoring", ["--group-id", f"{settings.topic_prefix}scoring", *args], log)
    try:
        wait_until_running(settings, "scoring", job)
        _wait_for(lambda: any(ready(e) for e in _events(settings)), what)
        yield job
    finally:
        stop_job(job)


def _send_and_score(settings, values: list[bytes]) -> list[dict]:
    """Send routed texts; the predictions once every one is scored (read_committed)."""
    prod = producer(settings)
    for value in values:
        prod.send(topic_name("routed_text", settings.topic_prefix), value)
    prod.close()
    records = read_topic(settings, topic_name("predictions", settings.topic_prefix), min_count=len(values), timeout_s=120)
    return [codec.decode(r.value, expected="prediction").record for r in records]


def _metric_sum(settings, name: str) -> int:
    """The sum over subtasks of a scoring operator's counter, from the embedded job's REST API."""
    base = f"http://{settings.host}:{embedded_ui_port(settings, 'scoring')}"
    job_id = json.load(urllib.request.urlopen(f"{base}/jobs/overview", timeout=5))["jobs"][0]["jid"]
    vertices = json.load(urllib.request.urlopen(f"{base}/jobs/{job_id}", timeout=5))["vertices"]
    total = 0
    for vertex in vertices:
        available = json.load(urllib.request.urlopen(f"{base}/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics", timeout=5))
        wanted = [m["id"] for m in available if m["id"].endswith(name)]
        if wanted:
            url = f"{base}/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics?get={','.join(wanted)}&agg=sum"
            total += sum(int(float(m["sum"])) for m in json.load(urllib.request.urlopen(url, timeout=5)))
    return total


def test_a_challenger_in_shadow_never_reaches_a_department(pipeline_settings, tmp_path):
    from schemas.labels import DEPARTMENTS
    from schemas.topics import department_topic_key
    from udfs.scoring import in_shadow_sample

    settings = pipeline_settings
    champion = ModelPointer.of(Registry(settings.registry_dir).champion("text"))
    challenger = dataclasses.replace(_copy(champion, "4", tmp_path / "v4.onnx"), shadow_sample=0.5)
    _publish(settings, (challenger, "CHALLENGER"))
    values = _texts(120, seed=47, prefix="shadow")
    with _scoring(settings, [], tmp_path / "job.log", lambda e: e["slot"] == "CHALLENGER" and e["outcome"] == "SERVING", "the challenger"):
        _send_and_score(settings, values)

    delivered = [codec.decode(r.value, expected="department_document").record for label in DEPARTMENTS
                 for r in read_topic(settings, topic_name(department_topic_key(label), settings.topic_prefix), timeout_s=2)]
    assert len(delivered) == len(values) and {p["decision"]["model_version"] for p in delivered} == {str(champion.version)}  # only the champion's
    shadows = [codec.decode(r.value, expected="shadow_prediction").record
               for r in read_topic(settings, topic_name("shadow_predictions", settings.topic_prefix), min_count=1)]
    sampled = sorted(p["doc_id"] for p in delivered if in_shadow_sample(p["doc_id"], 0.5))
    assert 0 < len(sampled) < len(values)
    assert sorted(s["doc_id"] for s in shadows) == sampled  # exactly one paired record per sampled document
    assert all(s["challenger_version"] == "4" and s["champion_version"] == str(champion.version) for s in shadows)
