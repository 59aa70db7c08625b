"""Train/held-out splits without leakage, with warnings about under-represented classes.

`split(docs, strategy, ratio)` first merges documents that must stay together into units:
exact duplicates (same normalised text, or same image bytes), near-duplicate texts (word
3-shingle Jaccard similarity >= `near_threshold`, found with MinHash + LSH, then checked exactly)
and, when asked, documents sharing a `group_by` key (e.g. "sender" or "source"). Near-duplicate
images (re-scans of one page) are not detected: small perceptual hashes could not tell a re-scan
from another page of the same layout here. Whole units then go to one side by the strategy:

* sequential: the latest units (by received_ms, else input order) are held out;
* random: a seeded shuffle;
* stratified: a seeded shuffle within each label (a unit counts under its majority label);
* custom: `custom(doc) -> bool` (True = held out), asked for the unit's first document.

>>> docs = [{"doc_id": str(i), "label": "invoice" if i % 2 else "other", "text": f"document {chr(97 + i) * 2} about things",
...          "content_type": "text", "subject": None} for i in range(20)]
>>> s = split(docs, "stratified", ratio=0.2, seed=1)
>>> len(s.train), len(s.held_out)
(16, 4)
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from models.features import model_text

STRATEGIES = ("sequential", "random", "stratified", "custom")
NUM_PERM, BANDS = 60, 15  # MinHash signature length; LSH bands of 4 rows (~0.5 similarity to become a candidate)
MAX_WORDS = 400  # near-duplicate detection looks at the first words only
_perm_rng = np.random.default_rng(20250301)  # multiply-shift hashes: (a*x + b) mod 2^64, top 32 bits; a odd
_A = _perm_rng.integers(0, 1 << 63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_B = _perm_rng.integers(0, 1 << 63, NUM_PERM, dtype=np.uint64)


@dataclass
class Split:
    """The two sides, and what the split noticed."""

    train: list[dict]
    held_out: list[dict]
    warnings: list[str] = field(default_factory=list)
    units: int = 0  # groups of documents kept together
    merged_docs: int = 0  # documents that share a unit with another (duplicates, groups)


def split(docs: list[dict], strategy: str = "stratified", ratio: float = 0.2, seed: int = 0, group_by: str | None = None,
          custom: Callable[[dict], bool] | None = None, near_threshold: float = 0.8,
          expected_labels: tuple[str, ...] = (), min_per_side: int = 3) -> Split:
    """Split `docs` into train and held-out (about `ratio` of the documents held out)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    if (strategy == "custom") != (custom is not None):
        raise ValueError("pass custom=<function> exactly when strategy='custom'")
    units = leakage_units(docs, group_by, near_threshold)
    held = _choose_held_out(docs, units, strategy, ratio, seed, custom)
    held_ids = {i for u in held for i in units[u]}
    train = [d for i, d in enumerate(docs) if i not in held_ids]
    held_out = [d for i, d in enumerate(docs) if i in held_ids]
    merged = sum(len(u) for u in units if len(u) > 1)
    result = Split(train, held_out, units=len(units), merged_docs=merged)
    result.warnings = _warnings(train, held_out, ratio, expected_labels, min_per_side, units, len(docs))
    return result


