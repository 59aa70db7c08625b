"""Keys that Flink assigns to given subtasks, so each subtask batches its own documents.

The scoring job re-keys documents by a small integer before micro-batching. A key that
happened to land two upstream subtasks on one downstream subtask would halve throughput, so
we pick, for every subtask, the smallest integer key that Flink routes to it. PyFlink's
key_by hands Java the key wrapped in a one-field Row, whose hashCode is 62 + the Integer's
own (measured: tests/flink/test_sharding.py checks it against the JVM); Flink hashes that with
murmur3 into one of `max_parallelism` key groups, and key groups are split into contiguous
ranges per subtask (`KeyGroupRangeAssignment`).

>>> shard_keys(1)
[0]
"""

from __future__ import annotations

from functools import lru_cache

MAX_PARALLELISM = 128  # the jobs set this explicitly, so the mapping is stable


def _i32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _rotl(x: int, r: int) -> int:
    x &= 0xFFFFFFFF
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def murmur_hash(code: int) -> int:
    """org.apache.flink.util.MathUtils.murmurHash(int)."""
    code = _i32(code * 0xCC9E2D51)
    code = _rotl(code, 15)
    code = _i32(code * 0x1B873593)
    code = _rotl(code, 13)
    code = _i32(code * 5 + 0xE6546B64)
    code ^= 4
    code &= 0xFFFFFFFF  # bitMix, on unsigned 32 bits
    code ^= code >> 16
    code = (code * 0x85EBCA6B) & 0xFFFFFFFF
    code ^= code >> 13
    code = (code * 0xC2B2AE35) & 0xFFFFFFFF
    code ^= code >> 16
    code = _i32(code)
    if code >= 0:
        return code
    return -code if code != -(1 << 31) else 0


def row_hash(key: int) -> int:
    """Java's hashCode of the Row(key) that PyFlink's key_by builds around an INT key."""
    return _i32(62 + key)


def subtask_of(key: int, parallelism: int, max_parallelism: int = MAX_PARALLELISM) -> int:
    """The subtask index Flink routes a Python INT key (key_by(..., Types.INT())) to."""
    key_group = murmur_hash(row_hash(key)) % max_parallelism
    return key_group * parallelism // max_parallelism


@lru_cache(maxsize=None)
def shard_keys(parallelism: int, max_parallelism: int = MAX_PARALLELISM) -> list[int]:
    """keys[i] is the smallest non-negative integer key that Flink routes to subtask i."""
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < parallelism:
        keys.setdefault(subtask_of(candidate, parallelism, max_parallelism), candidate)
        candidate += 1
    return [keys[i] for i in range(parallelism)]
