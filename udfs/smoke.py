"""Plain logic of the smoke job: count records in Redis, pass them through unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailroom.settings import Settings


@dataclass
class RedisCounter:
    """Counts what passes through under `mailroom:smoke:<run_id>` (key expires after a day)."""

    settings: Settings
    run_id: str
    _client: object = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"mailroom:smoke:{self.run_id}"

    def open(self) -> None:
        self._client = self.settings.redis_client()

    def count(self, value: bytes) -> bytes:
        pipe = self._client.pipeline()
        pipe.incr(self.key)
        pipe.expire(self.key, 86400)
        pipe.execute()
        return value

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
