"""mailroom/accuracy.py without Kafka or Redis: latest report per model version and slot, the
champion/challenger tables, the plot, and the command on both sources (fake topic reader, fake
Redis client)."""

from __future__ import annotations

import argparse
import random
from types import SimpleNamespace

import pytest
from rich.console import Console

from mailroom import accuracy
from mailroom.accuracy import (NO_PAIRS, class_table, latest_by_model, latest_by_pair, pair_table, plot_reports, read_dashboard,
                               shadow_tables, summary_table)
from config.settings import Settings
from schemas.labels import DEPARTMENTS, LABELS
from schemas.units import HOUR_MS
from schemas import codec
from schemas.redis_keys import shadow_pattern
from udfs.joining import Joiner, ShadowJoiner
from udfs.metrics import AccuracyTracker, MetricsConfig, ShadowTracker

T0 = 1_750_000_000_000 - 1_750_000_000_000 % HOUR_MS
CONFIG = MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS // 4, settle_ms=0, min_support=20)


def simulate(models: dict[tuple[str, str, str], float], hours: int = 4, seed: int = 0):
    """Reports and Redis hashes of models (name, version, slot) right with the given probability, one document a minute."""
    rng, joiner, tracker = random.Random(seed), Joiner(), AccuracyTracker(CONFIG)
    states, panes, reports = {}, {}, []
    for i in range(hours * 60):
        for model, right in models.items():
            received, actual = T0 + i * 60_000, rng.choice(LABELS)
            predicted = actual if rng.random() < right else rng.choice(LABELS)
            doc = f"{model[1]}-{model[2]}-{i}"
            prediction = {"doc_id": doc, "sender": "s", "content_type": "TEXT", "label": predicted, "probabilities": {},
                          "model_name": model[0], "model_version": model[1], "feature_set_id": "fs", "received_ms": received, "features": {},
                          "slot": model[2]}
            state, events = joiner.on_prediction(None, prediction, received)
            _, more = joiner.on_truth(state, {"doc_id": doc, "label": actual, "department": DEPARTMENTS[actual], "sent_ms": received + 1,
                                              "kind": "CONFIRM"}, received + 1)
            for event in events + more:
                states[model] = tracker.apply(states.get(model), panes.setdefault(model, {}), event)
            while (timer := tracker.next_timer_ms(states[model])) is not None and timer <= received:
                reports += [o.record for o in tracker.on_timer(states[model], panes[model], timer, timer) if o.topic == "metrics"]
    hashes = {tracker.redis_key(s).encode(): {k.encode(): v.encode() for k, v in tracker.redis_mapping(s, 0).items()} for s in states.values()}
    return reports, hashes


REPORTS, HASHES = simulate({("mailroom-text", "3", "champion"): 0.9, ("mailroom-image", "1", "champion"): 0.6,
                            ("mailroom-text", "2", "fallback"): 0.8})


def simulate_shadow(hours: int = 2, seed: int = 1):
    """Shadow reports and Redis hashes of a text champion v3 (right 90%) against a challenger v4 (right 70%)."""
    rng, joiner, tracker = random.Random(seed), ShadowJoiner(), ShadowTracker(CONFIG)
    state, panes, reports = None, {}, []
    for i in range(hours * 60):
        received, actual = T0 + i * 60_000, rng.choice(LABELS)
        shadow = {"doc_id": f"s{i}", "kind": "text", "received_ms": received, "champion_model": "mailroom-text", "champion_version": "3",
                  "champion_label": actual if rng.random() < 0.9 else rng.choice(LABELS), "challenger_model": "mailroom-text",
                  "challenger_version": "4", "challenger_label": actual if rng.random() < 0.7 else rng.choice(LABELS)}
        pair_state, events = joiner.on_prediction(None, shadow, received)
        verdict = {"doc_id": f"s{i}", "label": actual, "department": DEPARTMENTS[actual], "sent_ms": received + 1, "kind": "CONFIRM"}
        _, more = joiner.on_truth(pair_state, verdict, received + 1)
        for event in events + more:
            state = tracker.apply(state, panes, event)
        while (timer := tracker.next_timer_ms(state)) is not None and timer <= received:
            reports += [o.record for o in tracker.on_timer(state, panes, timer, timer)]
    return reports, {tracker.redis_key(state).encode(): {k.encode(): v.encode() for k, v in tracker.redis_mapping(state, 0).items()}}


SHADOW_REPORTS, SHADOW_HASHES = simulate_shadow()


class FakeRedis:
    def __init__(self, hashes):
        self.hashes = hashes

    def scan_iter(self, match):
        return [key for key in self.hashes if key.decode().startswith(match.rstrip("*"))]  # prefix patterns only

    def hgetall(self, key):
        return self.hashes[key]

    def close(self):
        pass


def render(renderable) -> str:
    console = Console(record=True, width=240)
    console.print(renderable)
    return console.export_text()


def run_cli(argv: list[str], monkeypatch, messages=(), hashes=None) -> int:
    monkeypatch.setattr("mailroom.kafkautil.read_topic", lambda settings, topic, **_: list(messages))
    monkeypatch.setattr(Settings, "redis_client", lambda self, *_, **__: FakeRedis(hashes or {}))
    parser = argparse.ArgumentParser()
    accuracy.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["accuracy", *argv])
    return args.func(args, Settings(redis_password="x"))


def test_latest_report_per_model_version_and_slot():
    latest = latest_by_model(REPORTS)
    assert list(latest) == [("mailroom-image", "1", "champion"), ("mailroom-text", "2", "fallback"), ("mailroom-text", "3", "champion")]
    assert {r["window_end_ms"] for r in latest.values()} == {max(r["window_end_ms"] for r in REPORTS)}
    assert latest_by_model([]) == {}


