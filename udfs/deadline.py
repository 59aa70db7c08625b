"""The per-batch deadline ("better wrong than late"): a model call gets `deadline_ms`; a call
that outlives it is terminated (onnxruntime's RunOptions.terminate) and the caller serves the
batch another way. Plain Python; the call runs on a worker thread this object owns.

>>> deadline = Deadline(deadline_ms=1_000)
>>> deadline.call(lambda run_options: 42)
42
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, TimeoutError
from dataclasses import dataclass, field
from typing import Callable, TypeVar

T = TypeVar("T")


class MissedDeadline(Exception):
    """The call did not finish within the deadline; it was told to stop."""


@dataclass
class Deadline:
    """Runs `call(run_options)` on a worker thread and waits at most `deadline_ms` for it."""

    deadline_ms: int
    _worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="deadline"), repr=False)

    def call(self, run: Callable[[object], T]) -> T:
        """`run`'s result, or MissedDeadline once the deadline passed (the run is terminated)."""
        import onnxruntime as ort  # imported by a thread Python started (see udfs/adapters/scoring.py), never a task thread

        options = ort.RunOptions()
        future = self._worker.submit(run, options)
        try:
            return future.result(timeout=self.deadline_ms / 1000)
        except TimeoutError:
            options.terminate = True
            raise MissedDeadline(f"missed the {self.deadline_ms} ms deadline") from None

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
