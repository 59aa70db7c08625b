"""Reading a routed scan before it is scored: its layout features and its OCR text, decoded once.

    routed scan --ScanReader.read--> ReadScan(layout features of page 1, Reading of pages 1..cap)

`ReadingPool` keeps several engines reading side by side off one queue (tesserocr lets go of the GIL
while Tesseract reads), so a document need not wait behind the scans read before it.

"Better wrong than late": a scan that waited longer than `OcrConfig.max_wait_ms` since the router
is not read, and a page over the engine's timeout stops the reading; in both cases (and when the
engine fails, reads nothing, or reading is switched off) the Reading says why and the layout
model decides that scan. No pyflink here; udfs/adapters/scoring.py runs it in its own operator.
"""

from __future__ import annotations

import io
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
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
    tesserocr lets go of the GIL while it reads, so the engines use a core each), taking scans from
    one queue in the order submitted: whichever engine is free first reads the next scan, so a scan
    never waits behind a long one while another engine idles. At most `capacity` (default twice the
    engines) are unfinished, and `submit` waits for room first: the back-pressure of a full pool."""

    def __init__(self, config: OcrConfig, enabled: bool = True, cache_dir: str | None = None, engines: int = 1,
                 capacity: int | None = None):
        if engines < 1:
            raise ValueError(f"a reading pool needs at least one engine, not {engines}")
        self.capacity = capacity or 2 * engines
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.unfinished: set[Future] = set()
        # each engine is made on its thread: the thread-mode task thread is not one Python started (see adapters)
        started = [Future() for _ in range(engines)]
        self.threads = [threading.Thread(target=self._serve, args=(config, enabled, cache_dir, ready), name=f"tesseract-{i}", daemon=True)
                        for i, ready in enumerate(started)]
        for thread in self.threads:
            thread.start()
        try:
            self.engine = [ready.result() for ready in started][0]
        except BaseException:  # an engine that cannot load (no language data): stop the others, say why
            self.close()
            raise

    def _serve(self, config: OcrConfig, enabled: bool, cache_dir: str | None, ready: Future) -> None:
        """An engine's thread: load the engine, then read scans off the queue until told to stop (None)."""
        try:
            reader = ScanReader(config, enabled, cache_dir)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(reader.engine)
        try:
            while (item := self.queue.get()) is not None:
                future, routed, now_ms = item
                try:
                    future.set_result(reader.read(routed, now_ms))
                except BaseException as exc:  # the scan's own failure: its future carries it to the operator
                    future.set_exception(exc)
        finally:
            reader.close()

    def submit(self, routed: dict, now_ms: int) -> Future:
        """A future of `ScanReader.read(routed, now_ms)` on the first engine free (waits while the pool is full)."""
        while self.in_flight() >= self.capacity:
            wait(self.unfinished, return_when=FIRST_COMPLETED)
        future: Future = Future()
        future.set_running_or_notify_cancel()
        self.unfinished.add(future)
        self.queue.put((future, routed, now_ms))
        return future

    def in_flight(self) -> int:
        """Scans submitted and not read yet."""
        self.unfinished.difference_update([future for future in self.unfinished if future.done()])
        return len(self.unfinished)

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
