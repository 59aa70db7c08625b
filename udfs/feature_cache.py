"""The Redis feature cache: per-sender features mirrored from Flink state, pipelined.

Flink keyed state is the source of truth; Redis is a low-latency copy for other services and a
way for a fresh job to pre-warm senders it has no state for. Writes are buffered (newest value
per sender wins) and sent in one pipeline per flush, never one call per record. When Redis is
down, scoring goes on: the outage is counted and logged once, pending writes are kept (bounded)
and sent when Redis answers again.

>>> mirror = FeatureMirror(client_factory=lambda: None, namespace="t", ttl_s=60)
>>> mirror.key("a@example.com")
't:sender:a@example.com'
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from schemas.redis_keys import mirror_stats_key, sender_key

log = logging.getLogger("mailroom.feature_cache")


@dataclass
class MirrorStats:
    """What the mirror did; exposed as Flink metrics by the adapter."""

    written: int = 0  # sender hashes written to Redis
    flushes: int = 0  # pipelines sent
    outages: int = 0  # times Redis went from answering to not answering
    failed_flushes: int = 0  # pipelines that failed (while Redis was down)
    dropped: int = 0  # pending writes dropped because the pending buffer was full
    prewarm_hits: int = 0  # senders restored from Redis


@dataclass
class FeatureMirror:
    """Buffers per-sender feature mappings and writes them to Redis in pipelines.

    `client_factory` makes a redis-py client (called lazily, again after an outage).
    """

    client_factory: Callable[[], object]
    namespace: str
    ttl_s: int
    flush_size: int = 256
    flush_interval_ms: int = 500
    max_pending: int = 100_000
    retry_after_ms: int = 1_000
    clock: Callable[[], float] = time.monotonic
    stats: MirrorStats = field(default_factory=MirrorStats)
    _pending: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _client: object = field(default=None, repr=False)
    _down_since: float | None = field(default=None, repr=False)
    _last_flush: float = field(default=0.0, repr=False)

    def key(self, sender: str) -> str:
        return sender_key(self.namespace, sender)

    @property
    def redis_down(self) -> bool:
        return self._down_since is not None

    def put(self, sender: str, mapping: dict[str, str]) -> None:
        """Queue the newest features of `sender`; flush when the buffer or the interval is full."""
        self._pending.pop(sender, None)
        self._pending[sender] = mapping
        if len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.stats.dropped += 1
        if len(self._pending) >= self.flush_size or (self.clock() - self._last_flush) * 1000 >= self.flush_interval_ms:
            self.flush()

    def flush(self) -> bool:
        """Send pending writes in one pipeline; False if Redis did not take them (kept for later)."""
        self._last_flush = self.clock()
        if not self._pending or not self._may_try():
            return not self._pending
        try:
            pipe = self._connection().pipeline(transaction=False)
            for sender, mapping in self._pending.items():
                key = self.key(sender)
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.ttl_s)
            pipe.hset(mirror_stats_key(self.namespace), mapping=self._stats_mapping())  # the outage record, for operators
            pipe.expire(mirror_stats_key(self.namespace), self.ttl_s)
            pipe.execute()
        except Exception as exc:  # redis-py raises ConnectionError, TimeoutError, ...
            self._went_down(exc)
            self.stats.failed_flushes += 1
            return False
        self.stats.written += len(self._pending)
        self.stats.flushes += 1
        self._pending.clear()
        self._came_back()
        return True

    def fetch(self, sender: str) -> dict[str, str] | None:
        """The cached features of `sender` (to pre-warm empty state), or None; never raises."""
        if not self._may_try():
            return None
        try:
            raw = self._connection().hgetall(self.key(sender))
        except Exception as exc:
            self._went_down(exc)
            return None
        self._came_back()
        if not raw:
            return None
        self.stats.prewarm_hits += 1
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _stats_mapping(self) -> dict[str, int]:
        s = self.stats
        return {"written": s.written + len(self._pending), "outages": s.outages, "failed_flushes": s.failed_flushes, "dropped": s.dropped}

    def close(self) -> None:
        self.flush()
        if self._client is not None:
            self._client.close()

    # --- outage handling --------------------------------------------------------------------

    def _connection(self):
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def _may_try(self) -> bool:
        """While Redis is down, try again only every `retry_after_ms`."""
        return self._down_since is None or (self.clock() - self._down_since) * 1000 >= self.retry_after_ms

    def _went_down(self, exc: Exception) -> None:
        if self._down_since is None:
            self.stats.outages += 1
            log.warning("Redis feature cache unavailable (%s): scoring continues from Flink state; "
                        "mirroring paused, %d sender(s) pending", type(exc).__name__, len(self._pending))
        self._down_since = self.clock()

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning("Redis feature cache is back: mirroring resumed")
            self._down_since = None
