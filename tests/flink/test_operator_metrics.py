"""The router's and the scoring job's operator metrics as Flink's Prometheus reporter exports
them, scraped while the job runs (a task's metrics go when it finishes, so the input here does
not end: a throttled number sequence cycling through messages; leaving the results cancels the job)."""

from __future__ import annotations

import re
import time
import urllib.request

from pyflink.common import Configuration, Row, Types, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.number_seq import NumberSequenceSource

from config.flinkconf import REPORTER_PORT, job_config, reporter_jars
from config.monitoring import metrics_port
from jobs.router import build
from models.generator import generate
from jobs.scoring import build as build_scoring
from models.registry import Registry
from schemas import codec
from schemas.metric_names import (
    BATCHES, BATCH_DOCUMENTS, DEAD_LETTERS, DELIVERED, DOCUMENTS_IN, LATENCY_MS, MODEL_VERSION, POPULATION, PREDICTED, PREDICTIONS, ROUTED,
)
from tests.flink.harness import KAFKA_ROW, kafka_rows
from tests.poison import encoded_documents, routed_values
from udfs.routing import RouterConfig
from udfs.scoring import ScoringConfig

SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
            samples.append((match[1], labels, float(match[3])))
    return samples


def total(samples, metric, **labels) -> float:
    return sum(v for name, have, v in samples if name == metric.prometheus and all(have.get(k) == x for k, x in labels.items()))


def _documents(n: int, seed: int, scan_share: float = 0.5) -> list[dict]:
    docs = generate(n, seed=seed, scan_share=scan_share)
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    return docs


def _env_with_reporter(settings, port: int) -> StreamExecutionEnvironment:
    config = Configuration()
    for key, value in {**job_config(settings), REPORTER_PORT: str(port)}.items():  # the project's loopback reporter, as make_env
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(settings.connector_jar.resolve().as_uri())
    env.add_jars(*(jar.as_uri() for jar in reporter_jars(settings)))
    env.set_parallelism(1)
    return env


def _endless(env, values: list[bytes]):
    """(value, topic, partition, offset) rows cycling through `values`, about 100 a second, without end."""

    def row(n: int, values=values) -> Row:
        time.sleep(0.01)
        return Row(values[n % len(values)], "in", 0, n)

    numbers = env.from_source(NumberSequenceSource(0, 10**9), WatermarkStrategy.no_watermarks(), "numbers")
    return numbers.map(row, output_type=KAFKA_ROW)


def _scrape_while_running(outputs: dict, port: int, enough, timeout_s: float = 60) -> list:
    """The last scrape of the running job, once `enough(samples)` (or after `timeout_s`)."""
    streams = list(outputs.values())
    merged = streams[0].union(*streams[1:]).map(lambda v: len(v), output_type=Types.INT())
    seen: list = []
    deadline = time.monotonic() + timeout_s
    with merged.execute_and_collect() as results:
        for _ in results:
            if time.monotonic() > deadline:
                break
            try:
                seen = scrape(port)
            except OSError:
                continue
            if enough(seen):
                break
    return seen


def test_the_router_registers_and_increments_its_metrics(test_settings):
    docs = _documents(4, seed=5)
    values = encoded_documents(docs) + [b"junk"]  # each round after the first: 4 duplicates, 1 junk
    port = metrics_port(test_settings, "smoke")
    env = _env_with_reporter(test_settings, port)

    def enough(s) -> bool:  # each operator pushes its counts on its own schedule: wait for every count asserted below
        routed = total(s, ROUTED, destination="text") + total(s, ROUTED, destination="scans")
        return (total(s, DOCUMENTS_IN) >= 3 * len(values) and routed >= len(docs) and total(s, DEAD_LETTERS, reason="UNDECODABLE") >= 2
                and total(s, DEAD_LETTERS, reason="DUPLICATE_ID") >= len(docs))

    seen = _scrape_while_running(build(_endless(env, values), RouterConfig()), port, enough)
    read = total(seen, DOCUMENTS_IN)
    assert read >= 3 * len(values), f"documents_in only {read}: {sorted({name for name, _, _ in seen if 'mailroom' in name})}"
    assert total(seen, ROUTED, destination="text") + total(seen, ROUTED, destination="scans") == len(docs)  # the first round only
    assert total(seen, DEAD_LETTERS, reason="UNDECODABLE") >= 2 and total(seen, DEAD_LETTERS, reason="DUPLICATE_ID") >= len(docs)
    by_operator = {labels["reason"]: labels["operator_name"] for name, labels, _ in seen if name == DEAD_LETTERS.prometheus}
    assert "decode__validate__clean" in by_operator["UNDECODABLE"] and by_operator["DUPLICATE_ID"] == "drop_duplicate_ids"


def test_the_scorer_pushes_its_batch_metrics(test_settings, registry):
    docs = _documents(12, seed=9, scan_share=0.0)  # text only: no OCR
    port = metrics_port(test_settings, "smoke")
    env = _env_with_reporter(test_settings, port)
    config = ScoringConfig.from_registry(registry, batch_size=4)
    control = [codec.encode("model_control", {"kind": "text", "slot": "CHALLENGER", "action": "RETIRE", "model_name": "mailroom-text",
                                              "published_ms": 0})]
    outputs = build_scoring(_endless(env, routed_values(docs)), kafka_rows(env, [], "predictions"), kafka_rows(env, control, "control"), config)

    def consistent(s) -> bool:  # a scrape between two pushes: every per-document count agrees
        n = total(s, PREDICTIONS)
        return (n >= 3 * len(docs) and n == total(s, DELIVERED) == total(s, PREDICTED) == total(s, BATCH_DOCUMENTS)
                == total(s, POPULATION, kind="text", feature="text_length"))

    seen = _scrape_while_running(outputs, port, consistent)
    assert consistent(seen), {name: total(seen, m) for name, m in [("predictions", PREDICTIONS), ("delivered", DELIVERED), ("batches", BATCHES), ("population", POPULATION)]}
    assert total(seen, PREDICTIONS, kind="text", slot="champion") == total(seen, PREDICTIONS)
    assert total(seen, BATCHES) >= 3
    assert total(seen, MODEL_VERSION, kind="text", slot="champion") == int(Registry(registry).champion("text").version)
    assert total(seen, MODEL_VERSION, kind="text", slot="challenger") == 0
    assert {labels["quantile"] for name, labels, _ in seen if name == LATENCY_MS.prometheus} == {"p50", "p95", "p99"}
    assert total(seen, POPULATION, kind="text", feature="text_length") == total(seen, PREDICTIONS)
