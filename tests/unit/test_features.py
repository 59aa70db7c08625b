"""models/features.py: sender context features (hand-computed) and the shared text normalisation."""

import math
import pickle
import unicodedata

import pytest

from schemas.labels import LABELS
from models.features import (FEATURE_SET_ID, LABEL_MEMORY, MAX_TEXT_CHARS, SENDER_FEATURES, SenderHistory, model_text,
                           normalise_text)

HOUR, MINUTE = 3_600_000, 60_000


def feats(values):
    return dict(zip(SENDER_FEATURES, values))



def test_feature_list_is_one_per_label_plus_activity():
    assert len(SENDER_FEATURES) == len(set(SENDER_FEATURES)) == 5 + len(LABELS)
    assert [f"sender_label_share_{label}" for label in LABELS] == list(SENDER_FEATURES[5:])
    assert FEATURE_SET_ID


def test_unknown_sender_has_all_zero_features():
    assert SenderHistory().observe(123_456, is_scan=True) == [0.0] * len(SENDER_FEATURES)


def test_features_come_from_history_before_the_document():
    h = SenderHistory()
    h.observe(0, is_scan=True)
    h.record_label("invoice")

    f = feats(h.observe(10 * MINUTE, is_scan=False))
    assert f["sender_docs_1h"] == 1 and f["sender_docs_24h"] == 1
    assert f["sender_seen_log"] == pytest.approx(math.log1p(1))
    assert f["sender_gap_log_s"] == pytest.approx(math.log1p(600))
    assert f["sender_scan_share"] == 1.0
    assert f["sender_label_share_invoice"] == 1.0 and f["sender_label_share_offer"] == 0.0
    h.record_label("invoice")

    f = feats(h.observe(2 * HOUR + 10 * MINUTE, is_scan=False))  # the first two are > 1 h old now
    assert (f["sender_docs_1h"], f["sender_docs_24h"]) == (0, 2)
    assert f["sender_seen_log"] == pytest.approx(math.log1p(2))
    assert f["sender_gap_log_s"] == pytest.approx(math.log1p(7200))
    assert f["sender_scan_share"] == pytest.approx(0.5)
    h.record_label("offer")

    f = feats(h.observe(25 * HOUR, is_scan=False))  # only the 2h10 document is within 24 h
    assert (f["sender_docs_1h"], f["sender_docs_24h"]) == (0, 1)
    assert f["sender_gap_log_s"] == pytest.approx(math.log1p(25 * 3600 - 7800))
    assert f["sender_scan_share"] == pytest.approx(1 / 3)
    assert f["sender_label_share_invoice"] == pytest.approx(2 / 3)
    assert f["sender_label_share_offer"] == pytest.approx(1 / 3)


def test_late_document_counts_as_zero_gap_and_sees_only_older_documents():
    h = SenderHistory()
    h.observe(10 * MINUTE, is_scan=False)
    f = feats(h.observe(5 * MINUTE, is_scan=False))
    assert f["sender_gap_log_s"] == 0.0
    assert f["sender_docs_1h"] == 0  # the 10-minute document came after this one
    assert h.last_ms == 10 * MINUTE


def test_history_stays_bounded():
    h = SenderHistory()
    for i in range(60):
        h.observe(i * HOUR, is_scan=False)
        h.record_label(LABELS[i % len(LABELS)])
    assert len(h.recent_ms) == 25  # 24 h before the newest, inclusive
    assert len(h.labels) == LABEL_MEMORY
    shares = feats(h.observe(60 * HOUR, is_scan=False))
    assert sum(shares[f"sender_label_share_{label}"] for label in LABELS) == pytest.approx(1.0)


def test_record_label_rejects_unknown_labels():
    with pytest.raises(ValueError, match="unknown label"):
        SenderHistory().record_label("spam")


def test_redis_mapping_round_trip_keeps_behaviour():
    h = SenderHistory()
    for t, label in ((0, "invoice"), (5 * MINUTE, "offer"), (3 * HOUR, "invoice")):
        h.observe(t, is_scan=t == 0)
        h.record_label(label)
    mapping = h.to_redis_mapping()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
    as_redis_returns = {k.encode(): v.encode() for k, v in mapping.items()}
    restored = SenderHistory.from_redis_mapping(as_redis_returns)
    assert restored.observe(4 * HOUR, is_scan=False) == h.observe(4 * HOUR, is_scan=False)


def test_redis_mapping_of_another_feature_set_is_refused():
    mapping = {**SenderHistory().to_redis_mapping(), "feature_set_id": "sender-v0"}
    with pytest.raises(ValueError, match="sender-v0"):
        SenderHistory.from_redis_mapping(mapping)


def test_history_pickles():
    h = SenderHistory()
    h.observe(1000, is_scan=True)
    h.record_label("complaint")
    clone = pickle.loads(pickle.dumps(h))
    assert clone.observe(2000, False) == h.observe(2000, False)


@pytest.mark.parametrize("text", ["Grüße aus Köln", "CAFÉ Crème", "  tab\tnew\nline  ", "İstanbul ẞ", "x" * (MAX_TEXT_CHARS + 50) + " y"])
def test_normalise_text_is_idempotent(text):
    once = normalise_text(text)
    assert normalise_text(once) == once
    assert len(once) <= MAX_TEXT_CHARS


def test_normalise_text_unifies_unicode_forms_case_and_spacing():
    composed, decomposed = "Réclamation Grüße", unicodedata.normalize("NFD", "Réclamation Grüße")
    assert composed != decomposed
    assert normalise_text(composed) == normalise_text(decomposed) == "réclamation grüße"
    assert normalise_text("A \n\t B") == "a b"


def test_model_text_joins_subject_and_body():
    assert model_text("Invoice", "Please PAY") == "invoice please pay"
    assert model_text(None, None) == ""


def test_normalise_text_drops_digits_and_masks_that_only_say_where_a_text_comes_from():
    assert normalise_text("Invoice 2024-0017 due 12/03") == "invoice - due /"
    assert normalise_text("On XX/XX/XXXX XXXX bank closed my account") == "on / / bank closed my account"
    assert normalise_text("xxl boxes, exxon, tax") == "xxl boxes, exxon, tax"  # only whole runs of x are masks
