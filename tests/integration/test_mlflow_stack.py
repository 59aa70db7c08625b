"""`mailroom stack up` starts the MLflow server over the model registry; its REST API shows what
`mailroom train` registered afterwards (runs, versions, aliases, artifacts). A stack of its own: its
own run directory and ports (the test stack's + 50), started and stopped through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import psutil
import pytest

OWN_PORTS = 50  # added to the test stack's ports


@pytest.fixture
def own_stack(test_settings, tmp_path):
    """The environment of a stack in tmp_path; `stack down` at the end."""
    s = test_settings
    env = {**os.environ, "MAILROOM_RUN_DIR": str(tmp_path / "run"), "MAILROOM_REDIS_PASSWORD": "test",
           "MAILROOM_KAFKA_PORT": str(s.kafka_port + OWN_PORTS), "MAILROOM_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port + OWN_PORTS),
           "MAILROOM_REDIS_PORT": str(s.redis_port + OWN_PORTS), "MAILROOM_FLINK_REST_PORT": str(s.flink_rest_port + OWN_PORTS),
           "MAILROOM_MLFLOW_PORT": str(s.mlflow_port + OWN_PORTS), "MAILROOM_PROMETHEUS_PORT": str(s.prometheus_port + OWN_PORTS),
           "MAILROOM_METRICS_PORT": str(s.metrics_port + OWN_PORTS)}
    env.pop("MAILROOM_REGISTRY_DIR", None)
    yield env, f"http://{s.host}:{s.mlflow_port + OWN_PORTS}"
    mailroom(env, "stack", "down")


def mailroom(env: dict, *args: str, timeout: float = 600) -> str:
    out = subprocess.run([sys.executable, "-m", "mailroom.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def rest(url: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=10) as resp:
        return json.load(resp)


def test_stack_up_serves_the_training_runs_and_versions_over_mlflow(own_stack):
    env, url = own_stack
    mailroom(env, "stack", "up")
    mlflow = next(s for s in json.loads(mailroom(env, "stack", "status", "--json")) if s["name"] == "mlflow")
    assert mlflow["running"] and url in mlflow["detail"]
    server = psutil.Process(mlflow["pid"])
    assert "uvicorn" in server.cmdline() and not server.children()  # one interpreter: `mlflow server` became its uvicorn

    mailroom(env, "train", "--quick", "-n", "300", "--no-real", "--no-progress")
    models = {m["name"]: m for m in rest(url, "registered-models/search")["registered_models"]}
    assert set(models) == {"mailroom-text", "mailroom-scan", "mailroom-image"}
    champion = rest(url, "registered-models/alias", name="mailroom-text", alias="champion")["model_version"]
    assert champion["version"] == "1" and {t["key"] for t in champion["tags"]} >= {"eval_set", "sha256", "feature_set_id"}
    run = rest(url, "runs/get", run_id=champion["run_id"])["run"]
    assert {p["key"] for p in run["data"]["params"]} >= {"kernel", "seed", "candidate", "train_rows"}
    assert {m["key"] for m in run["data"]["metrics"]} >= {"held_out.macro_f1", "held_out.accuracy", "held_out.ece"}
    files = {f["path"] for f in rest(url, "artifacts/list", run_id=champion["run_id"], path="model")["files"]}
    assert {"model/model.onnx", "model/card.json", "model/confusion.png", "model/reliability.png", "model/search.csv"} <= files

    listed = mailroom(env, "models", "list", "text")
    assert "v1" in listed and "champion" in listed
    assert "mlflow" in mailroom(env, "stack", "down")
