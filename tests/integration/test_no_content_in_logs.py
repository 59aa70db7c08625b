"""No document content in any log: the router and scoring jobs (and the dashboard) run over documents whose subjects
and bodies carry unique markers, some of them cut off in transit (dead letters); then every log of the test run
directory (the services', the jobs' Flink logs, the dashboard's) and the jobs' own output are searched for the markers
(and for the Redis passwords and the dashboard token).
Logs may name documents (doc ids) and reasons, never what they say."""

from __future__ import annotations

import os
import random
import re
import secrets
import time
import urllib.request
from pathlib import Path

from mailroom.demo import ArrivalClock, documents_for_run, produce_at_rate
from mailroom.produce import to_document
from mailroom.stack import DashboardService
from mailroom.submit import start_job, stop_job, wait_until_running
from schemas import codec
from schemas.topics import topic_name

LOG_NAME = re.compile(r"(\.log|\.out|\.err)(\.\d+)?$|\.log\.")
NOT_LOGS = ("data", "registry", "prometheus/data")  # Kafka's segments hold the documents themselves, by design


def _marked(docs: list[dict]) -> dict[str, str]:
    """Put a unique marker into each document's subject (and header) and text; marker -> doc id."""
    markers = {}
    for doc in docs:
        marker = f"zq{secrets.token_hex(6)}"
        markers[marker] = doc["doc_id"]
        doc["subject"] = f"{doc.get('subject') or 'Re'} {marker}"
        if doc.get("headers") and "Subject" in doc["headers"]:
            doc["headers"]["Subject"] = doc["subject"]
        if doc.get("text"):
            words = doc["text"].split(" ")
            words.insert(len(words) // 2, marker)
            doc["text"] = " ".join(words)
    return markers


def _cut_off(docs: list[dict], rng: random.Random) -> list[bytes]:
    """Documents truncated in transit: unreadable, dead-lettered; most of their bytes (the markers) still there."""
    out = []
    for doc in docs:
        encoded = codec.encode("document", to_document(doc, int(time.time() * 1000)))
        out.append(encoded[: len(encoded) - rng.randint(1, 3)])
    return out


def _log_files(*roots: Path) -> list[Path]:
    """The logs under `roots`, not descending into NOT_LOGS (where Kafka renames and deletes folders as topics go)."""
    found = []
    for root in roots:
        for folder, subfolders, files in os.walk(root):  # a folder that vanishes under the walk is skipped, not an error
            subfolders[:] = [d for d in subfolders if not any(
                f"/{p}/" in f"/{(Path(folder) / d).relative_to(root).as_posix()}/" for p in NOT_LOGS)]
            for name in files:
                path = Path(folder) / name
                if LOG_NAME.search(name) or "logs/" in path.relative_to(root).as_posix():
                    found.append(path)
    return found


def test_no_document_content_in_any_log(pipeline_settings, tmp_path):
    settings = pipeline_settings
    rng = random.Random(11)
    docs = documents_for_run(f"nolog{secrets.token_hex(2)}", 60, seed=11, scan_share=0.2)
    markers = _marked(docs)
    broken_docs = documents_for_run(f"cut{secrets.token_hex(2)}", 4, seed=12, scan_share=0.0)
    markers.update(_marked(broken_docs))
    dashboard = DashboardService(settings)
    dashboard.stop()
    dashboard.start()
    jobs = {}
    try:
        for name, args in (("router", []), ("scoring", ["--batch-size", "8"])):
            jobs[name] = start_job(settings, f"jobs.{name}", ["--group-id", f"{settings.topic_prefix}{name}", *args], tmp_path / f"{name}.log")
        for name, job in jobs.items():
            wait_until_running(settings, name, job)
        clock = ArrivalClock(settings, "nolog")
        clock.start()
        sent = produce_at_rate(settings, docs, _cut_off(broken_docs, rng), rate=40)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            dead = clock.dead_letters_of(topic_name("documents", settings.topic_prefix), sent)
            if len(clock.arrivals) + len(dead) >= len(sent):
                break
            time.sleep(1)
        clock.stop()
        assert len(clock.arrivals) == len(docs) and len(dead) == len(broken_docs)
        request = urllib.request.Request(f"{settings.dashboard_url}/api/state",
                                         headers={"Authorization": f"Bearer {settings.dashboard_secret()}"})
        with urllib.request.urlopen(request, timeout=30) as resp:  # the dashboard has read the decisions feed
            assert resp.status == 200
    finally:
        for job in jobs.values():
            stop_job(job)
        dashboard.stop()

    logs = _log_files(settings.run_dir, tmp_path)
    names = {p.name for p in logs}
    assert {"router.log", "scoring.log", "dashboard.log", "redis.log"} <= names, names
    assert any("logs/jobs.scoring" in p.as_posix() for p in logs), "the scoring job's Flink log was not found"
    pattern = re.compile("|".join(markers).encode(), re.I)
    leaks = []
    for path in logs:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if pattern.search(line):
                leaks.append(f"{path}:{number}: {line[:300]!r}")
    assert leaks == [], "document content in logs:\n" + "\n".join(leaks[:20])

    from config.settings import REDIS_USERS

    secrets_ = [settings.redis_password_of(user) for user in REDIS_USERS] + [settings.dashboard_secret()]
    named = [f"{path}" for path in logs if any(secret.encode() in path.read_bytes() for secret in secrets_)]
    assert named == [], f"a Redis password or the dashboard token in: {named}"
