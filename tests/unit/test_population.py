"""models.population: bins, reference shares, PSI."""

from __future__ import annotations

import math

import pytest

from models.features import SENDER_FEATURES
from models.population import EDGES, bin_of, bins, monitored, psi, reference


@pytest.mark.parametrize("feature, value, expected", [
    ("text_length", 0, "0-100"), ("text_length", 99, "0-100"), ("text_length", 100, "100-300"), ("text_length", 20_000, "10000+"),
    ("sender_docs_24h", 0, "0-1"), ("sender_docs_24h", 2, "1-3"), ("sender_docs_24h", 1000, "100+"),
    ("sender_top_label_share", 0.5, "0.5-0.75"), ("sender_top_label_share", 1.0, "0.75-1"), ("label", "cv", "cv"),
    ("content_type", "IMAGE", "IMAGE"),
])
def test_bin_of(feature, value, expected):
    assert bin_of(feature, value) == expected


def test_every_binned_value_lands_in_a_listed_bin():
    for feature, edges in EDGES.items():
        for value in (*edges, edges[-1] * 10 + 1):
            assert bin_of(feature, value) in bins(feature)


def test_monitored_inputs_of_a_document():
    context = [0.0] * len(SENDER_FEATURES)
    context[SENDER_FEATURES.index("sender_seen_log")] = math.log1p(12)
    context[SENDER_FEATURES.index("sender_docs_24h")] = 4.0
    context[SENDER_FEATURES.index("sender_label_share_invoice")] = 0.8
    assert monitored("abc", context) == {"sender_seen": 12, "sender_docs_24h": 4.0, "sender_top_label_share": 0.8, "text_length": 3}
    assert "text_length" not in monitored(None, context)


def test_reference_shares_sum_to_one_per_feature():
    rows = [{"text_length": n, "label": label} for n, label in [(10, "cv"), (150, "cv"), (150, "invoice"), (5000, "cv")]]
    shares = reference(rows)
    assert shares["text_length"] == {"0-100": 0.25, "100-300": 0.5, "3000-10000": 0.25}
    assert shares["label"] == {"cv": 0.75, "invoice": 0.25}
    assert list(shares["text_length"]) == [b for b in bins("text_length") if b in shares["text_length"]]  # bins in order


def test_psi_is_zero_for_the_same_mix_and_grows_with_the_shift():
    ref = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert psi(ref, {"a": 500, "b": 300, "c": 200}) == pytest.approx(0.0)
    small, large = psi(ref, {"a": 520, "b": 290, "c": 190}), psi(ref, {"a": 100, "b": 200, "c": 700})
    assert 0 < small < 0.1 < 0.25 < large


def test_psi_counts_an_empty_or_new_bin_with_epsilon_not_infinity():
    value = psi({"a": 1.0}, {"a": 50, "new": 50})
    assert math.isfinite(value) and value > 0.25
    assert math.isnan(psi({"a": 1.0}, {}))
