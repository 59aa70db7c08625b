"""The router's operator metrics as Flink's Prometheus reporter exports them, scraped while the
job runs (a task's metrics go when it finishes, so the input here does not end: a throttled
number sequence cycling through documents, a duplicate and junk; the test cancels the job)."""

from __future__ import annotations

import re
import time
import urllib.request

from pyflink.common import Configuration, Row, Types, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.number_seq import NumberSequenceSource

from config.flinkconf import job_config
from config.monitoring import metrics_port
from jobs.router import build
from models.generator import generate
from schemas.metric_names import DEAD_LETTERS, DOCUMENTS_IN, ROUTED
from tests.flink.harness import KAFKA_ROW
from tests.poison import encoded_documents
from udfs.routing import RouterConfig

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


def test_the_router_registers_and_increments_its_metrics(test_settings):
    docs = generate(4, seed=5, scan_share=0.5)
    now = int(time.time() * 1000)
    for doc in docs:
        doc["received_ms"] = now
    values = encoded_documents(docs) + [b"junk"]  # each round after the first: 4 duplicates, 1 junk

    port = metrics_port(test_settings, "smoke")
    config = Configuration()
    for key, value in {**job_config(test_settings), "metrics.reporter.prom.factory.class":
                       "org.apache.flink.metrics.prometheus.PrometheusReporterFactory", "metrics.reporter.prom.port": str(port)}.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(test_settings.connector_jar.resolve().as_uri())
    env.set_parallelism(1)

    def row(n: int, values=values) -> Row:
        time.sleep(0.01)  # about 100 messages a second
        return Row(values[n % len(values)], "in", 0, n)

    numbers = env.from_source(NumberSequenceSource(0, 10**9), WatermarkStrategy.no_watermarks(), "numbers")
    outputs = build(numbers.map(row, output_type=KAFKA_ROW), RouterConfig())
    merged = outputs["text"].union(outputs["scans"], outputs["dead_letters"]).map(lambda v: len(v), output_type=Types.INT())

    seen: list = []
    deadline = time.monotonic() + 60
    with merged.execute_and_collect() as results:
        for _ in results:
            if time.monotonic() > deadline:
                break
            try:
                seen = scrape(port)
            except OSError:
                continue
            if total(seen, DOCUMENTS_IN) >= 3 * len(values) and total(seen, DEAD_LETTERS, reason="DUPLICATE_ID"):
                break
    read = total(seen, DOCUMENTS_IN)
    assert read >= 3 * len(values), f"documents_in only {read}: {sorted({name for name, _, _ in seen if 'mailroom' in name})}"
    assert total(seen, ROUTED, destination="text") + total(seen, ROUTED, destination="scans") == len(docs)  # the first round only
    assert total(seen, DEAD_LETTERS, reason="UNDECODABLE") >= 2 and total(seen, DEAD_LETTERS, reason="DUPLICATE_ID") >= len(docs)
    by_operator = {labels["reason"]: labels["operator_name"] for name, labels, _ in seen if name == DEAD_LETTERS.prometheus}
    assert "decode__validate__clean" in by_operator["UNDECODABLE"] and by_operator["DUPLICATE_ID"] == "drop_duplicate_ids"
