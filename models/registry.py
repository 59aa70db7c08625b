"""The model registry: versioned ONNX models with cards, one champion per kind.

A directory (layout and rules in models/README.md, the contract the scoring job relies on):

    <root>/<kind>/v0001/model.onnx      the exported model (immutable)
    <root>/<kind>/v0001/card.json       what it is, how it was trained, how well it does
    <root>/<kind>/v0001/sklearn.joblib  the fitted sklearn pipeline (for benchmarks and re-export)
    <root>/<kind>/v0001/train_keys.json.gz  content keys of the training rows (fair comparisons)
    <root>/<kind>/evalsets/<fp>.json.gz an evaluation set (model inputs + labels) by fingerprint
    <root>/<kind>/champion.json         {"version": 3, "previous": [1, 2]}
    <root>/<kind>/history.jsonl         register / promote / rollback events

>>> import tempfile; reg = Registry(Path(tempfile.mkdtemp()))
>>> reg.list("text")
[]
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.modelio import INPUT_NAMES, KINDS, onnx_feeds, onnx_session, take


class RegistryError(Exception):
    """The registry cannot do what was asked (unknown kind or version, nothing to roll back to)."""


class PromotionRefused(RegistryError):
    """A contender does not beat the champion (or cannot be compared) and was not forced."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model: where its ONNX file is, and its card."""

    kind: str
    version: int
    onnx_path: Path
    card: dict