def leakage_units(docs: list[dict], group_by: str | None = None, near_threshold: float = 0.8) -> list[list[int]]:
    """Indices of documents that must land on the same side, as lists (singletons included)."""
    parent = list(range(len(docs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first_with: dict[tuple, int] = {}
    for i, doc in enumerate(docs):
        keys = [("exact", exact_key(doc))]
        if group_by and doc.get(group_by) is not None:
            keys.append(("group", doc[group_by]))
        for key in keys:
            if key in first_with:
                union(i, first_with[key])
            else:
                first_with[key] = i
    text_ids = [i for i, d in enumerate(docs) if d.get("content_type") != "image"]
    for i, j in near_duplicate_text_pairs([_words(docs[i]) for i in text_ids], near_threshold):
        union(text_ids[i], text_ids[j])
    groups: dict[int, list[int]] = {}
    for i in range(len(docs)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def exact_key(doc: dict) -> str:
    """Equal for documents that are the same up to case, accents' encoding, spacing, punctuation and digits (model_text)."""
    if doc.get("content_type") == "image" and doc.get("image"):
        return "image:" + hashlib.sha1(doc["image"]).hexdigest()
    text = re.sub(r"\W+", " ", model_text(doc.get("subject"), doc.get("text"))).strip()
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()


def _words(doc: dict) -> list[str]:
    return re.findall(r"\w+", model_text(None, doc.get("text")))[:MAX_WORDS]


def near_duplicate_text_pairs(word_lists: list[list[str]], threshold: float) -> list[tuple[int, int]]:
    """Index pairs whose word 3-shingle sets have Jaccard similarity >= threshold."""
    word_hash: dict[str, int] = {}
    shingles: list[np.ndarray] = []
    for words in word_lists:
        h = np.array([word_hash.setdefault(w, zlib.crc32(w.encode())) for w in words], dtype=np.uint64)
        if len(h) >= 3:
            h = (h[:-2] * np.uint64(1_000_003) + h[1:-1] * np.uint64(7919) + h[2:]) % np.uint64(1 << 32)
        shingles.append(np.unique(h))
    buckets: dict[bytes, list[int]] = {}
    for i, s in enumerate(shingles):
        if len(s) == 0:
            continue
        signature = ((s[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)).min(axis=0)
        for band, rows in enumerate(np.split(signature, BANDS)):
            buckets.setdefault(band.to_bytes(1, "big") + rows.tobytes(), []).append(i)
    pairs, checked = [], set()
    for members in buckets.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                pair = (members[a], members[b])
                if pair in checked:
                    continue
                checked.add(pair)
                x, y = shingles[pair[0]], shingles[pair[1]]
                shared = len(np.intersect1d(x, y, assume_unique=True))
                if shared / (len(x) + len(y) - shared) >= threshold:
                    pairs.append(pair)
    return pairs


def _choose_held_out(docs, units, strategy, ratio, seed, custom) -> list[int]:
    rng = random.Random(seed)
    order = list(range(len(units)))
    if strategy == "custom":
        return [u for u in order if custom(docs[min(units[u])])]
    if strategy == "sequential":
        def when(u: int) -> tuple:
            first = min(units[u])
            received = docs[first].get("received_ms")
            return (received if received is not None else -1, first)
        order.sort(key=when, reverse=True)
        return _take(order, units, ratio * len(docs))
    if strategy == "random":
        rng.shuffle(order)
        return _take(order, units, ratio * len(docs))
    by_label: dict[str, list[int]] = {}
    for u in order:
        counts = Counter(docs[i]["label"] for i in units[u])
        label = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_label.setdefault(label, []).append(u)
    held = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        held += _take(members, units, ratio * sum(len(units[u]) for u in members))
    return held


def _take(order: list[int], units: list[list[int]], target: float) -> list[int]:
    """Units from the front of `order` until about `target` documents are taken."""
    taken, count = [], 0
    for u in order:
        if count + len(units[u]) - target > target - count:  # taking it would miss the target by more
            continue
        taken.append(u)
        count += len(units[u])
    return taken


def _warnings(train, held_out, ratio, expected_labels, min_per_side, units, n) -> list[str]:
    warnings = []
    n_train, n_held = Counter(d["label"] for d in train), Counter(d["label"] for d in held_out)
    for label in sorted(set(n_train) | set(n_held) | set(expected_labels)):
        a, b = n_train[label], n_held[label]
        if a + b == 0:
            warnings.append(f"class {label}: no documents at all")
        elif a < min_per_side or b < min_per_side:
            warnings.append(f"class {label}: badly under-represented ({a} train, {b} held out; want at least {min_per_side} on each side)")
        elif abs(b / (a + b) - ratio) > max(0.1, ratio / 2):
            warnings.append(f"class {label}: {b / (a + b):.0%} held out, expected about {ratio:.0%} (large groups or duplicates moved together)")
    largest = max((len(u) for u in units), default=0)
    if n and largest > 0.05 * n:
        warnings.append(f"one group of {largest} documents ({largest / n:.0%}) must stay on one side; the split ratio can only be approximate")
    return warnings
