"""The model registry on MLflow: versioned ONNX models with cards; aliases champion, previous, challenger per kind.

One directory holds MLflow's store and every file (layout, rules and the contract the scoring job relies
on: models/README.md):

    <root>/mlflow.db                                   MLflow tracking + model registry (SQLite, WAL)
    <root>/artifacts/<run id>/artifacts/model/         a version's files, written once:
        model.onnx, card.json, evalset.json.gz, sklearn.joblib, train_keys.json.gz, attachments
    <root>/.lock                                       flock: one writer at a time

Kind `text` is the registered model `mailroom-text` (and so on); a version is an MLflow model version
made from the run that trained it. Aliases say which version is champion, the previous champion and
the challenger; the history (register, promote, rollback, challenger, retire) is kept as registered-model
tags `history.NNNN` (JSON) and shown on each version as tags too. A registry in the older hand-written
layout (<kind>/vNNNN/ + champion.json) is imported once, on first use; its files are left as they were.

Files are found relative to `root`, never by the absolute URIs MLflow stores, so a copied or moved
registry is self-contained. MLflow is imported on first use, not with this module: Flink workers
import it and never open the registry.

>>> import tempfile; reg = Registry(Path(tempfile.mkdtemp()))
>>> reg.list("text")
[]
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.modelio import INPUT_NAMES, KINDS, onnx_feeds, onnx_session, take

EXPERIMENT = "mailroom-training"
ALIASES = ("champion", "previous", "challenger")
MODEL_DIR = "model"  # a version's files, inside its run's artifacts


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


def model_name(kind: str) -> str:
    """The registered model of a kind."""
    return f"mailroom-{kind}"


def database_uri(root: Path) -> str:
    """The tracking and registry URI of a registry directory (what `mlflow server --backend-store-uri` takes)."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


