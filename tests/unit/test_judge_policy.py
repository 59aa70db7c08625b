"""mailroom/judge.py's JudgePolicy: collecting -> decided once -> probation -> kept or rolled back."""

from __future__ import annotations

import random

from mailroom.decisions import decision
from mailroom.judge import PROBATION, JudgePolicy, record_of
from models.judging import KEEP, PROMOTE, REFUSE, ROLL_BACK, JudgeConfig
from schemas import codec
from schemas.labels import LABELS

CONFIG = JudgeConfig(min_pairs=300, probation_pairs=300, rollback_min_pairs=30, bootstrap=300)


def records(n: int, champion: str, challenger: str, champion_right: float, challenger_right: float, seed: int = 1,
            start: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def answer(truth: str, share: float) -> str:
        return truth if rng.random() < share else rng.choice([label for label in LABELS if label != truth])

    out = []
    for i in range(start, start + n):
        truth = LABELS[i % len(LABELS)]
        out.append({"doc_id": f"d{i}", "kind": "text", "champion_model": "mailroom-text", "champion_version": champion,
                    "champion_label": answer(truth, champion_right), "challenger_model": "mailroom-text", "challenger_version": challenger,
                    "challenger_label": answer(truth, challenger_right), "true_label": truth, "truth_kind": "CONFIRM",
                    "champion_latency_ms": 2.0, "challenger_latency_ms": 2.0, "predicted_ms": i, "truth_sent_ms": i, "matched_ms": i,
                    "revision": 0})
    return out


def feed(policy: JudgePolicy, batch: list[dict]) -> list:
    return [made for made in map(policy.on_pair, batch) if made is not None]


def test_a_better_challenger_is_promoted_once_then_the_old_champion_is_on_probation_and_kept():
    policy = JudgePolicy(CONFIG)
    made = feed(policy, records(400, "1", "2", 0.7, 0.95))
    assert [(m.decision, m.champion, m.challenger) for m in made] == [(PROMOTE, "1", "2")]  # once, at min_pairs; later pairs ignored
    assert made[0].figures["n"] == CONFIG.min_pairs
    assert policy.progress() == [{"kind": "text", "champion": "2", "challenger": "1", "phase": PROBATION, "pairs": 0}]
    kept = feed(policy, records(400, "2", "1", 0.95, 0.95, seed=2, start=1000))  # the reverse shadow: as good
    assert [(m.decision, m.champion, m.challenger) for m in kept] == [(KEEP, "2", "1")]
    assert policy.progress() == [] and feed(policy, records(50, "2", "1", 0.1, 0.9, start=5000)) == []  # probation over


def test_a_worse_challenger_is_refused_with_the_reasons_and_its_pairs_change_nothing_after():
    policy = JudgePolicy(CONFIG)
    worse = records(300, "1", "3", 0.9, 0.9)
    shuffled = [r["challenger_label"] for r in worse]
    random.Random(4).shuffle(shuffled)  # a contender trained on shuffled labels answers at random
    made = feed(policy, [{**r, "challenger_label": label} for r, label in zip(worse, shuffled)])
    assert [m.decision for m in made] == [REFUSE]
    assert any(r.startswith("McNemar") for r in made[0].reasons) and any(r.startswith("macro-F1") for r in made[0].reasons)
    assert feed(policy, records(400, "1", "3", 0.1, 1.0, start=1000)) == []  # decided: no second look
    event = record_of(made[0], ["text/challenger = retired"], None)
    assert codec.decode(codec.encode("model_decision", event, validate=True)).record["reasons"] == list(made[0].reasons)


def test_a_promoted_model_that_is_worse_during_probation_is_rolled_back():
    policy = JudgePolicy(CONFIG)
    assert [m.decision for m in feed(policy, records(300, "1", "2", 0.7, 0.95))] == [PROMOTE]
    rolled = feed(policy, records(300, "2", "1", 0.5, 0.95, seed=3, start=1000))  # the new one is worse than the old one
    assert [(m.decision, m.champion, m.challenger) for m in rolled] == [(ROLL_BACK, "2", "1")]
    assert rolled[0].figures["n"] < CONFIG.probation_pairs  # as soon as it is significant


def test_a_correction_replaces_its_documents_pair_in_place():
    policy = JudgePolicy(JudgeConfig(min_pairs=3, bootstrap=50))
    first = records(2, "1", "2", 1.0, 1.0)
    feed(policy, first)
    corrected = {**first[0], "true_label": "other" if first[0]["true_label"] != "other" else "invoice", "revision": 1}
    assert feed(policy, [corrected, {**first[1], "revision": 0}]) == []  # still two documents
    (made,) = feed(policy, records(1, "1", "2", 1.0, 1.0, start=7))
    assert made.figures["n"] == 3 and made.figures["b"] + made.figures["c"] == 0  # both wrong on the corrected one


def test_a_restart_restores_the_decisions_it_made():
    policy = JudgePolicy(CONFIG)
    policy.restore(decision("text", PROMOTE, "judge", challenger_version="2", champion_version="1"))
    policy.restore(decision("text", "RETRAINED", "retrainer", challenger_version="5"))
    assert feed(policy, records(400, "1", "2", 0.1, 1.0)) == []  # decided before the restart
    assert policy.progress()[0]["phase"] == PROBATION and policy.progress()[0]["champion"] == "2"
