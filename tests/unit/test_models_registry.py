"""models/registry.py: register, champion, promote / refuse / force, rollback, same-set comparison."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from models.export import to_onnx
from models.generator import generate
from models.modelio import input_signature, onnx_feeds, onnx_session
from models.registry import PromotionRefused, Registry, RegistryError, database_uri
from models.training import Candidate, build_dataset, context_vectors, fit
from models.features import FEATURE_SET_ID

CANDIDATE = Candidate("logreg", (("C", 10.0),), (("ngram_range", (1, 1)), ("min_df", 2)))


@pytest.fixture(scope="module")
def models():
    """A good and a bad (shuffled labels) text model, and two different evaluation sets."""
    docs = generate(240, seed=31, scan_share=0.0)
    data = build_dataset("text", docs, context_vectors(docs))
    rows = np.arange(len(data))
    train, eval_a, eval_b = data.rows(rows[rows % 3 == 0]), data.rows(rows[rows % 3 == 1]), data.rows(rows[rows % 3 == 2])
    good = fit("text", CANDIDATE, train, seed=0)
    shuffled = train.rows(np.arange(len(train)))
    shuffled.labels = np.random.default_rng(0).permutation(shuffled.labels)
    bad = fit("text", CANDIDATE, shuffled, seed=0)
    return {"good": to_onnx(good, "text").SerializeToString(), "bad": to_onnx(bad, "text").SerializeToString(), "a": eval_a, "b": eval_b}


def card(macro_f1, feature_set=FEATURE_SET_ID):
    return {"kind": "text", "kernel": "logreg", "feature_set_id": feature_set, "inputs": input_signature("text"), "labels": [],
            "evaluation": {"macro_f1": macro_f1}}


def register(registry, models, which, eval_set, claimed_f1, **card_args):
    data = models[eval_set]
    return registry.register("text", models[which], card(claimed_f1, **card_args), data.inputs, [str(x) for x in data.labels])


def true_f1(models, which, eval_set):
    data = models[eval_set]
    labels = onnx_session(models[which]).run(["label"], onnx_feeds("text", data.inputs))[0]
    return f1_score(list(data.labels), list(labels), labels=sorted(set(data.labels)), average="macro")



def test_first_model_becomes_champion_with_a_full_card(tmp_path, models):
    registry = Registry(tmp_path)
    assert register(registry, models, "good", "a", 0.9) == 1
    champion = registry.champion("text")
    assert champion.version == 1 and champion.onnx_path.read_bytes() == models["good"]
    assert champion.card["eval_set"]["n"] == len(models["a"]) and champion.card["files"]["model.onnx"]["bytes"] == len(models["good"])
    assert champion.card["promotions"][0]["reason"] == "first model of its kind"
    inputs, labels = registry.eval_set("text", champion.card["eval_set"]["fingerprint"])
    assert labels == [str(x) for x in models["a"].labels] and inputs["text"] == models["a"].inputs["text"]
    assert [e["event"] for e in registry.history("text")] == ["register", "promote"]
    assert register(registry, models, "good", "a", 0.9) == 2
    assert [(r["version"], r["champion"]) for r in registry.list("text")] == [(1, True), (2, False)]
    assert registry.list("image") == []


def test_promote_needs_a_better_macro_f1_on_the_same_set(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.80)
    worse, equal, better = (register(registry, models, "good", "a", f1) for f1 in (0.70, 0.80, 0.85))
    for version in (worse, equal):
        with pytest.raises(PromotionRefused, match="does not beat champion v1"):
            registry.promote("text", version)
    assert registry.champion("text").version == 1
    decision = registry.promote("text", better)
    assert decision["promoted"] and not decision["forced"] and "same evaluation set" in decision["comparison"]["summary"]
    assert registry.champion("text").version == better
    assert registry.show("text", better)["promotions"][-1]["from_version"] == 1
    assert registry.promote("text", better) == {"promoted": False, "version": better, "reason": "already champion"}


def test_forced_promotion_records_its_reason(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.9)
    worse = register(registry, models, "bad", "a", 0.2)
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote("text", worse, force_reason="  ")
    decision = registry.promote("text", worse, force_reason="hotfix for a mislabelled class")
    assert decision["forced"] and registry.champion("text").version == worse
    record = registry.show("text", worse)["promotions"][-1]
    assert record["forced"] and record["reason"] == "hotfix for a mislabelled class"
    assert registry.history("text")[-1]["reason"] == "hotfix for a mislabelled class"


def test_rollback_walks_back_through_previous_champions(tmp_path, models):
    registry = Registry(tmp_path)
    v1 = register(registry, models, "good", "a", 0.5)
    v2 = register(registry, models, "good", "a", 0.6)
    v3 = register(registry, models, "good", "a", 0.7)
    registry.promote("text", v2)
    registry.promote("text", v3)
    assert registry.rollback("text").version == v2
    assert registry.rollback("text").version == v1
    with pytest.raises(RegistryError, match="no previous"):
        registry.rollback("text")
    assert registry.champion("text").version == v1
    assert [e["event"] for e in registry.history("text")][-2:] == ["rollback", "rollback"]


def test_different_evaluation_sets_are_compared_by_re_evaluating_both(tmp_path, models):
    """Stored figures from different sets are not trusted: the bad model's card claims 0.99."""
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.10)
    bad = register(registry, models, "bad", "b", 0.99)
    with pytest.raises(PromotionRefused, match="re-evaluated on the contender's evaluation set"):
        registry.promote("text", bad)
    good_on_b = registry.evaluate("text", 1, registry.show("text", bad)["eval_set"]["fingerprint"])
    assert good_on_b == pytest.approx(true_f1(models, "good", "b")) and good_on_b > true_f1(models, "bad", "b")
    same_model = register(registry, models, "good", "b", 1.0)
    with pytest.raises(PromotionRefused):  # re-evaluated, it ties with itself: a tie does not beat
        registry.promote("text", same_model)


