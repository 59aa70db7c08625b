"""Monitoring through the real stack: a short run of the router, scoring (with a challenger in
shadow) and accuracy jobs; Prometheus answers with the values the run produced; the dashboard page,
in a real headless Chromium, shows the empty state before any ground truth, then data in every
chart, with no console errors. The screenshots go to <test run dir>/output/."""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from mailroom.control import deploy
from mailroom.stack import DashboardService
from mailroom.dashboard.prometheus_api import PrometheusApi
from mailroom.demo import ALERT_THRESHOLDS, ArrivalClock, documents_for_run, produce_at_rate, unreadable_messages
from mailroom.feedback import send_feedback, simulate_feedback, with_predictions
from mailroom.kafkautil import producer
from mailroom.submit import run_job, start_job, stop_job, wait_until_running
from schemas import metric_names as m
from schemas.redis_keys import ACCURACY_NAMESPACE, SHADOW_NAMESPACE
from schemas.topics import topic_name
from tests.unit.test_models_control_cli import copy_with_second_version

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHARTS = ("throughput", "latency", "dead_letters", "accuracy", "per_class", "confusion", "shadow", "events", "drift")


def _wait_for(condition, what: str, timeout_s: float = 120, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")  # a condition may keep its own history


@pytest.fixture
def browser(tmp_path):
    """Debian's Chromium, headless, driven by Selenium through Debian's chromedriver (nothing downloaded)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are missing: `make setup` installs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1600,2600",
                 f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _panel_states(driver) -> dict[str, dict]:
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('section')].map(s => [s.id.slice(6), "
        "{state: s.dataset.state, traces: Number(s.dataset.traces || 0), text: s.querySelector('.body').textContent}]))")


def _refreshes(driver) -> int:
    return int(driver.execute_script("return document.body.dataset.refreshes || '0'"))


def _refreshed(driver):
    """Wait for the page's next refresh after now; its panel states."""
    seen = _refreshes(driver)
    _wait_for(lambda: _refreshes(driver) > seen, "the page to refresh", 30, 0.5)
    return _panel_states(driver)


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_prometheus_and_the_dashboard_show_a_run(pipeline_settings, tmp_path, browser):
    settings = dataclasses.replace(pipeline_settings, registry_dir=tmp_path / "registry")
    registry = copy_with_second_version(pipeline_settings.registry_dir, settings.registry_dir)
    redis = settings.redis_client()
    for namespace in (ACCURACY_NAMESPACE, SHADOW_NAMESPACE):  # figures of earlier tests' jobs in the shared test Redis
        for key in redis.scan_iter(match=f"{namespace}:*"):
            redis.delete(key)
    output = settings.run_dir / "output"
    output.mkdir(parents=True, exist_ok=True)
    dashboard = DashboardService(settings)
    dashboard.stop()
    dashboard.start()
    jobs = {}
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:  # the page needs its token
            urllib.request.urlopen(f"{settings.dashboard_url}/api/state", timeout=5)
        assert refused.value.code == 401 and str(settings.dashboard_token_file) in refused.value.read().decode()
        browser.get(settings.dashboard_login_url)  # the URL `mailroom run` prints: the token becomes a cookie
        before = _wait_for(lambda: _refreshes(browser) and _panel_states(browser), "the first page state", 60)
        assert before["accuracy"]["state"] == "empty" and "no ground truth yet" in before["accuracy"]["text"]
        assert before["shadow"]["state"] == "empty"
        browser.save_screenshot(str(output / "dashboard-empty.png"))

        started_ms = int(time.time() * 1000)
        for name, args in (("router", []), ("scoring", ["--batch-size", "16"])):
            jobs[name] = start_job(settings, f"jobs.{name}", ["--group-id", f"{settings.topic_prefix}{name}", *args], tmp_path / f"{name}.log")
        for name, job in jobs.items():
            wait_until_running(settings, name, job)
        deploy(settings, registry, "text", 2, "challenger", sample=1.0, note="dashboard test")
        clock = ArrivalClock(settings, "dash")
        clock.start()
        docs = documents_for_run("dash", 160, seed=5, scan_share=0.2)
        sent = produce_at_rate(settings, docs, unreadable_messages(random.Random(5), 6), rate=40)
        dead = _wait_for(lambda: (lambda d: d if len(clock.arrivals) + len(d) >= len(sent) else None)(
            clock.dead_letters_of(topic_name("documents", settings.topic_prefix), sent)), "every document delivered or dead-lettered", 300)
        clock.stop()
        per_department = Counter(m.reported_label(p["department"]) for p in clock.predictions.values())
        assert sum(per_department.values()) == len(docs) and len(dead) == 6

        prometheus = PrometheusApi(settings.prometheus_url)

        def delivered():
            return {labels["department"]: int(value) for labels, value in prometheus.query(f"sum by (department) ({m.DELIVERED.prometheus})")
                    if value}  # every department's counter is registered at 0

        # the scoring job's counters, scraped: exactly the department topics' counts
        scraped = []
        try:
            _wait_for(lambda: scraped.append(delivered()) or scraped[-1] == dict(per_department), "Prometheus to have the run's counts", 90)
        finally:
            assert scraped[-1] == dict(per_department)
        def dead_letters():
            return {labels["reason"]: int(value) for labels, value in prometheus.query(f"sum by (reason) ({m.DEAD_LETTERS.prometheus})")}

        # each job's target is scraped at its own moment: wait for the router's too
        assert _wait_for(lambda: (lambda got: got if got == dict(Counter(d["reason"] for d in dead)) else None)(dead_letters()),
                         "Prometheus to have the router's dead letters", 30)
        # and for its routing operator's last counts, pushed by a timer a flush interval after the last document
        routed = []
        try:
            _wait_for(lambda: routed.append(sum(value for _, value in prometheus.query(f"sum({m.ROUTED.prometheus})"))) or routed[-1] == len(docs),
                      "Prometheus to have every routed document", 30)
        finally:
            assert routed[-1] == len(docs)
        for job in jobs.values():
            stop_job(job)

        feedback = simulate_feedback(with_predictions(docs, list(clock.predictions.values())), seed=5)
        send_feedback(producer(settings), topic_name("ground_truth", settings.topic_prefix), feedback, progress=False)
        result = run_job(settings, "jobs.accuracy", ["--bounded", "--from-ms", str(started_ms), "--group-id", f"{settings.topic_prefix}accuracy",
                                                     *ALERT_THRESHOLDS], timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

        states = []
        try:
            _wait_for(lambda: states.append(_refreshed(browser)) or all(states[-1][c]["state"] == "chart" for c in CHARTS),
                      "every chart to have data", 120)
        finally:
            assert {c: states[-1][c]["text"] for c in CHARTS if states[-1][c]["state"] != "chart"} == {}
        assert all(states[-1][c]["traces"] >= 1 for c in CHARTS)
        browser.save_screenshot(str(output / "dashboard.png"))
        assert _console_errors(browser) == []
        with urllib.request.urlopen(f"{settings.dashboard_url}/metrics", timeout=5) as resp:
            assert b"mailroom_dashboard_refreshes_total" in resp.read()
    finally:
        for job in jobs.values():
            stop_job(job)
        dashboard.stop()