def test_tables_show_the_figures_and_the_slot():
    latest = latest_by_model(REPORTS)
    text = render(summary_table(latest))
    assert "mailroom-text" in text and f"{latest[('mailroom-text', '3', 'champion')]['macro_f1']:.3f}" in text and "100%" in text
    assert "slot" in text and "fallback" in text and "champion" in text
    per_class = render(class_table(latest[("mailroom-text", "2", "fallback")]))
    assert all(label in per_class for label in LABELS) and "mailroom-text v2 (fallback)" in per_class


def test_the_pair_table_puts_both_models_side_by_side():
    (report,) = latest_by_pair(SHADOW_REPORTS).values()
    text = " ".join(render(pair_table(report, "t")).split())
    champion, challenger = report["champion"], report["challenger"]
    assert f"{champion['accuracy']:.3f}" in text and f"{challenger['accuracy']:.3f}" in text
    assert f"{champion['macro_f1']:.3f}" in text and f"{challenger['macro_f1']:.3f}" in text
    assert f"{challenger['macro_f1'] - champion['macro_f1']:+.3f}" in text
    assert all(f"F1 {label}" in text for label in LABELS)
    assert f"both right {report['both_right']}, only champion right {report['only_champion_right']}, only challenger right" in text
    assert report["count"] == report["both_right"] + report["only_champion_right"] + report["only_challenger_right"] + report["both_wrong"]


def test_pairs_without_ground_truth_show_the_empty_state():
    (report,) = latest_by_pair(SHADOW_REPORTS).values()
    assert shadow_tables({}) == [NO_PAIRS]
    assert shadow_tables({("text", "m", "1", "m", "2"): {**report, "count": 0}}) == [NO_PAIRS]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "accuracy.png"
    assert plot_reports(REPORTS, path) == 3
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_reports([], tmp_path / "empty.png") == 0 and (tmp_path / "empty.png").stat().st_size > 0


def test_command_reads_the_metrics_topic_and_skips_what_it_does_not_show(monkeypatch, capsys, tmp_path):
    alert = {"alert_id": "a", "raised_ms": 0, "severity": "CRITICAL", "kind": "accuracy_drop", "model_name": "m", "model_version": "1",
             "metric": "accuracy", "value": 0.1, "threshold": 0.7, "window_start_ms": None, "window_end_ms": None, "message": "m"}
    messages = [SimpleNamespace(value=codec.encode("accuracy_report", r)) for r in REPORTS]
    messages += [SimpleNamespace(value=codec.encode("shadow_report", r)) for r in SHADOW_REPORTS]
    messages += [SimpleNamespace(value=b"junk"), SimpleNamespace(value=codec.encode("alert", alert))]
    assert run_cli(["--plot", str(tmp_path / "a.png"), "--model", "mailroom-text"], monkeypatch, messages) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "mailroom-text" in out and "mailroom-image" not in out
    assert f"{len(REPORTS)} report(s) and {len(SHADOW_REPORTS)} shadow report(s)" in out
    assert "1 record(s) of other types skipped" in out and "1 unreadable" in out and "plot of 2 model version(s)" in out
    assert "champion mailroom-text v3 vs challenger mailroom-text v4" in out and NO_PAIRS not in out
    assert (tmp_path / "a.png").exists()


def test_command_reads_the_redis_dashboard(monkeypatch, capsys):
    entries = read_dashboard(FakeRedis(HASHES))
    assert set(entries) == {"mailroom:accuracy:mailroom-text:3", "mailroom:accuracy:mailroom-image:1",
                            "mailroom:accuracy:mailroom-text:2:fallback"}
    assert entries["mailroom:accuracy:mailroom-text:3"]["recent"]["count"] == 240
    assert read_dashboard(FakeRedis(SHADOW_HASHES), "mailroom:shadow", shadow_pattern).keys() == {
        "mailroom:shadow:text:mailroom-text:3:mailroom-text:4"}
    assert run_cli(["--source", "redis"], monkeypatch, hashes={**HASHES, **SHADOW_HASHES}) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "last-N pairs" in out and "3 model version(s) and slot(s) in Redis" in out and "unknown documents: 0" in out
    assert "1 champion/challenger pair(s)" in out and "the last 120 labelled shadow pairs" in out


def test_command_without_reports_says_why(monkeypatch, capsys):
    assert run_cli([], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "no reports yet" in out and NO_PAIRS in out
    assert run_cli(["--source", "redis"], monkeypatch, hashes=HASHES) == 0
    assert NO_PAIRS in capsys.readouterr().out


def test_plot_needs_the_topic_and_watch_stops_on_ctrl_c(monkeypatch, tmp_path):
    assert run_cli(["--source", "redis", "--plot", str(tmp_path / "a.png")], monkeypatch) == 2

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(accuracy.time, "sleep", interrupt)
    assert run_cli(["--watch", "0.1"], monkeypatch) == 0


@pytest.mark.parametrize("source", ["kafka", "redis"])
def test_an_unreachable_service_is_reported(monkeypatch, capsys, source):
    from kafka.errors import KafkaConnectionError
    from redis.exceptions import ConnectionError as RedisConnectionError

    def fail(*_, **__):
        raise KafkaConnectionError("refused") if source == "kafka" else RedisConnectionError("refused")

    monkeypatch.setattr(accuracy, "read_metrics", fail)
    monkeypatch.setattr(accuracy, "read_dashboard", fail)
    assert run_cli(["--source", source], monkeypatch) == 1
    assert "(`mailroom stack up`)" in capsys.readouterr().err
