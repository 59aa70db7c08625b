"""The learning loop through the real stack: the scoring and accuracy jobs running, the judge
deciding on the labelled shadow pairs the accuracy job writes. A worse contender (trained on
shuffled labels) is refused with the reason and the champion stays; a promoted model that is worse
than the old champion during its probation is rolled back."""

from __future__ import annotations

import random
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from mailroom import control
from mailroom.decisions import decision, publish_decision, read_decisions
from mailroom.judge import serve
from mailroom.kafkautil import producer, read_topic
from mailroom.models_cli import train_config
from mailroom.submit import start_job, stop_job, wait_until_running
from models import training
from models.generator import generate
from models.judging import JudgeConfig
from models.registry import Registry
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.topics import topic_name
from tests.poison import routed_values

JUDGE = JudgeConfig(min_pairs=120, probation_pairs=120, rollback_min_pairs=30, bootstrap=500, max_latency_ratio=None)
ACCURACY_ARGS = ["--window-ms", "60000", "--slide-ms", "60000", "--settle-ms", "10000", "--out-of-orderness-ms", "5000"]


@pytest.fixture
def loop_settings(pipeline_settings, tmp_path):
    """The pipeline's settings with a registry of the test's own (a copy of the session's)."""
    shutil.copytree(pipeline_settings.registry_dir, tmp_path / "registry", ignore=shutil.ignore_patterns(".lock"))
    return replace(pipeline_settings, registry_dir=tmp_path / "registry")


@pytest.fixture(scope="module")
def shuffled_contender(tmp_path_factory):
    """A text model trained on generated documents whose labels were shuffled: (pipeline run, model)."""
    def shuffled(n, seed, **kwargs):
        docs = generate(n, seed, **kwargs)
        labels = [d["label"] for d in docs]
        random.Random(seed).shuffle(labels)
        return [{**d, "label": label} for d, label in zip(docs, labels)]

    original, training.generate = training.generate, shuffled
    try:
        run = training.train(train_config(quick=True, kinds=("text",), n=600, real=False), progress=False)
    finally:
        training.generate = original
    return run


@contextmanager
def scoring_accuracy_and_judge(settings, tmp_path):
    """The scoring and accuracy jobs (embedded, unbounded) and the judge (a thread), stopped after."""
    stop = threading.Event()
    jobs = {"scoring": start_job(settings, "jobs.scoring", ["--group-id", f"{settings.topic_prefix}scoring"], tmp_path / "scoring.log"),
            "accuracy": start_job(settings, "jobs.accuracy", ["--group-id", f"{settings.topic_prefix}accuracy", *ACCURACY_ARGS],
                                  tmp_path / "accuracy.log")}
    judge = threading.Thread(target=serve, args=(settings, Registry(settings.registry_dir), JUDGE, stop), daemon=True)
    try:
        for name, job in jobs.items():
            wait_until_running(settings, name, job, timeout_s=300)
        judge.start()
        yield
    finally:
        stop.set()
        for job in jobs.values():
            stop_job(job)
        judge.join(30)


