"""mailroom/models_cli.py through the real `mailroom` entry point: generate, train --quick, models, bench-models."""

import json
import re

import pytest

from mailroom.cli import main


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Nothing written outside tmp_path: run dir, cache (OCR pages), Redis password and registry all point there."""
    monkeypatch.setenv("MAILROOM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MAILROOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MAILROOM_REDIS_PASSWORD", "test")
    monkeypatch.delenv("MAILROOM_REGISTRY_DIR", raising=False)


def test_generate_writes_jsonl_and_directory(tmp_path, capsys):
    assert main(["generate", "--jsonl", str(tmp_path / "box.jsonl"), "-n", "12", "--seed", "3"]) == 0
    assert len((tmp_path / "box.jsonl").read_text().splitlines()) == 12
    assert main(["generate", "--out", str(tmp_path / "box"), "-n", "12", "--seed", "3", "--scan-share", "0"]) == 0
    assert len(list((tmp_path / "box").glob("*.eml")) + list((tmp_path / "box").glob("*.txt"))) == 12
    assert "12 documents (0 scans)" in capsys.readouterr().out


def test_train_quick_then_manage_and_bench(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAILROOM_REGISTRY_DIR", str(tmp_path / "reg"))  # via Settings.registry_dir
    assert main(["train", "--quick", "--no-real", "-n", "240", "--no-progress", "--no-source-holdout"]) == 0
    out = capsys.readouterr().out
    assert "held-out evaluation" in out and all(f"{kind} model registered as v1" in out for kind in ("text", "scan", "image"))
    read = re.search(r"OCR for the scan model: (\d+) pages, (\d+) read by the engine", out)  # a fresh cache: the engine reads every page
    assert read and read.group(1) == read.group(2) and int(read.group(1)) > 30 and any((tmp_path / "cache" / "ocr").iterdir())
    from models.registry import Registry

    assert (tmp_path / "reg" / "mlflow.db").exists() and Registry(tmp_path / "reg").champion("text").onnx_path.is_relative_to(tmp_path / "reg" / "artifacts")

    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "text models (mailroom-text)" in listed and "champion" in listed
    assert main(["models", "migrate"]) == 0
    assert "nothing to import" in capsys.readouterr().out
    assert main(["models", "show", "text", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["models", "promote", "text", "1"]) == 0
    assert "already champion" in capsys.readouterr().out
    assert main(["models", "rollback", "text"]) == 1
    assert "no previous text champion" in " ".join(capsys.readouterr().err.split())

    assert main(["bench-models", "--docs", "40", "--seconds", "0.05", "--batch", "1", "8"]) == 0
    bench = capsys.readouterr().out
    assert "onnxruntime" in bench and "sklearn predict_proba" in bench and "image_features" in bench and "OCR (PNG in" in bench


def test_train_refuses_a_missing_real_directory(tmp_path, capsys):
    assert main(["train", "--quick", "--real-dir", str(tmp_path / "nowhere"), "--registry", str(tmp_path / "reg")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


def test_every_subcommand_has_help(capsys):
    for argv in (["generate"], ["train"], ["models"], ["models", "promote"], ["bench-models"]):
        with pytest.raises(SystemExit) as done:
            main(argv + ["--help"])
        assert done.value.code == 0
    assert "--force REASON" in capsys.readouterr().out
