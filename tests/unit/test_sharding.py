"""Shard keys: one per subtask, distinct, stable."""

from udfs.sharding import murmur_hash, shard_keys, subtask_of


def test_one_key_per_subtask_each_routed_to_its_own():
    for parallelism in (1, 2, 3, 4, 6, 8):
        keys = shard_keys(parallelism)
        assert len(set(keys)) == parallelism
        assert [subtask_of(k, parallelism) for k in keys] == list(range(parallelism))


def test_murmur_hash_is_non_negative_and_spreads():
    hashes = [murmur_hash(k) for k in range(-500, 500)]
    assert min(hashes) >= 0 and len(set(h % 128 for h in hashes)) > 100