def _wait_for(condition, what: str, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def _challenger_serving(settings, version: str) -> bool:
    events = [codec.decode(r.value, expected="model_event").record
              for r in read_topic(settings, topic_name("model_events", settings.topic_prefix), timeout_s=5)]
    return any(e["slot"] == "CHALLENGER" and e["version"] == version and e["outcome"] == "SERVING" for e in events)


def _send_with_truth(settings, n: int, seed: int) -> None:
    """n routed text documents received now, and, once each is predicted, its true label from its department."""
    docs = generate(3 * n, seed=seed, scan_share=0.0)[:n]
    now = int(time.time() * 1000)
    for i, doc in enumerate(docs):
        doc.update(doc_id=f"loop-{seed}-{i}", received_ms=now + i)
    kafka = producer(settings)
    for value in routed_values(docs):
        kafka.send(topic_name("routed_text", settings.topic_prefix), value)
    kafka.flush()
    read_topic(settings, topic_name("predictions", settings.topic_prefix), min_count=n, timeout_s=180)
    for doc in docs:
        truth = {"doc_id": doc["doc_id"], "label": doc["label"], "department": DEPARTMENTS[doc["label"]], "sent_ms": int(time.time() * 1000),
                 "kind": "CONFIRM", "comment": None}
        kafka.send(topic_name("ground_truth", settings.topic_prefix), codec.encode("ground_truth", truth), key=doc["doc_id"].encode())
    kafka.close()


def _decided(settings, what: str) -> list[dict]:
    return [d for d in read_decisions(settings) if d["decision"] == what]


def test_a_worse_contender_is_refused_with_the_reason_and_the_champion_stays(loop_settings, shuffled_contender, tmp_path):
    settings, registry = loop_settings, Registry(loop_settings.registry_dir)
    champion = registry.champion("text").version
    version, _ = training.publish(shuffled_contender.models["text"], shuffled_contender, registry)
    with scoring_accuracy_and_judge(settings, tmp_path):
        control.deploy(settings, registry, "text", version, "challenger", sample=1.0, note="trained on shuffled labels")
        _wait_for(lambda: _challenger_serving(settings, str(version)), "the contender in shadow")
        _send_with_truth(settings, 160, seed=61)
        (refused,) = _wait_for(lambda: _decided(settings, "REFUSE"), "the judge's refusal")
        retired = _wait_for(lambda: [e for e in _events(settings) if e["slot"] == "CHALLENGER" and e["outcome"] == "RETIRED"],
                            "the contender retired", timeout_s=60)
    assert (refused["kind"], refused["challenger_version"], refused["champion_version"]) == ("text", str(version), str(champion))
    assert any(r.startswith("McNemar") for r in refused["reasons"]) and any(r.startswith("macro-F1") for r in refused["reasons"])
    assert "mcnemar_p" in refused["figures"] and retired
    challenger = control.read_control(settings)[0][control.control_key("text", "challenger")]
    assert challenger["action"] == "RETIRE" and "judge: REFUSE" in challenger["note"]
    assert registry.champion("text").version == champion  # the champion stays
    assert control.read_control(settings)[0].get(control.control_key("text", "champion")) is None  # and was never replaced


def test_a_promoted_model_worse_than_the_old_champion_in_probation_is_rolled_back(loop_settings, shuffled_contender, tmp_path):
    settings, registry = loop_settings, Registry(loop_settings.registry_dir)
    old = registry.champion("text").version
    new, _ = training.publish(shuffled_contender.models["text"], shuffled_contender, registry)
    # the state a promotion leaves: the new one champion (registry and control topic), the old one in reverse shadow,
    # the judge's PROMOTE on the decisions topic
    publish_decision(settings, decision("text", "PROMOTE", "judge", challenger_version=str(new), champion_version=str(old)))
    with scoring_accuracy_and_judge(settings, tmp_path):
        control.deploy(settings, registry, "text", new, "champion", note="promoted (the test's premise)")
        control.deploy(settings, registry, "text", old, "challenger", sample=1.0, note="probation: the old champion in reverse shadow")
        _wait_for(lambda: _challenger_serving(settings, str(old)), "the old champion in reverse shadow")
        _send_with_truth(settings, 160, seed=67)
        (rolled,) = _wait_for(lambda: _decided(settings, "ROLL_BACK"), "the rollback")
    assert (rolled["champion_version"], rolled["challenger_version"]) == (str(new), str(old))
    assert rolled["reasons"] and "mcnemar_p" in rolled["figures"]
    now = control.read_control(settings)[0]
    assert now[control.control_key("text", "champion")]["version"] == str(old)
    assert now[control.control_key("text", "challenger")]["action"] == "RETIRE"
    assert registry.champion("text").version == old
    last = registry.history("text")[-3:]  # what the rollback did in MLflow: the champion moved back, the challenger retired, the decision noted
    assert {e["event"] for e in last} & {"rollback", "promote"} and "retire" in {e["event"] for e in last}
    assert last[-1]["event"] == "decision" and last[-1]["decision"] == "ROLL_BACK"


def _events(settings) -> list[dict]:
    return [codec.decode(r.value, expected="model_event").record
            for r in read_topic(settings, topic_name("model_events", settings.topic_prefix), timeout_s=5)]


def test_the_loop_closes_on_a_small_drift_scenario(pipeline_settings, tmp_path):
    from mailroom.retrainer import RetrainConfig
    from mailroom.scenario import ScenarioConfig, run_drift

    config = ScenarioConfig(rate=10.0, normal_s=45.0, drift_share=0.5, max_s=480.0, window_ms=40_000, slide_ms=20_000, settle_ms=30_000,
                            # no latency ratio: p99s on a loaded machine are noise here (the guard's unit test: test_judging)
                            min_support=30, judge=replace(JUDGE, min_pairs=100, probation_pairs=100, max_latency_ratio=None),
                            retrain=RetrainConfig(quick=True, generated=1500, real=False, min_examples=50, cooldown_ms=120_000))
    figures = run_drift(pipeline_settings, config, plot_path=tmp_path / "loop.png")
    assert figures["outcome"] == "closed", figures
    assert figures["macro_f1_worst"] < config.min_macro_f1 <= figures["macro_f1_after_promotion"]  # the drop, then the recovery
    assert figures["promoted"] != figures["champion"] and figures["labelled_examples_trained_on"] >= config.retrain.min_examples
    assert figures["alert_to_promotion_min"] > 0 and (tmp_path / "loop.png").stat().st_size > 10_000
    run = replace(pipeline_settings, topic_prefix=f"{pipeline_settings.topic_prefix}{figures['run_id']}.")
    decisions = [d["decision"] for d in read_decisions(run)]
    # a late window of the old champion may ask again: the retrainer's gate de-duplicates it, and retrains nothing twice
    assert [d for d in decisions if d != "DEDUPLICATED"] == ["RETRAINED", "PROMOTE", "KEEP"], decisions
    now = control.read_control(run)[0]
    assert now[control.control_key("text", "champion")]["version"] == figures["promoted"]  # served
    assert now[control.control_key("text", "challenger")]["action"] == "RETIRE"  # probation over
    # MLflow holds what the scenario did: the retrained version, the alias moves, every decision on its version
    registry = Registry(pipeline_settings.run_dir / "scenarios" / figures["run_id"] / "registry")
    promoted, old = int(figures["promoted"]), int(figures["champion"])
    assert registry.aliases("text")["champion"] == promoted and registry.aliases("text")["previous"] == old
    events = [(e["event"], e.get("version"), e.get("decision")) for e in registry.history("text")]
    assert ("register", promoted, None) in events and ("promote", promoted, None) in events
    assert [d for event, version, d in events if event == "decision" and version == promoted] == ["RETRAINED", "PROMOTE"]
    assert [d for event, version, d in events if event == "decision" and version == old] == ["KEEP"]  # the probation's end