def test_rows_the_champion_was_trained_on_are_left_out_of_a_re_evaluation(tmp_path, models):
    b = models["b"]
    labels_a = [str(x) for x in models["a"].labels]
    registry = Registry(tmp_path / "some")
    registry.register("text", models["good"], card(0.5), models["a"].inputs, labels_a, train_inputs=b.rows(range(10)).inputs)
    assert len(registry.trained_on("text", 1)) == 10
    contender = register(registry, models, "good", "b", 0.9)
    with pytest.raises(PromotionRefused, match="less 10 rows the champion was trained on"):  # the same model ties with itself
        registry.promote("text", contender)

    registry = Registry(tmp_path / "all")
    registry.register("text", models["good"], card(0.5), models["a"].inputs, labels_a, train_inputs=b.inputs)
    contender = register(registry, models, "good", "b", 0.9)
    with pytest.raises(PromotionRefused, match="trained on all of the contender's evaluation set"):
        registry.promote("text", contender)


def test_models_with_other_inputs_cannot_be_compared_unless_forced(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.5)
    other = registry.register("text", models["good"], {**card(0.9, feature_set="sender-v2"), "inputs": [{"name": "text"}]},
                              models["b"].inputs, [str(x) for x in models["b"].labels])
    with pytest.raises(PromotionRefused, match="cannot compare"):
        registry.promote("text", other)
    assert registry.promote("text", other, force_reason="new feature set, validated offline")["forced"]


