"""config/monitoring.py (prometheus.yml, file_sd targets), config/prometheus/alerts.yml, the reporter's Flink
settings and mailroom/service_metrics.py, without a JVM or a Prometheus server."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request

import pytest
import yaml

from config.flinkconf import (REPORTER_PORT, REPORTER_SOURCES, cluster_config, jobmanager_dynamic_properties, job_config,
                              loopback_reporter_jar, loopback_reporter_path, prometheus_reporter_jar, reporter_jars, write_plugins_dir)
from config.monitoring import (ALERT_RULES, FLINK_TARGETS, METRICS_PORT_OFFSETS, SERVICE_TARGETS, metrics_port, prometheus_config,
                               register_target, targets_dir, unregister_target, write_prometheus_config)
from config.settings import ConfigError, Settings
from schemas import metric_names

# series that Flink or Prometheus make themselves, which the rules may use besides the catalogue's
BUILT_IN = {"up", "flink_jobmanager_numRunningJobs", "flink_jobmanager_job_uptime", "flink_jobmanager_job_numRestarts"}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env({}, run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", redis_password="pw")


def test_prometheus_config_scrapes_flink_and_the_services_through_file_sd(settings):
    config = prometheus_config(settings)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == [str(ALERT_RULES)] and ALERT_RULES.exists()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"flink", "services", "prometheus"}
    for job, names in (("flink", FLINK_TARGETS), ("services", SERVICE_TARGETS)):
        (sd,) = jobs[job]["file_sd_configs"]
        assert sd["files"] == [str(targets_dir(settings) / f"{name}.json") for name in names] and sd["refresh_interval"] == "5s"
    assert set(FLINK_TARGETS + SERVICE_TARGETS) == set(METRICS_PORT_OFFSETS) | {"dashboard"}  # the dashboard: on its own port
    path = write_prometheus_config(settings, settings.run_dir / "prometheus")
    assert yaml.safe_load(path.read_text()) == config and targets_dir(settings).is_dir()


def test_register_and_unregister_a_target(settings):
    path = register_target(settings, "taskmanager", [metrics_port(settings, "taskmanager"), metrics_port(settings, "taskmanager") + 1])
    assert json.loads(path.read_text()) == [{"targets": ["127.0.0.1:29261", "127.0.0.1:29262"], "labels": {"mailroom_job": "taskmanager"}}]
    register_target(settings, "router", metrics_port(settings, "router"), {"slot": "a"})
    assert json.loads((targets_dir(settings) / "router.json").read_text())[0]["labels"] == {"mailroom_job": "router", "slot": "a"}
    assert not list(targets_dir(settings).glob("*.tmp"))
    unregister_target(settings, "router")
    unregister_target(settings, "router")  # gone already: no error
    assert [p.name for p in targets_dir(settings).iterdir()] == ["taskmanager.json"]
    with pytest.raises(ValueError, match="not a scrape target"):
        register_target(settings, "typo", 1)


def test_every_job_reports_to_prometheus_on_its_own_ports(settings):
    job = job_config(settings)
    assert job["metrics.reporter.prom.factory.class"] == "org.apache.flink.metrics.prometheus.LoopbackPrometheusReporterFactory"
    assert job["metrics.reporter.prom.host"] == settings.host == "127.0.0.1"
    assert set(job["metrics.reporter.prom.scope.variables.excludes"].split(";")) == {"task_attempt_id", "task_attempt_num", "tm_id", "job_id"}
    assert cluster_config(settings)[REPORTER_PORT] == "29261-29269"  # the TaskManagers' range: each takes the first free one
    assert jobmanager_dynamic_properties(settings) == ["-D", f"{REPORTER_PORT}=29260"]
    assert prometheus_reporter_jar().name.startswith("flink-metrics-prometheus-")


def test_the_loopback_reporter_is_found_by_its_factory_name():
    factory = job_config(Settings.from_env({}, redis_password="pw"))["metrics.reporter.prom.factory.class"]
    service = REPORTER_SOURCES / "main" / "resources" / "META-INF" / "services" / "org.apache.flink.metrics.reporter.MetricReporterFactory"
    assert service.read_text().split() == [factory]
    assert (REPORTER_SOURCES / "main" / "java" / (factory.replace(".", "/") + ".java")).exists()


def test_the_reporter_jar_is_named_by_its_sources_and_missing_until_built(settings):
    jar = loopback_reporter_path(settings)
    assert jar.parent == settings.jar_dir / "reporter" and jar.name.startswith("mailroom-prometheus-loopback-")
    assert loopback_reporter_path(settings) == jar  # stable while the sources do not change
    with pytest.raises(ConfigError, match="make jars"):
        loopback_reporter_jar(settings)
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"jar")
    assert reporter_jars(settings) == [prometheus_reporter_jar(), jar]
    plugins = write_plugins_dir(settings, settings.run_dir / "flink" / "plugins")
    assert sorted(p.name for p in (plugins / "metrics-prometheus-loopback").iterdir()) == sorted([prometheus_reporter_jar().name, jar.name])


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_use_catalogued_metrics_only():
    catalogue = {m.prometheus for m in metric_names.OPERATOR_METRICS}
    catalogue |= {metric_names.RETRAINER_EXAMPLES, metric_names.RETRAINER_RUNS, metric_names.JUDGE_DECISIONS, metric_names.JUDGE_PAIRS}
    names = {rule["alert"]: rule for rule in _rules()}
    assert {"MailroomTargetDown", "MailroomNoDocuments", "MailroomDeadLetterShare", "MailroomFallbackShare", "MailroomOcrFailureShare",
            "MailroomAccuracyAlertOpen"} <= set(names)
    for rule in names.values():
        used = set(re.findall(r"\b(?:flink_\w+|mailroom_\w+|up)\b(?=\s*[{\[)]|\s*(?:==|>|<|$))", rule["expr"])) - {"mailroom_job"}
        assert used, rule["alert"]
        assert used <= catalogue | BUILT_IN, f"{rule['alert']} uses uncatalogued {used - catalogue - BUILT_IN}"
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]


def test_alert_rules_name_the_router_documents_and_accuracy_alert_metrics():
    exprs = " ".join(rule["expr"] for rule in _rules())
    for metric in (metric_names.DOCUMENTS_IN, metric_names.DEAD_LETTERS, metric_names.OCR_SCANS, metric_names.PREDICTIONS, metric_names.ALERT_OPEN):
        assert metric.prometheus in exprs, metric.name


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is not installed (Debian's prometheus: `make setup`)")
def test_promtool_accepts_the_rules_and_the_generated_config(settings):
    rules = subprocess.run(["promtool", "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    path = write_prometheus_config(settings, settings.run_dir / "prometheus")
    config = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_service_exports_its_metrics_while_it_runs(tmp_path):
    from mailroom.retrainer import RetrainConfig, Retrainer
    from mailroom.service_metrics import exported

    port = _free_port()
    settings = Settings.from_env({}, run_dir=tmp_path, redis_password="pw", metrics_port=port - METRICS_PORT_OFFSETS["retrainer"])
    retrainer = Retrainer(settings, None, None, RetrainConfig())
    retrainer.examples.inc(3)
    retrainer.runs.labels("text", "RETRAINED").inc()
    with exported(settings, "retrainer", retrainer.metrics):
        assert json.loads((targets_dir(settings) / "retrainer.json").read_text())[0]["targets"] == [f"127.0.0.1:{port}"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    assert f"{metric_names.RETRAINER_EXAMPLES} 3.0" in text
    assert f'{metric_names.RETRAINER_RUNS}{{kind="text",outcome="RETRAINED"}} 1.0' in text
    assert not (targets_dir(settings) / "retrainer.json").exists()  # a clean stop unregisters
    with pytest.raises(RuntimeError), exported(settings, "retrainer", retrainer.metrics):
        raise RuntimeError("crash")
    assert (targets_dir(settings) / "retrainer.json").exists()  # a crash leaves it: Prometheus sees the service down


def test_judge_pairs_gauge_follows_the_open_collections():
    from mailroom.judge import JudgeMetrics

    class Policy:
        def progress(self):
            return [{"kind": "text", "pairs": 4}, {"kind": "text", "pairs": 1}]

    metrics = JudgeMetrics()
    metrics.gathered(Policy())
    assert metrics.registry.get_sample_value(metric_names.JUDGE_PAIRS, {"kind": "text"}) == 5
    assert metrics.registry.get_sample_value(metric_names.JUDGE_PAIRS, {"kind": "scan"}) == 0
