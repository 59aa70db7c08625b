"""The layer order (README, "Layers") holds: import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from config.settings import PROJECT_DIR


def _lint(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_the_layer_contracts_are_kept():
    result = _lint(PROJECT_DIR)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_backwards_import_breaks_the_layers(tmp_path):
    """The contract can fail: the same check on a copy of the tree with one backwards import."""
    for package in ("mailroom", "jobs", "udfs", "models", "schemas", "config"):
        subprocess.run(["cp", "-r", str(PROJECT_DIR / package), str(tmp_path / package)], check=True)
    (tmp_path / "pyproject.toml").write_text((PROJECT_DIR / "pyproject.toml").read_text())
    features = tmp_path / "models" / "features.py"
    features.write_text(features.read_text() + "\nfrom udfs.scoring import BatchScorer  # backwards: models -> udfs\n")
    result = _lint(tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stdout[-4000:]
    assert "models.features -> udfs.scoring" in result.stdout
