"""Reading scans: Tesseract (Debian's language data) through tesserocr, the engine kept loaded.

    reader = PageReader(OcrConfig())                 # loads the engine once (per operator, per process)
    reading = reader.read([png_page_1, png_page_2])  # Reading(status="READ", text="...", pages_read=2, ...)

One `PageReader` serves one thread at a time (Tesseract's API object is not thread-safe). The
engine runs single-threaded (`OMP_THREAD_LIMIT=1`, set before the library loads), so parallelism
comes from more operators and TaskManagers, not from threads fighting over a core. Every page gets
the engine's own timeout (`page_timeout_ms`); a page over it, an engine error or a page with no
legible text gives a Reading whose status says so, and the layout model decides that scan.

`OcrCache` keeps what was read by the page's content hash (sha256 of its PNG bytes) and the
engine signature (version, languages, page segmentation, inverted lines), one small file per page, so training
runs and replays do not read the same page twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # before tesserocr loads libtesseract: one core per engine, deliberately

READ, OVER_BUDGET, WAITED_TOO_LONG, FAILED, NO_TEXT, OFF = "READ", "OVER_BUDGET", "WAITED_TOO_LONG", "FAILED", "NO_TEXT", "OFF"
READING_STATUSES = (READ, OVER_BUDGET, WAITED_TOO_LONG, FAILED, NO_TEXT, OFF)
PAGE_SEPARATOR = "\f"
TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata", "/usr/share/tessdata")
MIN_LEGIBLE_CHARS = 3  # fewer letters or digits than this on every page: nothing was read


class OcrUnavailable(RuntimeError):
    """The engine or its language data is missing; the message says what to install."""


@dataclass(frozen=True)
class OcrConfig:
    """How scans are read. Picklable: the scoring job passes it to its workers."""

    languages: str = "eng"  # Tesseract language codes joined by "+" (installed: eng, deu, fra)
    page_timeout_ms: int = 5_000  # the engine's own timeout per page; past it the layout model decides
    max_pages: int = 5  # pages read per scan (the router delivers up to its own cap)
    max_wait_ms: int = 60_000  # a scan that waited longer than this since routing is not read: the layout model decides
    page_segmentation: int = 3  # Tesseract's --psm: 3 = fully automatic page segmentation
    tessdata: str | None = None  # None: TESSDATA_PREFIX, else Debian's directory
    engines: int = 2  # engines per scan-reading subtask, each on a thread of its own, reading side by side
    poll_ms: int = 5  # how often the scoring job looks for a scan its engines have finished
    retry_inverted: bool = True  # Tesseract's tessedit_do_invert: read a poorly read line again as white on black

    @property
    def signature(self) -> str:
        """What, besides the engine's version, decides the text a page reads as (the cache key's part)."""
        return f"{self.languages} psm{self.page_segmentation}" + ("" if self.retry_inverted else " no-invert")

    def data_dir(self) -> str:
        candidates = [self.tessdata] if self.tessdata else [os.environ.get("TESSDATA_PREFIX"), *TESSDATA_DIRS]
        for directory in filter(None, candidates):
            if all((Path(directory) / f"{lang}.traineddata").is_file() for lang in self.languages.split("+")):
                return str(directory)
        raise OcrUnavailable(f"no Tesseract language data for {self.languages} in {', '.join(filter(None, candidates))}: "
                             "install Debian's tesseract-ocr-eng (and -deu, -fra), e.g. with `make setup`")


@dataclass(frozen=True)
class Reading:
    """What reading one scan gave. `text` joins the pages with PAGE_SEPARATOR."""

    status: str  # READ | OVER_BUDGET | FAILED | NO_TEXT (and WAITED_TOO_LONG | OFF, decided before reading)
    text: str
    pages_read: int
    pages_routed: int
    milliseconds: float
    engine: str
    reason: str | None = None

    @property
    def decides(self) -> bool:
        """Whether the scan model (the OCR text) decides; otherwise the layout model does."""
        return self.status == READ

    def as_record(self) -> dict:
        """The department record's `ocr` field."""
        return {"status": self.status, "text": self.text, "pages_read": self.pages_read, "pages_routed": self.pages_routed,
                "engine": self.engine, "milliseconds": self.milliseconds, "reason": self.reason}