def test_helpful_errors(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no text champion .*`mailroom train`"):
        registry.champion("text")
    with pytest.raises(RegistryError, match="unknown model kind"):
        registry.list("audio")
    with pytest.raises(RegistryError, match="version 7"):
        registry.show("text", 7)


def test_versions_are_mlflow_model_versions_with_aliases_and_runs(tmp_path, models):
    from mlflow.tracking import MlflowClient

    registry = Registry(tmp_path)
    v1, v2 = register(registry, models, "good", "a", 0.5), register(registry, models, "good", "a", 0.6)
    registry.promote("text", v2)
    client = MlflowClient(database_uri(tmp_path), database_uri(tmp_path))
    model = client.get_registered_model("mailroom-text")
    assert model.aliases == {"champion": v2, "previous": v1} and registry.aliases("text") == {"champion": v2, "previous": v1}
    version = client.get_model_version("mailroom-text", "2")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["kind"] == "text" and run.data.metrics["held_out.macro_f1"] == 0.6
    assert client.get_experiment(run.info.experiment_id).name == "mailroom-training"
    assert registry.get("text", 2).onnx_path == tmp_path / "artifacts" / version.run_id / "artifacts" / "model" / "model.onnx"
    assert registry.get("text", 2).onnx_path.as_uri() == run.info.artifact_uri + "/model/model.onnx"  # what the MLflow UI shows
    assert any(key.endswith(".promote") for key in version.tags)  # the history, on the version the UI shows
    assert (tmp_path / "mlflow.db").exists() and _journal_mode(tmp_path / "mlflow.db") == "wal"


def _journal_mode(path) -> str:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


def test_versions_are_immutable_and_promotions_live_in_the_history(tmp_path, models):
    registry = Registry(tmp_path)
    v1 = register(registry, models, "good", "a", 0.5)
    card_file = registry.get("text", v1).onnx_path.parent / "card.json"
    before = {p.name: p.read_bytes() for p in card_file.parent.iterdir()}
    v2 = register(registry, models, "good", "a", 0.6)
    registry.promote("text", v2)
    registry.rollback("text")
    assert {p.name: p.read_bytes() for p in card_file.parent.iterdir()} == before  # nothing of v1 was rewritten
    assert [p["reason"] for p in registry.show("text", v1)["promotions"]] == ["first model of its kind"]
    assert [e["event"] for e in registry.history("text")] == ["register", "promote", "register", "promote", "rollback"]
    assert registry.get("text", v2).onnx_path.parent != card_file.parent  # each version its own run and files


def test_challenger_alias_is_set_and_retired_with_reasons(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.5)
    v2 = register(registry, models, "good", "a", 0.6)
    registry.set_challenger("text", v2, "shadow after retraining")
    assert registry.aliases("text") == {"champion": 1, "challenger": v2}
    assert registry.retire_challenger("text", "judged: no better") == v2 and "challenger" not in registry.aliases("text")
    assert registry.retire_challenger("text", "again") is None
    assert [(e["event"], e.get("reason")) for e in registry.history("text")][-2:] == [
        ("challenger", "shadow after retraining"), ("retire", "judged: no better")]
    registry.set_challenger("text", v2, "again, retrained")
    registry.promote("text", v2)
    assert registry.aliases("text") == {"champion": v2, "previous": 1}  # a challenger promoted is no longer one


def test_a_decision_is_noted_in_the_history_and_on_its_version(tmp_path, models):
    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.5)
    v2 = register(registry, models, "good", "a", 0.6)
    registry.note_decision("text", v2, "REFUSE", "judge", ["McNemar p 0.4 >= 0.05", "x" * 900], "n 400, macro-F1 0.91 -> 0.90")
    noted = registry.history("text")[-1]
    assert (noted["event"], noted["version"], noted["decision"], noted["by"]) == ("decision", v2, "REFUSE", "judge")
    assert noted["reasons"][0] == "McNemar p 0.4 >= 0.05" and len(noted["reasons"][1]) == 500  # bounded: MLflow caps tag values
    tags = registry._client.get_model_version("mailroom-text", str(v2)).tags
    assert any(key.endswith(".decision") and "REFUSE" in value for key, value in tags.items())  # shown in the UI on the version
    with pytest.raises(RegistryError):
        registry.note_decision("text", 99, "KEEP", "judge", [])


def test_a_second_writer_waits_for_the_first(tmp_path, models):
    import threading
    import time

    registry = Registry(tmp_path)
    register(registry, models, "good", "a", 0.5)
    done = {}

    def second_writer():
        done["version"] = register(Registry(tmp_path), models, "good", "a", 0.6)
        done["at"] = time.monotonic()

    with registry._lock():  # the first writer holds the lock for a while
        writer = threading.Thread(target=second_writer)
        writer.start()
        time.sleep(1.0)
        assert "version" not in done
        released = time.monotonic()
    writer.join(60)
    assert done["version"] == 2 and done["at"] >= released


