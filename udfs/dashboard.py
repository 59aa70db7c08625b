"""Writes the accuracy dashboard hashes to Redis; an outage is logged once and never fatal."""

from __future__ import annotations

import logging

log = logging.getLogger("mailroom.dashboard")


class DashboardWriter:
    """HSET + EXPIRE in one pipeline per write (writes happen once per reported window)."""

    def __init__(self, client, ttl_s: int):
        self.client, self.ttl_s = client, ttl_s
        self.down = False
        self.failed_writes = 0

    def write(self, key: str, mapping: dict[str, str]) -> bool:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl_s)
            pipe.execute()
        except Exception as exc:  # redis-py's ConnectionError, TimeoutError, ...
            self.failed_writes += 1
            if not self.down:
                log.warning("Redis unavailable for the accuracy dashboard (%s); reports still go to Kafka", type(exc).__name__)
            self.down = True
            return False
        if self.down:
            log.warning("Redis is back: accuracy dashboard updated again")
        self.down = False
        return True
