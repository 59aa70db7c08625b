"""models/judging.py on synthetic shadow pairs: better, worse, equal and one-class-breaking
challengers, the fixed sample, budgets, the probation rollback, Connor's sample size."""

from __future__ import annotations

import json
import random

import pytest
from sklearn.metrics import f1_score

from models.judging import KEEP, PROMOTE, REFUSE, ROLL_BACK, WAIT, JudgeConfig, JudgedPair, compare, judge, rollback_check, sample_size
from schemas.labels import LABELS

CONFIG = JudgeConfig(min_pairs=700, probation_pairs=700)


def answer(rng: random.Random, truth: str, right_share: float) -> str:
    return truth if rng.random() < right_share else rng.choice([label for label in LABELS if label != truth])


def pairs(n: int, champion_right: float, challenger_right: float, seed: int = 1, challenger_right_on: dict | None = None,
          **served) -> list[JudgedPair]:
    """n documents, true labels in turn; each model right with its share (per class for the
    challenger where `challenger_right_on` says), wrong with another label at random."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        truth = LABELS[i % len(LABELS)]
        out.append(JudgedPair(f"d{i}", truth, answer(rng, truth, champion_right),
                              answer(rng, truth, (challenger_right_on or {}).get(truth, challenger_right)),
                              champion_latency_ms=2.0, challenger_latency_ms=2.5, **served))
    return out


def test_a_clearly_better_challenger_is_promoted():
    verdict = judge(pairs(700, 0.75, 0.90), CONFIG)
    assert verdict.decision == PROMOTE and verdict.reasons == ()
    f = verdict.figures
    assert f["n"] == 700 and f["c"] > f["b"] and f["mcnemar_p"] < 1e-6
    assert f["macro_f1"]["ci"][0] > 0 and f["macro_f1"]["ci"][0] < f["macro_f1"]["delta"] < f["macro_f1"]["ci"][1]
    assert json.loads(json.dumps(verdict.as_dict())) == verdict.as_dict()


def test_a_worse_challenger_is_refused_with_every_reason():
    better = pairs(700, 0.85, 0.85)
    shuffled = [p.challenger_label for p in better]
    random.Random(5).shuffle(shuffled)
    worse = [JudgedPair(p.doc_id, p.true_label, p.champion_label, label) for p, label in zip(better, shuffled)]
    verdict = judge(worse, CONFIG)
    assert verdict.decision == REFUSE
    assert verdict.reasons[0].startswith("McNemar") and verdict.reasons[1].startswith("macro-F1")
    assert {r.split(":")[0] for r in verdict.reasons[2:]} == {f"class {label}" for label in LABELS}  # every class is broken
    assert verdict.figures["macro_f1"]["ci"][1] < 0


def test_an_equal_challenger_is_refused_because_mcnemar_is_not_significant():
    verdict = judge(pairs(700, 0.85, 0.85), CONFIG)
    assert verdict.decision == REFUSE and verdict.reasons[0].startswith("McNemar")
    assert verdict.figures["mcnemar_p"] > CONFIG.alpha


def test_a_better_challenger_that_breaks_one_class_is_refused_for_that_class():
    verdict = judge(pairs(700, 0.80, 0.97, challenger_right_on={"offer": 0.60}), CONFIG)
    assert verdict.decision == REFUSE
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith("class offer:")
    f = verdict.figures
    assert f["mcnemar_p"] < CONFIG.alpha and f["macro_f1"]["ci"][0] > 0
    assert f["per_class"]["offer"]["guarded"] and f["per_class"]["offer"]["ci"][0] < -CONFIG.class_delta


def test_a_class_below_the_support_floor_is_not_guarded():
    sample = pairs(700, 0.80, 0.97, challenger_right_on={"offer": 0.60})
    verdict = judge(sample, JudgeConfig(min_pairs=700, class_min_support=101))  # 100 offers
    assert verdict.decision == PROMOTE and not verdict.figures["per_class"]["offer"]["guarded"]


def test_below_the_sample_size_the_verdict_is_wait_and_then_it_is_decided_once():
    better = pairs(1000, 0.75, 0.90)
    early = judge(better[:699], CONFIG)
    assert (early.decision, early.reasons, early.figures) == (WAIT, ("699 of 700 labelled pairs",), {"n": 699})
    decided = judge(better[:700], CONFIG)
    later = judge(better, CONFIG)  # more pairs change nothing: the first 700 were judged
    assert decided.decision == later.decision == PROMOTE and later.figures["ignored"] == 300
    assert {k: v for k, v in later.figures.items() if k != "ignored"} == {k: v for k, v in decided.figures.items() if k != "ignored"}


def test_latency_and_fallbacks_over_budget_refuse():
    slow = [JudgedPair(p.doc_id, p.true_label, p.champion_label, p.challenger_label, 2.0, 9.0, i % 20 == 0)
            for i, p in enumerate(pairs(700, 0.75, 0.90))]
    verdict = judge(slow, JudgeConfig(min_pairs=700, max_p99_latency_ms=5.0))
    assert verdict.decision == REFUSE
    assert [r.split(":")[0] for r in verdict.reasons] == ["latency", "latency", "fallbacks"]
    assert verdict.figures["latency_ms"] == {"champion_p99": 2.0, "challenger_p99": 9.0, "ratio": 4.5}
    assert verdict.figures["fallback_rate"] == pytest.approx(0.05)


def test_figures_match_scikit_learn_and_are_deterministic():
    sample = pairs(300, 0.7, 0.8, seed=3)
    sample[0] = JudgedPair("d0", "invoice", "invoice", "unknown-class")  # a label only the challenger predicts
    f = compare(sample, CONFIG)
    y_true = [p.true_label for p in sample]
    for side in ("champion", "challenger"):
        y_pred = [getattr(p, f"{side}_label") for p in sample]
        assert f["macro_f1"][side] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
        per_class = f1_score(y_true, y_pred, labels=list(f["per_class"]), average=None, zero_division=0)
        assert [c[f"{side}_f1"] for c in f["per_class"].values()] == pytest.approx(list(per_class), abs=1e-12)
    assert f == compare(sample, CONFIG)
    assert compare(sample, JudgeConfig(seed=1))["macro_f1"]["ci"] != f["macro_f1"]["ci"]
    with pytest.raises(ValueError, match="duplicate"):
        compare(sample + sample[:1], CONFIG)


# --- probation -----------------------------------------------------------------------------------


def test_rollback_fires_on_a_clearly_worse_new_champion():
    # champion: the new one; challenger: the old one, in shadow
    verdict = rollback_check(pairs(200, 0.70, 0.88), CONFIG)
    assert verdict.decision == ROLL_BACK  # before the window is full: a significant loss acts at once
    assert [r.split(":")[0] for r in verdict.reasons] == ["McNemar", "macro-F1"]


def test_an_equal_new_champion_is_kept_when_the_window_is_full():
    equal = pairs(1000, 0.85, 0.85, seed=2)
    assert rollback_check(equal[:10], CONFIG).decision == WAIT  # below rollback_min_pairs
    assert rollback_check(equal[:699], CONFIG).decision == WAIT
    kept = rollback_check(equal, CONFIG)
    assert kept.decision == KEEP and kept.reasons == () and kept.figures["n"] == 700


# --- sample size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delta, discordant, two_sided, one_sided", [
    (0.05, 0.12, 374, 295), (0.03, 0.08, 695, 547), (0.02, 0.06, 1175, 925), (0.02, 0.10, 1960, 1544), (0.01, 0.04, 3137, 2471)])
def test_sample_size_matches_the_lifecycle_table(delta, discordant, two_sided, one_sided):
    """LIFECYCLE.md rounds to the nearest pair; sample_size rounds up."""
    assert abs(sample_size(delta, discordant) - two_sided) <= 1
    assert abs(sample_size(delta, discordant, one_sided=True) - one_sided) <= 1


def test_sample_size_refuses_impossible_inputs():
    with pytest.raises(ValueError):
        sample_size(0.4, 0.1)