def test_a_copied_registry_is_self_contained(tmp_path, models):
    import shutil

    register(Registry(tmp_path / "a"), models, "good", "a", 0.5)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = Registry(tmp_path / "b")
    assert copy.champion("text").onnx_path.is_relative_to(tmp_path / "b")
    assert register(copy, models, "good", "a", 0.6) == 2 and copy.get("text", 2).onnx_path.is_relative_to(tmp_path / "b")
    assert [r["version"] for r in Registry(tmp_path / "a").list("text")] == [1]


def _legacy_registry(root, models):
    """A registry in the hand-written layout: v1, v2 (champion after a promotion), its history."""
    import gzip
    import hashlib

    text = root / "text"
    data = models["a"]
    eval_json = json.dumps({"inputs": {"text": data.inputs["text"], "context": np.asarray(data.inputs["context"], dtype=np.float32).tolist()},
                            "labels": [str(x) for x in data.labels]}, sort_keys=True, separators=(",", ":")).encode()
    (text / "evalsets").mkdir(parents=True)
    (text / "evalsets" / "abc.json.gz").write_bytes(gzip.compress(eval_json))
    for version, f1 in ((1, 0.5), (2, 0.7)):
        directory = text / f"v{version:04d}"
        directory.mkdir()
        (directory / "model.onnx").write_bytes(models["good"])
        (directory / "card.json").write_text(json.dumps({**card(f1), "version": version, "created": "2026-01-01T00:00:00+00:00",
                                                         "eval_set": {"fingerprint": "abc", "n": len(data)}, "promotions": [],
                                                         "files": {"model.onnx": {"bytes": len(models["good"]), "sha256": hashlib.sha256(models["good"]).hexdigest()}}}))
    (text / "champion.json").write_text(json.dumps({"version": 2, "previous": [1]}))
    (text / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (
        {"at": "t1", "event": "register", "version": 1}, {"at": "t1", "event": "promote", "version": 1, "from_version": None, "reason": "first model of its kind"},
        {"at": "t2", "event": "register", "version": 2}, {"at": "t3", "event": "promote", "version": 2, "from_version": 1, "reason": "beats champion"})))


def test_an_old_registry_is_imported_once_on_first_use(tmp_path, models):
    _legacy_registry(tmp_path, models)
    before = {p: p.read_bytes() for p in (tmp_path / "text").rglob("*") if p.is_file()}
    registry = Registry(tmp_path)
    assert [(r["version"], r["champion"]) for r in registry.list("text")] == [(1, False), (2, True)]
    assert registry.aliases("text") == {"champion": 2, "previous": 1}
    assert registry.get("text", 2).onnx_path.read_bytes() == models["good"] and registry.get("text", 2).onnx_path.is_relative_to(tmp_path / "artifacts")
    assert [e["event"] for e in registry.history("text")] == ["register", "promote", "register", "promote", "import"]
    assert registry.show("text", 2)["promotions"][0]["reason"] == "beats champion"
    assert registry.eval_set("text", "abc")[1] == [str(x) for x in models["a"].labels]
    assert registry.rollback("text").version == 1
    assert Registry(tmp_path).migrate() == {} and len(Registry(tmp_path).list("text")) == 2  # once only
    assert {p: p.read_bytes() for p in (tmp_path / "text").rglob("*") if p.is_file()} == before  # old files left alone


def test_attachments_are_stored_beside_the_card_and_listed_in_its_files(tmp_path, models):
    registry = Registry(tmp_path)
    data = models["a"]
    version = registry.register("text", models["good"], card(0.9), data.inputs, [str(x) for x in data.labels],
                                attachments={"reliability.png": b"\x89PNG fake"})
    ref = registry.get("text", version)
    assert (ref.onnx_path.parent / "reliability.png").read_bytes() == b"\x89PNG fake"
    assert set(ref.card["files"]) == {"model.onnx", "reliability.png"} and ref.card["files"]["reliability.png"]["bytes"] == 9


def test_importing_the_registry_and_the_scoring_logic_does_not_import_mlflow():
    """Flink workers import udfs.scoring (-> models.registry) and must not pay for MLflow."""
    import subprocess
    import sys

    code = "import sys, models.registry, models.pointers, udfs.scoring, jobs.scoring; print('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
