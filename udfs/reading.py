"""Reading a routed scan before it is scored: its layout features and its OCR text, decoded once.

    routed scan --ScanReader.read--> ReadScan(layout features of page 1, Reading of pages 1..cap)

`ReadingPool` keeps several engines reading side by side (tesserocr lets go of the GIL while
Tesseract reads), so a document need not wait behind the scans read before it.

"Better wrong than late": a scan that waited longer than `OcrConfig.max_wait_ms` since the router
is not read, and a page over the engine's timeout stops the reading; in both cases (and when the
engine fails, reads nothing, or reading is switched off) the Reading says why and the layout
model decides that scan. No pyflink here; udfs/adapters/scoring.py runs it in its own operator.
"""

from __future__ import annotations

import io
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.image_features import image_features
from models.ocr import OFF, WAITED_TOO_LONG, OcrCache, OcrConfig, PageReader, Reading, not_read


@dataclass(frozen=True)
class ReadScan:
    """What the sender features and the scorer need of a scan: small (no pixels)."""

    layout: np.ndarray  # image_features of the first page
    reading: Reading


class ScanReader:
    """Reads scans with one loaded engine (`enabled=False`: layout only, every Reading is OFF)."""

    def __init__(self, config: OcrConfig, enabled: bool = True, cache_dir: str | None = None):
        self.config, self.enabled = config, enabled
        self.reader = PageReader(config, OcrCache(cache_dir) if cache_dir else None) if enabled else None
        self.engine = self.reader.engine if self.reader else "none"

    def read(self, routed: dict, now_ms: int) -> ReadScan:
        """The scan's layout features and reading. Raises when the first page is no image."""
        pages = [routed["image"], *routed.get("pages", [])]
        first = Image.open(io.BytesIO(pages[0]))
        first.load()  # decoded once, for the layout features and (on a cache miss) for OCR
        layout = image_features(first)
        if not self.enabled:
            return ReadScan(layout, not_read(OFF, len(pages), self.engine, "OCR is switched off: the layout model decides"))
        waited = now_ms - routed["routed_ms"]
        if waited > self.config.max_wait_ms:
            return ReadScan(layout, not_read(WAITED_TOO_LONG, len(pages), self.engine,
                                             f"waited {waited / 1000:.1f} s since routing, more than the bound of {self.config.max_wait_ms / 1000:.1f} s"))
        return ReadScan(layout, self.reader.read(pages, decoded={0: first}))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class ReadingPool:
    """`engines` ScanReaders, each on a thread of its own (Tesseract's API object serves one thread;
    tesserocr lets go of the GIL while it reads, so the engines use a core each). A scan goes to the
    engine with the fewest unfinished scans; at most `capacity` (default twice the engines) are
    unfinished, and `submit` waits for room first: the back-pressure of a full pool."""

    def __init__(self, config: OcrConfig, enabled: bool = True, cache_dir: str | None = None, engines: int = 1,
                 capacity: int | None = None):
        if engines < 1:
            raise ValueError(f"a reading pool needs at least one engine, not {engines}")
        self.capacity = capacity or 2 * engines
        self.threads = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tesseract-{i}") for i in range(engines)]
        # each engine is made on its thread: the thread-mode task thread is not one Python started (see adapters)
        self.readers = [thread.submit(ScanReader, config, enabled, cache_dir).result() for thread in self.threads]
        self.engine = self.readers[0].engine
        self.unfinished: list[set[Future]] = [set() for _ in self.threads]

    def submit(self, routed: dict, now_ms: int) -> Future:
        """A future of `ScanReader.read(routed, now_ms)` on the least busy engine (waits while the pool is full)."""
        while self.in_flight() >= self.capacity:
            wait(set().union(*self.unfinished), return_when=FIRST_COMPLETED)
        engine = min(range(len(self.threads)), key=lambda i: len(self.unfinished[i]))
        future = self.threads[engine].submit(self.readers[engine].read, routed, now_ms)
        self.unfinished[engine].add(future)
        return future

    def in_flight(self) -> int:
        """Scans submitted and not read yet."""
        for pending in self.unfinished:
            pending.difference_update([future for future in pending if future.done()])
        return sum(len(pending) for pending in self.unfinished)

    def close(self) -> None:
        for thread, reader in zip(self.threads, self.readers):
            thread.submit(reader.close).result()
            thread.shutdown()