class Registry:
    """Versioned models under `root`, in MLflow; every write holds the registry's file lock."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._mlflow = None  # MlflowClient, opened on first use

    # --- reading ---------------------------------------------------------------------------

    def list(self, kind: str) -> list[dict]:
        """One summary row per registered version, oldest first."""
        aliases = self.aliases(kind)
        rows = []
        for version in self._versions(kind):
            card = self._card(kind, version)
            rows.append({"version": card["version"], "created": card["created"], "kernel": card.get("kernel"),
                         "macro_f1": card["evaluation"]["macro_f1"], "eval_set": card["eval_set"]["fingerprint"],
                         "feature_set_id": card.get("feature_set_id"), "champion": aliases.get("champion") == version,
                         "aliases": [alias for alias in ALIASES if aliases.get(alias) == version]})
        return rows

    def show(self, kind: str, version: int) -> dict:
        """The card of one version."""
        return self.get(kind, version).card

    def get(self, kind: str, version: int) -> ModelRef:
        directory = self._version_dir(kind, version)
        card = {**self._card(kind, version), "promotions": self._promotions(kind, version)}
        return ModelRef(kind, int(version), directory / "model.onnx", card)

    def champion(self, kind: str) -> ModelRef:
        """The model the scoring job should use (alias `champion`)."""
        version = self.aliases(kind).get("champion")
        if version is None:
            raise RegistryError(f"no {kind} champion in {self.root}: train one with `mailroom train`")
        return self.get(kind, version)

    def aliases(self, kind: str) -> dict[str, int]:
        """alias -> version: champion, previous, challenger (those that are set)."""
        model = self._registered(kind)
        return {alias: int(version) for alias, version in (model.aliases if model else {}).items()}

    def history(self, kind: str) -> list[dict]:
        """Every event of a kind, oldest first: register, promote, rollback, challenger, retire, decision."""
        tags = self._model_tags(kind)
        return [json.loads(tags[key]) for key in sorted(k for k in tags if k.startswith("history."))]

    def eval_set(self, kind: str, fingerprint: str) -> tuple[dict, list[str]]:
        """A stored evaluation set: (inputs, labels)."""
        for version in self._versions(kind):
            path = self._version_dir(kind, version) / "evalset.json.gz"
            if self._version_tags(kind, version).get("eval_set") == fingerprint and path.exists():
                data = json.loads(gzip.decompress(path.read_bytes()))
                return data["inputs"], data["labels"]
        raise RegistryError(f"evaluation set {fingerprint} of {kind} is not stored in {self.root}")

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
                 train_inputs: dict | None = None, attachments: dict[str, bytes] | None = None, params: dict | None = None,
                 metrics: dict[str, float] | None = None) -> int:
        """Log an MLflow run of experiment `mailroom-training` holding the model's files, `params` and `metrics`,
        and make it a new version; the first of a kind becomes champion.
        `attachments` are files stored beside the card (e.g. a reliability diagram) and listed in its `files`.
        `card` must hold at least evaluation.macro_f1, feature_set_id and inputs. With
        `train_inputs`, the content keys of the training rows are kept, so a later comparison
        on another evaluation set can leave out what this model was trained on."""
        eval_json = _canonical({"inputs": {k: _plain(v) for k, v in eval_inputs.items()}, "labels": list(eval_labels)})
        files = {"model.onnx": onnx_bytes, **(attachments or {})}
        stored = {**files, "evalset.json.gz": gzip.compress(eval_json, mtime=0)}
        if train_inputs is not None:
            stored["train_keys.json.gz"] = gzip.compress(json.dumps(sorted(set(row_keys(kind, train_inputs)))).encode(), mtime=0)
        with self._writing(kind) as client:
            version = self._next_version(kind)
            run = client.create_run(self._experiment_id(), run_name=f"{kind} v{version}", tags={"mailroom.kind": kind})
            directory = self._run_model_dir(run.info.run_id)
            directory.mkdir(parents=True)
            for name, content in stored.items():
                (directory / name).write_bytes(content)
            if sklearn_model is not None:
                import joblib

                joblib.dump(sklearn_model, directory / "sklearn.joblib", compress=3)
            card = {**card, "version": version, "created": _now(),
                    "eval_set": {"fingerprint": hashlib.sha256(eval_json).hexdigest()[:16], "n": len(eval_labels)},
                    "files": {name: {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()} for name, content in files.items()}}
            (directory / "card.json").write_bytes(json.dumps(card, indent=2).encode())
            self._log_run(run.info.run_id, kind, card, params or {}, metrics or {})
            self._add_version(kind, run.info.run_id, version, card)
            self._log(kind, {"event": "register", "version": version, "macro_f1": card["evaluation"]["macro_f1"],
                             "eval_set": card["eval_set"]["fingerprint"]})
            if self.aliases(kind).get("champion") is None:
                self._set_champion(kind, version, previous=[])
                self._log(kind, {"event": "promote", "version": version, "from_version": None, "forced": False, "reason": "first model of its kind"})
        return version

    def promote(self, kind: str, version: int, force_reason: str | None = None) -> dict:
        """Make `version` champion if its macro-F1 beats the champion's on the same evaluation set
        (the contender's; the champion is re-evaluated on it when the sets differ). Otherwise raise
        PromotionRefused, unless `force_reason` is given: then promote and record the reason.
        The champion it replaces becomes `previous`; a challenger promoted loses that alias."""
        if force_reason is not None and not force_reason.strip():
            raise RegistryError("a forced promotion needs a reason")
        with self._writing(kind):
            contender = self.get(kind, version)
            current = self.aliases(kind).get("champion")
            if current == version:
                return {"promoted": False, "version": version, "reason": "already champion"}
            comparison = self._compare(kind, contender, current)
            if not comparison["beats"] and force_reason is None:
                raise PromotionRefused(f"{kind} v{version} does not beat champion v{current}: {comparison['summary']}. "
                                       "Pass a reason to force it.")
            record = {"at": _now(), "from_version": current, "forced": not comparison["beats"],
                      "reason": force_reason or "beats champion", "comparison": comparison}
            self._set_champion(kind, version, previous=self._previous(kind) + ([current] if current is not None else []))
            if self.aliases(kind).get("challenger") == version:  # a challenger promoted is no longer one
                self._client.delete_registered_model_alias(model_name(kind), "challenger")
            self._log(kind, {"event": "promote", "version": version, **record})
            return {"promoted": True, "version": version, **record}

    def rollback(self, kind: str) -> ModelRef:
        """Make the previous champion champion again (a stack: repeated rollbacks walk back)."""
        with self._writing(kind):
            previous = self._previous(kind)
            if not previous:
                raise RegistryError(f"no previous {kind} champion to roll back to")
            current = self.aliases(kind).get("champion")
            self._set_champion(kind, previous[-1], previous=previous[:-1])
            self._log(kind, {"event": "rollback", "version": previous[-1], "from_version": current})
        return self.champion(kind)

    def log_unregistered_run(self, kind: str, params: dict, metrics: dict[str, float], reason: str) -> str:
        """Record a training run that made no version (its ONNX export failed parity, say): status FAILED,
        `reason` as its note. Returns the run id."""
        with self._writing(kind) as client:
            run = client.create_run(self._experiment_id(), run_name=f"{kind} (not registered)",
                                    tags={"mailroom.kind": kind, "mlflow.note.content": reason})
            self._log_values(run.info.run_id, {"kind": kind, **params}, metrics)
            client.set_terminated(run.info.run_id, status="FAILED")
        return run.info.run_id

    def set_challenger(self, kind: str, version: int, reason: str) -> None:
        """Point alias `challenger` at `version` (it scores in shadow)."""
        with self._writing(kind) as client:
            self.get(kind, version)
            client.set_registered_model_alias(model_name(kind), "challenger", str(version))
            self._log(kind, {"event": "challenger", "version": int(version), "reason": reason})

    def retire_challenger(self, kind: str, reason: str) -> int | None:
        """Remove alias `challenger`; the version it named, or None."""
        with self._writing(kind) as client:
            version = self.aliases(kind).get("challenger")
            if version is not None:
                client.delete_registered_model_alias(model_name(kind), "challenger")
                self._log(kind, {"event": "retire", "alias": "challenger", "version": version, "reason": reason})
        return version

    def note_decision(self, kind: str, version: int, decision: str, decided_by: str, reasons: list[str], summary: str = "") -> None:
        """Record a learning-loop decision about `version` (the retrainer's, the judge's) in the history and on the version's
        tags, where the MLflow UI shows it; the full figures stay in the decision event."""
        with self._writing(kind):
            self.get(kind, version)
            self._log(kind, {"event": "decision", "version": int(version), "decision": decision, "by": decided_by,
                             "reasons": [str(x)[:500] for x in reasons][:10], "summary": summary[:1000]})

    def prepare(self) -> "Registry":
        """Make the database now (WAL mode, MLflow's schema) and import an old layout, if not done yet."""
        self._client  # noqa: B018 - opening the client does both
        return self

    def migrate(self) -> dict[str, list[int]]:
        """Import a registry in the hand-written layout (<kind>/vNNNN/ + champion.json) found under `root`:
        every version with its number, champion, previous champions and history; kinds MLflow already
        has versions of are left out. The old files are not touched. Returns kind -> imported versions."""
        imported: dict[str, list[int]] = {}
        for kind in KINDS:
            old = self.root / kind
            if not any(old.glob("v[0-9]*/card.json")):
                continue
            with self._writing(kind):
                if self._versions(kind):
                    continue
                imported[kind] = self._import_kind(kind, old)
        return imported

    # --- internals: MLflow ------------------------------------------------------------------

    @property
    def _client(self):
        """The MlflowClient of this registry (the database made, and an old layout imported, on first use)."""
        if self._mlflow is None:
            with self._lock():
                self._mlflow = _open_client(self.root)
            if any(self.root.glob("*/v[0-9]*/card.json")):
                self.migrate()
        return self._mlflow

    def _registered(self, kind: str):
        """The registered model of `kind`, or None."""
        from mlflow.exceptions import MlflowException

        _check_kind(kind)
        try:
            return self._client.get_registered_model(model_name(kind))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _model_tags(self, kind: str) -> dict[str, str]:
        model = self._registered(kind)
        return dict(model.tags) if model else {}

    def _previous(self, kind: str) -> list[int]:
        return json.loads(self._model_tags(kind).get("previous_champions", "[]"))

    def _versions(self, kind: str) -> list[int]:
        if self._registered(kind) is None:
            return []
        found = self._client.search_model_versions(f"name='{model_name(kind)}'")
        return sorted(int(v.version) for v in found)

    def _model_version(self, kind: str, version: int):
        from mlflow.exceptions import MlflowException

        _check_kind(kind)
        try:
            return self._client.get_model_version(model_name(kind), str(int(version)))
        except MlflowException:
            raise RegistryError(f"no {kind} model version {version} in {self.root}") from None

    def _version_tags(self, kind: str, version: int) -> dict[str, str]:
        return dict(self._model_version(kind, version).tags)

    def _version_dir(self, kind: str, version: int) -> Path:
        return self._run_model_dir(self._model_version(kind, version).run_id)

    def _run_model_dir(self, run_id: str) -> Path:
        """Where a run's model files are: the experiment's artifact location is `<root>/artifacts`."""
        return self.root / "artifacts" / run_id / "artifacts" / MODEL_DIR

    def _card(self, kind: str, version: int) -> dict:
        path = self._version_dir(kind, version) / "card.json"
        if not path.exists():
            raise RegistryError(f"{kind} model version {version} has no card at {path}")
        return json.loads(path.read_text())

    def _promotions(self, kind: str, version: int) -> list[dict]:
        """The promotions of a version, from the history (the card file itself is never rewritten)."""
        return [{k: v for k, v in event.items() if k not in ("event", "version")}
                for event in self.history(kind) if event["event"] == "promote" and event["version"] == int(version)]

    def _experiment_id(self) -> str:
        experiment = self._client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        return self._client.create_experiment(EXPERIMENT, artifact_location=(self.root.resolve() / "artifacts").as_uri(),
                                              tags={"mlflow.note.content": "Every `mailroom train` and retraining: one run per model kind."})

    def _next_version(self, kind: str) -> int:
        """The number MLflow gives the next version of `kind` (checked when it does)."""
        if self._registered(kind) is None:
            self._client.create_registered_model(model_name(kind), tags={"mailroom.kind": kind},
                                                 description=f"Mailroom's {kind} model: ONNX, card.json and evaluation set per version.")
        return max(self._versions(kind), default=0) + 1

    def _add_version(self, kind: str, run_id: str, expected: int, card: dict) -> None:
        directory = self._run_model_dir(run_id)
        made = self._client.create_model_version(
            model_name(kind), source=directory.resolve().as_uri(), run_id=run_id,
            tags={"eval_set": card["eval_set"]["fingerprint"], "feature_set_id": str(card.get("feature_set_id")),
                  "kernel": str(card.get("kernel")), "macro_f1": f"{card['evaluation']['macro_f1']:.4f}",
                  "sha256": card["files"]["model.onnx"]["sha256"]},
            description=f"{card.get('kernel')} on feature set {card.get('feature_set_id')}")
        if int(made.version) != expected:
            raise RegistryError(f"MLflow numbered the new {kind} version {made.version}, not {expected}: is another writer bypassing {self.root / '.lock'}?")
        self._client.set_tag(run_id, "mailroom.version", str(expected))

    def _log_run(self, run_id: str, kind: str, card: dict, params: dict, metrics: dict[str, float]) -> None:
        """Params, metrics and tags of a version's run, then end it."""
        from mlflow.entities import RunTag

        self._log_values(run_id, {"kind": kind, "kernel": card.get("kernel"), "feature_set_id": card.get("feature_set_id"), **params},
                         {"held_out.macro_f1": card["evaluation"]["macro_f1"], **metrics})
        self._client.log_batch(run_id, tags=[RunTag("mailroom.eval_set", card["eval_set"]["fingerprint"])])
        self._client.set_terminated(run_id)

    def _log_values(self, run_id: str, params: dict, metrics: dict[str, float]) -> None:
        """Params (values cut at MLflow's 6000 characters) and metrics, in batches of MLflow's 100."""
        from mlflow.entities import Metric, Param

        at = int(datetime.now(timezone.utc).timestamp() * 1000)
        param_list = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        metric_list = [Metric(str(k), float(v), at, 0) for k, v in metrics.items() if v is not None]
        for i in range(0, max(len(param_list), len(metric_list)), 100):
            self._client.log_batch(run_id, metrics=metric_list[i:i + 100], params=param_list[i:i + 100])

    def _set_champion(self, kind: str, version: int, previous: list[int]) -> None:
        client, name = self._client, model_name(kind)
        client.set_registered_model_alias(name, "champion", str(version))
        client.set_registered_model_tag(name, "previous_champions", json.dumps(previous))
        if previous:
            client.set_registered_model_alias(name, "previous", str(previous[-1]))
        elif "previous" in self.aliases(kind):
            client.delete_registered_model_alias(name, "previous")

    def _log(self, kind: str, event: dict) -> None:
        """Append an event to the kind's history (a registered-model tag), and tag the version it concerns."""
        event = {"at": _now(), **event}
        number = sum(k.startswith("history.") for k in self._model_tags(kind)) + 1
        value = json.dumps(event)
        self._client.set_registered_model_tag(model_name(kind), f"history.{number:04d}", value)
        if event.get("version") is not None:
            self._client.set_model_version_tag(model_name(kind), str(event["version"]), f"event.{number:04d}.{event['event']}", value)

    def _import_kind(self, kind: str, old: Path) -> list[int]:
        """One old-layout kind into MLflow: versions 1..N in order, then champion, previous and history."""
        cards = {int(p.parent.name[1:]): p for p in old.glob("v[0-9]*/card.json")}
        if sorted(cards) != list(range(1, len(cards) + 1)):
            raise RegistryError(f"cannot import {old}: versions {sorted(cards)} are not 1..{len(cards)}")
        for version in sorted(cards):
            source = cards[version].parent
            card = json.loads(cards[version].read_text())
            if self._next_version(kind) != version:
                raise RegistryError(f"cannot import {old}: MLflow would number v{version} otherwise")
            run = self._client.create_run(self._experiment_id(), run_name=f"{kind} v{version} (imported)",
                                          tags={"mailroom.kind": kind, "mailroom.imported_from": str(source)})
            directory = self._run_model_dir(run.info.run_id)
            shutil.copytree(source, directory)
            evalset = old / "evalsets" / f"{card['eval_set']['fingerprint']}.json.gz"
            if evalset.exists():
                shutil.copy(evalset, directory / "evalset.json.gz")
            self._log_run(run.info.run_id, kind, card, {"imported_from": str(source)}, {})
            self._add_version(kind, run.info.run_id, version, card)
        history = old / "history.jsonl"
        for line in history.read_text().splitlines() if history.exists() else []:
            event = json.loads(line)
            number = sum(k.startswith("history.") for k in self._model_tags(kind)) + 1
            self._client.set_registered_model_tag(model_name(kind), f"history.{number:04d}", json.dumps(event))
        state = json.loads((old / "champion.json").read_text()) if (old / "champion.json").exists() else {}
        if state.get("version") is not None:
            self._set_champion(kind, state["version"], previous=state.get("previous", []))
        self._log(kind, {"event": "import", "from": str(old), "versions": sorted(cards), "champion": state.get("version")})
        return sorted(cards)

    @contextmanager
    def _writing(self, kind: str):
        """Hold the writer lock and yield the client."""
        _check_kind(kind)
        client = self._client
        with self._lock():
            yield client

    @contextmanager
    def _lock(self):
        """The registry's writer lock: SQLite takes one writer at a time, so a second one waits here."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- comparing ------------------------------------------------------------------------

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


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")


_EMPTY_DATABASE: list[Path] = []  # per process: MLflow's empty schema, made once (a new database costs ~7 s of migrations)


def _open_client(root: Path):
    """An MlflowClient on `<root>/mlflow.db` (made in WAL mode, with MLflow's schema, when missing)."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    database = root / "mlflow.db"
    if not database.exists():
        if _EMPTY_DATABASE:
            shutil.copy(_EMPTY_DATABASE[0], database)
        else:
            with sqlite3.connect(database) as connection:  # WAL: readers (the UI server) never block the writer
                connection.execute("PRAGMA journal_mode=WAL")
            MlflowClient(database_uri(root), database_uri(root)).search_experiments()
            with sqlite3.connect(database) as connection:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            empty = Path(tempfile.mkdtemp(prefix="mailroom-mlflow-")) / "empty.db"
            shutil.copy(database, empty)
            _EMPTY_DATABASE.append(empty)
    return MlflowClient(database_uri(root), database_uri(root))


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
