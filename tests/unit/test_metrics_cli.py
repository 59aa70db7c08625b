"""mailroom/accuracy.py without Kafka or Redis: latest report per model version, tables, the
plot, and the command on both sources (fake topic reader, fake Redis client)."""

from __future__ import annotations

import argparse
import random
from types import SimpleNamespace

import pytest
from rich.console import Console

from mailroom import accuracy
from mailroom.accuracy import class_table, latest_by_model, plot_reports, read_dashboard, summary_table
from config.settings import Settings
from schemas.labels import DEPARTMENTS, LABELS
from schemas.units import HOUR_MS
from schemas import codec
from udfs.joining import Joiner
from udfs.metrics import AccuracyTracker, MetricsConfig

T0 = 1_750_000_000_000 - 1_750_000_000_000 % HOUR_MS
CONFIG = MetricsConfig(window_ms=HOUR_MS, slide_ms=HOUR_MS // 4, settle_ms=0, min_support=20)


def simulate(models: dict[tuple[str, str], float], hours: int = 4, seed: int = 0):
    """Reports and Redis hashes of models right with the given probability, one document a minute."""
    rng, joiner, tracker = random.Random(seed), Joiner(), AccuracyTracker(CONFIG)
    states, panes, reports = {}, {}, []
    for i in range(hours * 60):
        for model, right in models.items():
            received, actual = T0 + i * 60_000, rng.choice(LABELS)
            predicted = actual if rng.random() < right else rng.choice(LABELS)
            doc = f"{model[1]}-{i}"
            prediction = {"doc_id": doc, "sender": "s", "content_type": "TEXT", "label": predicted, "probabilities": {},
                          "model_name": model[0], "model_version": model[1], "feature_set_id": "fs", "received_ms": received, "features": {}}
            state, events = joiner.on_prediction(None, prediction, received)
            _, more = joiner.on_truth(state, {"doc_id": doc, "label": actual, "department": DEPARTMENTS[actual], "sent_ms": received + 1,
                                              "kind": "CONFIRM"}, received + 1)
            for event in events + more:
                states[model] = tracker.apply(states.get(model), panes.setdefault(model, {}), event)
            while (timer := tracker.next_timer_ms(states[model])) is not None and timer <= received:
                reports += [o.record for o in tracker.on_timer(states[model], panes[model], timer, timer) if o.topic == "metrics"]
    hashes = {tracker.redis_key(s).encode(): {k.encode(): v.encode() for k, v in tracker.redis_mapping(s, 0).items()} for s in states.values()}
    return reports, hashes


REPORTS, HASHES = simulate({("mailroom-text", "3"): 0.9, ("mailroom-image", "1"): 0.6})


class FakeRedis:
    def __init__(self, hashes):
        self.hashes = hashes

    def scan_iter(self, match):
        return [key for key in self.hashes if key.decode().startswith(match.rstrip("*"))]

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
    monkeypatch.setattr(Settings, "redis_client", lambda self, **_: FakeRedis(hashes or {}))
    parser = argparse.ArgumentParser()
    accuracy.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["accuracy", *argv])
    return args.func(args, Settings(redis_password="x"))


def test_latest_report_per_model_version():
    latest = latest_by_model(REPORTS)
    assert list(latest) == [("mailroom-image", "1"), ("mailroom-text", "3")]
    assert {r["window_end_ms"] for r in latest.values()} == {max(r["window_end_ms"] for r in REPORTS)}
    assert latest_by_model([]) == {}


def test_tables_show_the_figures():
    latest = latest_by_model(REPORTS)
    text = render(summary_table(latest))
    assert "mailroom-text" in text and f"{latest[('mailroom-text', '3')]['macro_f1']:.3f}" in text and "100%" in text
    per_class = render(class_table(latest[("mailroom-image", "1")]))
    assert all(label in per_class for label in LABELS)


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "accuracy.png"
    assert plot_reports(REPORTS, path) == 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_reports([], tmp_path / "empty.png") == 0 and (tmp_path / "empty.png").stat().st_size > 0


def test_command_reads_the_metrics_topic_and_skips_what_is_not_a_report(monkeypatch, capsys, tmp_path):
    messages = [SimpleNamespace(value=codec.encode("accuracy_report", r)) for r in REPORTS] + [SimpleNamespace(value=b"junk")]
    assert run_cli(["--plot", str(tmp_path / "a.png"), "--model", "mailroom-text"], monkeypatch, messages) == 0
    out = capsys.readouterr().out
    assert "mailroom-text" in out and "mailroom-image" not in out
    assert f"{len(REPORTS)} report(s)" in out and "1 unreadable" in out and "plot of 1 model version" in out
    assert (tmp_path / "a.png").exists()


def test_command_reads_the_redis_dashboard(monkeypatch, capsys):
    entries = read_dashboard(FakeRedis(HASHES))
    assert set(entries) == {"mailroom:accuracy:mailroom-text:3", "mailroom:accuracy:mailroom-image:1"}
    assert entries["mailroom:accuracy:mailroom-text:3"]["recent"]["count"] == 240
    assert run_cli(["--source", "redis"], monkeypatch, hashes=HASHES) == 0
    out = capsys.readouterr().out
    assert "last-N pairs" in out and "2 model version(s) in Redis" in out and "unknown documents: 0" in out


def test_command_without_reports_says_why(monkeypatch, capsys):
    assert run_cli([], monkeypatch) == 0
    assert "no reports yet" in capsys.readouterr().out


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

    monkeypatch.setattr(accuracy, "read_reports", fail)
    monkeypatch.setattr(accuracy, "read_dashboard", fail)
    assert run_cli(["--source", source], monkeypatch) == 1
    assert "(`mailroom stack up`)" in capsys.readouterr().err