class Registry:
    """Versioned models under `root`; every write takes a per-kind file lock."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # --- reading ---------------------------------------------------------------------------

    def list(self, kind: str) -> list[dict]:
        """One summary row per registered version, oldest first."""
        champion = self._champion_state(kind).get("version")
        rows = []
        for path in sorted(self._kind_dir(kind).glob("v[0-9]*/card.json")):
            card = json.loads(path.read_text())
            rows.append({"version": card["version"], "created": card["created"], "kernel": card.get("kernel"),
                         "macro_f1": card["evaluation"]["macro_f1"], "eval_set": card["eval_set"]["fingerprint"],
                         "feature_set_id": card.get("feature_set_id"), "champion": card["version"] == champion})
        return rows

    def show(self, kind: str, version: int) -> dict:
        """The card of one version."""
        return self.get(kind, version).card

    def get(self, kind: str, version: int) -> ModelRef:
        card_path = self._version_dir(kind, version) / "card.json"
        if not card_path.exists():
            raise RegistryError(f"no {kind} model version {version} in {self.root}")
        return ModelRef(kind, version, card_path.parent / "model.onnx", json.loads(card_path.read_text()))

    def champion(self, kind: str) -> ModelRef:
        """The model the scoring job should use."""
        version = self._champion_state(kind).get("version")
        if version is None:
            raise RegistryError(f"no {kind} champion in {self.root}: train one with `mailroom train`")
        return self.get(kind, version)

    def history(self, kind: str) -> list[dict]:
        path = self._kind_dir(kind) / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def eval_set(self, kind: str, fingerprint: str) -> tuple[dict, list[str]]:
        """A stored evaluation set: (inputs, labels)."""
        path = self._kind_dir(kind) / "evalsets" / f"{fingerprint}.json.gz"
        if not path.exists():
            raise RegistryError(f"evaluation set {fingerprint} of {kind} is not stored in {self.root}")
        data = json.loads(gzip.decompress(path.read_bytes()))
        return data["inputs"], data["labels"]

    def sklearn_model(self, kind: str, version: int):
        """The fitted sklearn pipeline kept beside the ONNX file, or None."""
        path = self._version_dir(kind, version) / "sklearn.joblib"
        if not path.exists():
            return None
        import joblib

        return joblib.load(path)

    def evaluate(self, kind: str, version: int, fingerprint: str, rows: list[int] | None = None) -> float:
        """Macro-F1 of a version's ONNX model on a stored evaluation set, or on some of its rows
        (over the classes with support)."""
        from sklearn.metrics import f1_score

        inputs, labels = self.eval_set(kind, fingerprint)
        if rows is not None:
            inputs, labels = take(inputs, rows), [labels[i] for i in rows]
        predicted = onnx_session(str(self.get(kind, version).onnx_path)).run(["label"], onnx_feeds(kind, inputs))[0]
        return float(f1_score(labels, [str(x) for x in predicted], labels=sorted(set(labels)), average="macro", zero_division=0))

    def trained_on(self, kind: str, version: int) -> set[str] | None:
        """Content keys (see `row_keys`) of a version's training rows, if they were stored."""
        path = self._version_dir(kind, version) / "train_keys.json.gz"
        return set(json.loads(gzip.decompress(path.read_bytes()))) if path.exists() else None

    # --- writing ---------------------------------------------------------------------------

    def register(self, kind: str, onnx_bytes: bytes, card: dict, eval_inputs: dict, eval_labels: list[str], sklearn_model=None,
                 train_inputs: dict | None = None, attachments: dict[str, bytes] | None = None) -> int:
        """Store a new version (its evaluation set too); the first of a kind becomes champion.
        `attachments` are files stored beside the card (e.g. a reliability diagram) and listed in its `files`.
        `card` must hold at least evaluation.macro_f1, feature_set_id and inputs. With
        `train_inputs`, the content keys of the training rows are kept, so a later comparison
        on another evaluation set can leave out what this model was trained on."""
        eval_json = _canonical({"inputs": {k: _plain(v) for k, v in eval_inputs.items()}, "labels": list(eval_labels)})
        fingerprint = hashlib.sha256(eval_json).hexdigest()[:16]
        with self._lock(kind):
            evalsets = self._kind_dir(kind) / "evalsets"
            evalsets.mkdir(parents=True, exist_ok=True)
            if not (evalsets / f"{fingerprint}.json.gz").exists():
                _atomic_write(evalsets / f"{fingerprint}.json.gz", gzip.compress(eval_json, mtime=0))
            version, directory = self._new_version_dir(kind)
            (directory / "model.onnx").write_bytes(onnx_bytes)
            files = {"model.onnx": onnx_bytes, **(attachments or {})}
            for name, content in (attachments or {}).items():
                (directory / name).write_bytes(content)
            if train_inputs is not None:
                keys = sorted(set(row_keys(kind, train_inputs)))
                (directory / "train_keys.json.gz").write_bytes(gzip.compress(json.dumps(keys).encode(), mtime=0))
            if sklearn_model is not None:
                import joblib

                joblib.dump(sklearn_model, directory / "sklearn.joblib", compress=3)
            card = {**card, "version": version, "created": _now(), "eval_set": {"fingerprint": fingerprint, "n": len(eval_labels)},
                    "files": {name: {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()} for name, content in files.items()},
                    "promotions": []}
            _atomic_write(directory / "card.json", json.dumps(card, indent=2).encode())
            self._log(kind, {"event": "register", "version": version, "macro_f1": card["evaluation"]["macro_f1"], "eval_set": fingerprint})
            if self._champion_state(kind).get("version") is None:
                self._set_champion(kind, version, previous=[])
                self._note_promotion(kind, version, {"at": _now(), "from_version": None, "forced": False, "reason": "first model of its kind"})
                self._log(kind, {"event": "promote", "version": version, "from_version": None, "reason": "first model of its kind"})
        return version

    def promote(self, kind: str, version: int, force_reason: str | None = None) -> dict:
        """Make `version` champion if its macro-F1 beats the champion's on the same evaluation set
        (the contender's; the champion is re-evaluated on it when the sets differ). Otherwise raise
        PromotionRefused, unless `force_reason` is given: then promote and record the reason."""
        if force_reason is not None and not force_reason.strip():
            raise RegistryError("a forced promotion needs a reason")
        with self._lock(kind):
            contender = self.get(kind, version)
            state = self._champion_state(kind)
            current = state.get("version")
            if current == version:
                return {"promoted": False, "version": version, "reason": "already champion"}
            comparison = self._compare(kind, contender, current)
            if not comparison["beats"] and force_reason is None:
                raise PromotionRefused(f"{kind} v{version} does not beat champion v{current}: {comparison['summary']}. "
                                       "Pass a reason to force it.")
            record = {"at": _now(), "from_version": current, "forced": not comparison["beats"],
                      "reason": force_reason or "beats champion", "comparison": comparison}
            self._set_champion(kind, version, previous=state.get("previous", []) + ([current] if current is not None else []))
            self._note_promotion(kind, version, record)
            self._log(kind, {"event": "promote", "version": version, **record})
            return {"promoted": True, "version": version, **record}

    def rollback(self, kind: str) -> ModelRef:
        """Make the previous champion champion again."""
        with self._lock(kind):
            state = self._champion_state(kind)
            previous = state.get("previous", [])
            if not previous:
                raise RegistryError(f"no previous {kind} champion to roll back to")
            self._set_champion(kind, previous[-1], previous=previous[:-1])
            self._log(kind, {"event": "rollback", "version": previous[-1], "from_version": state["version"]})
        return self.champion(kind)

    # --- internals -------------------------------------------------------------------------

    def _compare(self, kind: str, contender: ModelRef, current: int | None) -> dict:
        if current is None:
            return {"beats": True, "summary": "no champion"}
        champion = self.get(kind, current)
        fingerprint = contender.card["eval_set"]["fingerprint"]
        mine = contender.card["evaluation"]["macro_f1"]
        if champion.card["eval_set"]["fingerprint"] == fingerprint:
            theirs, how = champion.card["evaluation"]["macro_f1"], "stored figures, same evaluation set"
        elif champion.card.get("inputs") != contender.card.get("inputs"):
            return {"beats": False, "eval_set": fingerprint, "contender_macro_f1": mine, "champion_macro_f1": None,
                    "summary": f"cannot compare: inputs differ (feature sets {champion.card.get('feature_set_id')} vs {contender.card.get('feature_set_id')})"}
        else:
            inputs, _ = self.eval_set(kind, fingerprint)
            seen = self.trained_on(kind, current) or set()
            rows = [i for i, key in enumerate(row_keys(kind, inputs)) if key not in seen]
            if not rows:
                return {"beats": False, "eval_set": fingerprint, "contender_macro_f1": mine, "champion_macro_f1": None,
                        "summary": "cannot compare: the champion was trained on all of the contender's evaluation set"}
            mine, theirs = self.evaluate(kind, contender.version, fingerprint, rows), self.evaluate(kind, current, fingerprint, rows)
            left_out = len(row_keys(kind, inputs)) - len(rows)
            how = "both re-evaluated on the contender's evaluation set" + (f", less {left_out} rows the champion was trained on" if left_out else "")
        return {"beats": mine > theirs, "eval_set": fingerprint, "contender_macro_f1": mine, "champion_macro_f1": theirs,
                "summary": f"macro-F1 {mine:.4f} vs {theirs:.4f} ({how})"}

    def _kind_dir(self, kind: str) -> Path:
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self.root / kind

    def _version_dir(self, kind: str, version: int) -> Path:
        return self._kind_dir(kind) / f"v{int(version):04d}"

    def _new_version_dir(self, kind: str) -> tuple[int, Path]:
        existing = [int(p.name[1:]) for p in self._kind_dir(kind).glob("v[0-9]*")]
        version = max(existing, default=0) + 1
        directory = self._version_dir(kind, version)
        directory.mkdir(parents=True)
        return version, directory

    def _champion_state(self, kind: str) -> dict:
        path = self._kind_dir(kind) / "champion.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _set_champion(self, kind: str, version: int, previous: list[int]) -> None:
        state = {"version": version, "previous": previous, "updated": _now()}
        _atomic_write(self._kind_dir(kind) / "champion.json", json.dumps(state, indent=2).encode())

    def _note_promotion(self, kind: str, version: int, record: dict) -> None:
        path = self._version_dir(kind, version) / "card.json"
        card = json.loads(path.read_text())
        card["promotions"].append(record)
        _atomic_write(path, json.dumps(card, indent=2).encode())

    def _log(self, kind: str, event: dict) -> None:
        with (self._kind_dir(kind) / "history.jsonl").open("a") as out:
            out.write(json.dumps({"at": _now(), **event}) + "\n")

    @contextmanager
    def _lock(self, kind: str):
        directory = self._kind_dir(kind)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def row_keys(kind: str, inputs: dict) -> list[str]:
    """A content key per row: the hash of its text, its image features, or (scan) both (the context is left out,
    since it depends on the sender's history)."""
    parts = [[text.encode("utf-8") for text in inputs["text"]]] if "text" in INPUT_NAMES[kind] else []
    if "image_features" in INPUT_NAMES[kind]:
        parts.append([row.tobytes() for row in np.asarray(inputs["image_features"], dtype=np.float32)])
    return [hashlib.sha1(b"\0".join(row)).hexdigest()[:16] for row in zip(*parts)]


def _plain(value):
    """Lists of str stay; arrays become nested lists of Python floats (exact for float32)."""
    return value if isinstance(value, list) and (not value or isinstance(value[0], str)) else np.asarray(value, dtype=np.float32).tolist()


def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
