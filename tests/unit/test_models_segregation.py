"""models/segregation.py: strategies, ratios, warnings and no leakage of duplicates or groups."""

import random
from collections import Counter

import pytest

from models.segregation import leakage_units, split

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo "
         "sierra tango uniform victor whiskey xray yankee zulu invoice order offer complaint service request").split()


def make_docs(n=200, seed=0, labels=("invoice", "other", "complaint", "offer")):
    rng = random.Random(seed)
    return [{"doc_id": f"d{i}", "received_ms": 1000 * i, "label": labels[i % len(labels)], "content_type": "text", "subject": None,
             "sender": f"s{i % 17}@x.example", "text": " ".join(rng.choice(WORDS) for _ in range(60))} for i in range(n)]


def sides(result):
    return {d["doc_id"] for d in result.train}, {d["doc_id"] for d in result.held_out}



@pytest.mark.parametrize("strategy", ["sequential", "random", "stratified"])
def test_every_strategy_partitions_at_about_the_ratio(strategy):
    docs = make_docs()
    result = split(docs, strategy, ratio=0.25, seed=3)
    train, held = sides(result)
    assert not train & held and train | held == {d["doc_id"] for d in docs}
    assert len(held) == pytest.approx(50, abs=3)
    assert result.warnings == []


def test_sequential_holds_out_the_latest_documents():
    result = split(make_docs(), "sequential", ratio=0.2)
    assert max(d["received_ms"] for d in result.train) < min(d["received_ms"] for d in result.held_out)


def test_random_is_seeded():
    docs = make_docs()
    assert sides(split(docs, "random", seed=5)) == sides(split(docs, "random", seed=5))
    assert sides(split(docs, "random", seed=5)) != sides(split(docs, "random", seed=6))


def test_stratified_keeps_each_class_at_the_ratio():
    docs = make_docs(n=400, labels=("invoice",) * 7 + ("complaint",) * 2 + ("offer",))
    result = split(docs, "stratified", ratio=0.2, seed=1)
    total, held = Counter(d["label"] for d in docs), Counter(d["label"] for d in result.held_out)
    for label in total:
        assert held[label] / total[label] == pytest.approx(0.2, abs=0.03)


def test_custom_function_decides():
    docs = make_docs()
    result = split(docs, "custom", custom=lambda d: d["sender"] == "s3@x.example")
    assert {d["sender"] for d in result.held_out} == {"s3@x.example"}
    with pytest.raises(ValueError, match="custom"):
        split(docs, "custom")
    with pytest.raises(ValueError, match="strategy"):
        split(docs, "alphabetical")
    with pytest.raises(ValueError, match="ratio"):
        split(docs, "random", ratio=1.5)


def test_warns_about_under_represented_and_missing_classes():
    docs = make_docs(n=100) + [{**make_docs(1)[0], "doc_id": "rare", "label": "job_application", "text": "a lonely application letter"}]
    result = split(docs, "stratified", ratio=0.2, expected_labels=("invoice", "purchase_order"))
    text = "\n".join(result.warnings)
    assert "job_application: badly under-represented (1 train, 0 held out" in text
    assert "purchase_order: no documents at all" in text
    assert "invoice" not in text


def test_warns_when_a_class_lands_mostly_on_one_side():
    docs = make_docs(n=100)
    result = split(docs, "custom", custom=lambda d: d["label"] == "offer" or d["doc_id"] == "d0")
    assert any(w.startswith("class offer: 100% held out") or "offer: badly under-represented" in w for w in result.warnings)


def test_exact_and_near_duplicates_never_straddle_the_split():
    docs = make_docs(n=200, seed=2)
    twins = []
    for i in range(0, 40, 2):
        original = docs[i]
        words = original["text"].split()
        words[30] = "changed"  # near duplicate: one word of 60
        docs.append({**original, "doc_id": f"near{i}", "text": " ".join(words)})
        docs.append({**original, "doc_id": f"exact{i}", "text": "  " + original["text"].upper() + " !!"})  # same text, other case/spacing
        twins.append({original["doc_id"], f"near{i}", f"exact{i}"})
    for seed in range(5):
        for strategy in ("random", "stratified", "sequential"):
            train, held = sides(split(docs, strategy, ratio=0.3, seed=seed))
            for group in twins:
                assert group <= train or group <= held, (strategy, seed, group)
    result = split(docs, "random", seed=0)
    assert result.merged_docs == 3 * len(twins)  # only the planted duplicates were merged


def test_texts_sharing_some_sentences_are_not_merged():
    docs = make_docs(n=60, seed=4)
    shared = " ".join(WORDS[:15])
    docs = [{**d, "text": shared + " " + d["text"]} for d in docs]  # 15 common words of 75
    assert all(len(unit) == 1 for unit in leakage_units(docs))


def test_group_by_keeps_each_sender_on_one_side():
    docs = make_docs()
    result = split(docs, "random", ratio=0.2, seed=2, group_by="sender")
    assert not {d["sender"] for d in result.train} & {d["sender"] for d in result.held_out}
    assert len(result.held_out) == pytest.approx(40, abs=12)


def test_images_with_identical_bytes_stay_together():
    docs = make_docs(n=20)
    docs += [{"doc_id": f"img{i}", "label": "invoice", "content_type": "image", "image": b"same png bytes", "text": None} for i in range(2)]
    units = leakage_units(docs)
    assert sorted(len(u) for u in units)[-1] == 2