def not_read(status: str, pages_routed: int, engine: str, reason: str) -> Reading:
    """A scan that was not read at all (WAITED_TOO_LONG, OFF)."""
    return Reading(status, "", 0, pages_routed, 0.0, engine, reason)


def legible(text: str) -> bool:
    return sum(c.isalnum() for c in text) >= MIN_LEGIBLE_CHARS


class PageReader:
    """One loaded Tesseract engine; `read` a scan's pages (PNG bytes or PIL images)."""

    def __init__(self, config: OcrConfig, cache: "OcrCache | None" = None):
        try:
            import tesserocr
        except ImportError as exc:  # pragma: no cover - the lock installs it
            raise OcrUnavailable(f"tesserocr is not installed ({exc}); run `make setup`") from None
        self.config, self.cache = config, cache
        self.api = tesserocr.PyTessBaseAPI(path=config.data_dir(), lang=config.languages, psm=config.page_segmentation)
        if not config.retry_inverted:
            self.api.SetVariable("tessedit_do_invert", "0")
        self.engine = f"tesseract {tesserocr.tesseract_version().split()[1]} {config.signature}"

    def read(self, pages: list, decoded: dict | None = None) -> Reading:
        """Read up to `max_pages` pages (PNG bytes or PIL images; `decoded` maps a page's index to
        its already decoded image); the first page over the timeout or failing stops the reading."""
        started = time.perf_counter()
        texts, routed, decoded = [], len(pages), decoded or {}
        for number, page in enumerate(pages[:self.config.max_pages], start=1):
            try:
                text = self.read_page(page, decoded.get(number - 1))
            except PageOverBudget:
                return self._reading(OVER_BUDGET, texts, routed, started,
                                     f"page {number} took more than the OCR budget of {self.config.page_timeout_ms} ms")
            except Exception as exc:  # a page Leptonica cannot take, an engine error: this scan only
                return self._reading(FAILED, texts, routed, started, f"page {number}: {type(exc).__name__}: {str(exc)[:200]}")
            texts.append(text)
        if not any(legible(t) for t in texts):
            return self._reading(NO_TEXT, texts, routed, started, f"no legible text on {len(texts)} page(s)")
        return self._reading(READ, texts, routed, started, None)

    def read_page(self, page, image=None) -> str:
        """The text of one page (from the cache when it holds the page). Raises PageOverBudget."""
        data = page if isinstance(page, (bytes, bytearray)) else None
        if self.cache is not None and data is not None:
            cached = self.cache.get(data, self.engine)
            if cached is not None:
                return cached
        from PIL import Image

        if image is None:
            image = Image.open(io.BytesIO(data)) if data is not None else page
        self.api.SetImage(image)
        if not self.api.Recognize(timeout=self.config.page_timeout_ms):
            raise PageOverBudget()
        text = self.api.GetUTF8Text().strip()
        if self.cache is not None and data is not None:
            self.cache.put(data, self.engine, text)
        return text

    def _reading(self, status: str, texts: list[str], routed: int, started: float, reason: str | None) -> Reading:
        return Reading(status, PAGE_SEPARATOR.join(texts) if status == READ else "", len(texts), routed,
                       round((time.perf_counter() - started) * 1000, 1), self.engine, reason)

    def close(self) -> None:
        self.api.End()


class PageOverBudget(Exception):
    """Tesseract stopped a page at its timeout."""


class OcrCache:
    """Page texts by sha256(PNG bytes) and engine signature, one file per page under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, data: bytes, engine: str) -> Path:
        key = hashlib.sha256(engine.encode() + b"\0" + bytes(data)).hexdigest()
        return self.root / key[:2] / f"{key}.txt"

    def get(self, data: bytes, engine: str) -> str | None:
        try:
            return self._path(data, engine).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def put(self, data: bytes, engine: str, text: str) -> None:
        path = self._path(data, engine)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)  # atomic: readers never see half a file
