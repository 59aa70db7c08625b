"""The micro-batch policy: when a buffer of documents is scored. Plain Python, no pyflink.

A buffer is scored when it holds `batch_size` documents, when its oldest document has waited
`max_delay_ms`, or when a bounded input ends (the caller's end-of-input signal). The policy
keeps only counts and deadlines per buffer key; the documents themselves live wherever the
caller keeps them (Flink list state in the scoring job, a list in the benchmark's peer), so
both run exactly this policy.

After a restore the policy knows nothing of a buffer that the caller's state still holds:
`added` then asks the caller to count it (`recount`), once.

>>> batcher = MicroBatcher(batch_size=3, max_delay_ms=200)
>>> batcher.added(0, now_ms=1_000)             # the first document starts the clock
Step(flush=False, timer_ms=1200)
>>> batcher.added(0, now_ms=1_050), batcher.wait_ms(0, now_ms=1_050)
(Step(flush=False, timer_ms=None), 150)
>>> batcher.added(0, now_ms=1_060)             # full
Step(flush=True, timer_ms=None)
>>> batcher.flushed(0); batcher.size(0)
0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, NamedTuple


class Step(NamedTuple):
    """What the caller does after adding a document: score the buffer now, and/or set a timer."""

    flush: bool
    timer_ms: int | None  # register a timer for this time (only for a buffer's first document)


@dataclass
class MicroBatcher:
    """Size-or-deadline batching per buffer key."""

    batch_size: int
    max_delay_ms: int
    _sizes: dict = field(default_factory=dict, repr=False)
    _oldest_ms: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.batch_size < 1 or self.max_delay_ms < 0:
            raise ValueError(f"batch_size must be >= 1 and max_delay_ms >= 0, got {self.batch_size} and {self.max_delay_ms}")

    def added(self, key: Hashable, now_ms: int, recount: Callable[[], int] | None = None) -> Step:
        """One document was added to `key`'s buffer (already stored by the caller).

        `recount` returns how many documents the caller's buffer holds (the new one included);
        it is called only when this policy has no count for `key` (a fresh or restored worker).
        """
        known = self._sizes.get(key)
        size = (recount() if recount is not None else 1) if known is None else known + 1
        self._sizes[key] = size
        timer = None
        if size == 1 or key not in self._oldest_ms:
            self._oldest_ms[key] = now_ms
            timer = now_ms + self.max_delay_ms
        return Step(flush=size >= self.batch_size, timer_ms=timer)

    def size(self, key: Hashable) -> int:
        return self._sizes.get(key) or 0

    def wait_ms(self, key: Hashable, now_ms: int) -> int | None:
        """How long until `key`'s buffer is due; None when it is empty."""
        if not self.size(key):
            return None
        return max(0, self._oldest_ms[key] + self.max_delay_ms - now_ms)

    def is_due(self, key: Hashable, now_ms: int) -> bool:
        """True when `key`'s buffer holds documents and the oldest has waited long enough."""
        wait = self.wait_ms(key, now_ms)
        return wait is not None and wait == 0

    def flushed(self, key: Hashable) -> None:
        """The caller scored (and cleared) `key`'s buffer."""
        self._sizes[key] = 0
        self._oldest_ms.pop(key, None)
