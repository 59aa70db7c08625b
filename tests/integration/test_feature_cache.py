"""The Redis feature mirror against a real Redis that goes away and comes back."""

from __future__ import annotations

import pytest

from config.settings import Settings
from mailroom.stack import Redis
from schemas.redis_keys import mirror_stats_key, sender_key
from udfs.feature_cache import FeatureMirror


@pytest.fixture
def private_redis(tmp_path):
    settings = Settings.from_env({}, run_dir=tmp_path / "run", redis_port=26679)
    redis = Redis(settings)
    redis.start()
    yield settings, redis
    redis.stop()


def test_pipelined_writes_with_ttl_and_prewarm(private_redis):
    settings, _ = private_redis
    mirror = FeatureMirror(lambda: settings.redis_client(socket_timeout=1), "t1", ttl_s=120, flush_size=50, flush_interval_ms=10**9)
    for i in range(120):
        mirror.put(f"s{i % 60}@x", {"docs": str(i)})
    mirror.flush()
    assert mirror.stats.flushes == 3  # 2 full buffers + the final flush: pipelines, not per-record calls
    client = settings.redis_client()
    assert client.hget(sender_key("t1", "s5@x"), "docs") == b"65"  # newest value per sender won
    assert 0 < client.ttl(sender_key("t1", "s5@x")) <= 120
    assert mirror.fetch("s5@x") == {"docs": "65"} and mirror.fetch("nobody@x") is None


def test_outage_is_counted_once_and_pending_writes_survive(private_redis, caplog):
    settings, redis = private_redis
    mirror = FeatureMirror(lambda: settings.redis_client(socket_timeout=1, socket_connect_timeout=1), "t2", ttl_s=300,
                           flush_size=10**9, flush_interval_ms=10**9, retry_after_ms=0)
    mirror.put("a@x", {"docs": "1"})
    assert mirror.flush()

    redis.stop()
    for i in range(5):
        mirror.put(f"b{i}@x", {"docs": str(i)})
        assert mirror.flush() is False  # never raises: scoring goes on
    assert mirror.redis_down and mirror.stats.outages == 1 and mirror.stats.failed_flushes == 5
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert mirror.fetch("a@x") is None

    redis.start()
    assert mirror.flush()  # the pending writes go out when Redis is back
    assert not mirror.redis_down
    client = settings.redis_client()
    assert [client.hget(sender_key("t2", f"b{i}@x"), "docs") for i in range(5)] == [str(i).encode() for i in range(5)]
    assert client.hget(mirror_stats_key("t2"), "outages") == b"1"
