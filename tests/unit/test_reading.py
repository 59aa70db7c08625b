"""Reading scans (models.ocr, udfs.reading) with the real Tesseract engine, and what a department
receives (udfs.scoring.department_document)."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw, ImageFont

from models.ocr import FAILED, NO_TEXT, OFF, OVER_BUDGET, PAGE_SEPARATOR, READ, WAITED_TOO_LONG, OcrCache, OcrConfig, PageReader
from schemas import codec
from udfs.dead_letters import SourceRecord
from udfs.reading import ReadingPool, ScanReader
from udfs.scoring import PendingDocument, SenderFeatures, department_document
from models.features import SenderHistory

NOW_MS = 1_750_000_000_000
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def page(*lines: str, size=(1240, 1754)) -> bytes:
    """A clean page with `lines` in a large font, as the router would route it (gray PNG)."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.truetype(FONT, 44)
    except OSError:
        font = ImageFont.load_default(44)
    for i, line in enumerate(lines):
        draw.text((120, 160 + 80 * i), line, fill=0, font=font)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def routed_scan(pages: list[bytes], routed_ms: int = NOW_MS, doc_id: str = "scan-1") -> dict:
    return {"doc_id": doc_id, "received_ms": routed_ms - 50, "channel": "SCANNER", "sender": "scanner@x.example", "subject": None,
            "content_type": "IMAGE", "text": None, "image": pages[0], "pages": pages[1:], "mime_type": "image/png",
            "original_mime_type": "image/tiff", "page_count": len(pages), "headers": {"X-Scanner": "3"}, "language": None,
            "document_version": 2, "source_topic": "documents", "source_partition": 0, "source_offset": 1, "routed_ms": routed_ms,
            "router_job": "router", "router_version": "1.1.0", "text_cleaning": None, "image_cleaning": None, "notes": []}


@pytest.fixture(scope="module")
def reader():
    scans = ScanReader(OcrConfig())
    yield scans
    scans.close()


def test_every_page_of_a_scan_is_read_in_order(reader):
    pages = [page("INVOICE 4711", "Total due 1,250.00 EUR"), page("Page two: delivery terms"), page("Page three: bank details")]
    scan = reader.read(routed_scan(pages), NOW_MS)
    assert scan.reading.status == READ and scan.reading.decides
    assert (scan.reading.pages_read, scan.reading.pages_routed) == (3, 3)
    texts = scan.reading.text.split(PAGE_SEPARATOR)
    assert "INVOICE 4711" in texts[0] and "two" in texts[1] and "three" in texts[2]
    assert scan.layout.shape == (74,)


def test_a_page_over_the_engines_timeout_hands_the_scan_to_the_layout_model():
    over = ScanReader(OcrConfig(page_timeout_ms=1))
    scan = over.read(routed_scan([page(*[f"line {i} of a long letter about an invoice" for i in range(18)])]), NOW_MS)
    assert scan.reading.status == OVER_BUDGET and not scan.reading.decides
    assert "page 1 took more than the OCR budget of 1 ms" == scan.reading.reason and scan.reading.text == ""
    assert scan.layout.shape == (74,)  # the layout model still has what it needs


def test_a_scan_that_waited_too_long_is_not_read(reader):
    scan = reader.read(routed_scan([page("INVOICE")], routed_ms=NOW_MS - 120_000), NOW_MS)
    assert scan.reading.status == WAITED_TOO_LONG and scan.reading.pages_read == 0
    assert "waited 120.0 s since routing" in scan.reading.reason


def test_reading_switched_off_reads_nothing():
    scan = ScanReader(OcrConfig(), enabled=False).read(routed_scan([page("INVOICE")]), NOW_MS)
    assert scan.reading.status == OFF and scan.reading.pages_read == 0


def test_a_blank_page_reads_as_no_text(reader):
    assert reader.read(routed_scan([page()]), NOW_MS).reading.status == NO_TEXT


def test_pages_beyond_the_cap_are_not_read():
    scan = ScanReader(OcrConfig(max_pages=1)).read(routed_scan([page("INVOICE"), page("second page")]), NOW_MS)
    assert (scan.reading.status, scan.reading.pages_read, scan.reading.pages_routed) == (READ, 1, 2)


class RefusingEngine:
    def SetImage(self, image):
        raise RuntimeError("leptonica said no")


def test_a_reading_pool_reads_every_scan_as_one_engine_does(reader):
    scans = [routed_scan([page(f"INVOICE {number}", f"Order {number * 7}")], doc_id=f"scan-{number}") for number in range(6)]
    pool = ReadingPool(OcrConfig(), engines=2)
    try:
        futures = [pool.submit(scan, NOW_MS) for scan in scans]
        read = [future.result(timeout=60) for future in futures]
    finally:
        pool.close()
    alone = [reader.read(scan, NOW_MS) for scan in scans]
    assert [r.reading.text for r in read] == [r.reading.text for r in alone] and all(r.reading.status == READ for r in read)
    assert all((r.layout == a.layout).all() for r, a in zip(read, alone))


def test_a_reading_pool_holds_no_more_than_its_capacity():
    pool = ReadingPool(OcrConfig(), engines=2, capacity=3)
    try:
        first, second = (pool.submit(routed_scan([page("A page that takes a while to read")] * 3), NOW_MS) for _ in range(2))
        assert pool.in_flight() == 2  # a page takes ~100 ms
        for _ in range(4):
            pool.submit(routed_scan([page("INVOICE")]), NOW_MS)
            assert pool.in_flight() <= 3
        assert first.result(timeout=60).reading.pages_read == 3 and second.result(timeout=60).reading.status == READ
    finally:
        pool.close()
    with pytest.raises(ValueError, match="at least one engine"):
        ReadingPool(OcrConfig(), engines=0)


def test_the_engine_free_first_reads_the_next_scan_while_another_reads_a_long_one():
    long_letter = routed_scan([page(*[f"line {i} of a long letter about an invoice" for i in range(18)])] * 4, doc_id="long")
    pool = ReadingPool(OcrConfig(), engines=2)
    try:
        long = pool.submit(long_letter, NOW_MS)
        short = [pool.submit(routed_scan([page(f"INVOICE {number}")], doc_id=f"short-{number}"), NOW_MS) for number in range(3)]
        assert all(future.result(timeout=60).reading.status == READ for future in short)
        assert not long.done()  # four long pages on one engine; the three short scans queued behind none of them
        assert long.result(timeout=60).reading.pages_read == 4
    finally:
        pool.close()


def test_a_pool_whose_engines_cannot_load_says_why(tmp_path):
    from models.ocr import OcrUnavailable

    with pytest.raises(OcrUnavailable, match="tesseract-ocr-eng"):
        ReadingPool(OcrConfig(tessdata=str(tmp_path)), engines=2)


def test_an_engine_error_fails_only_that_scan():
    scans = ScanReader(OcrConfig())
    scans.reader.api = RefusingEngine()
    scan = scans.read(routed_scan([page("INVOICE")]), NOW_MS)
    assert scan.reading.status == FAILED and scan.reading.reason == "page 1: RuntimeError: leptonica said no"


def test_the_cache_answers_a_page_read_before(tmp_path):
    data = page("PURCHASE ORDER 77")
    first = PageReader(OcrConfig(), OcrCache(tmp_path)).read([data])
    again = PageReader(OcrConfig(), OcrCache(tmp_path))
    again.api = None  # any engine call would raise: the page must come from the cache
    assert again.read([data]).text == first.text and "PURCHASE ORDER 77" in first.text
    assert len(list(tmp_path.glob("*/*.txt"))) == 1


def test_missing_language_data_says_what_to_install():
    from models.ocr import OcrUnavailable

    with pytest.raises(OcrUnavailable, match="tesseract-ocr-eng"):
        OcrConfig(languages="xxx", tessdata="/nonexistent").data_dir()


def test_a_read_scan_is_decided_by_the_scan_model_and_an_unread_one_by_the_layout_model(reader):
    routed = routed_scan([page("INVOICE 4711")])
    source = SourceRecord(codec.encode("routed_document", routed), "routed.scans", 0, 3)
    read = SenderFeatures(None).observe(SenderHistory(), routed, source, reader.read(routed, NOW_MS))
    assert read.kind == "scan" and "INVOICE 4711" in read.text
    unread = SenderFeatures(None).observe(SenderHistory(), routed, source, ScanReader(OcrConfig(), enabled=False).read(routed, NOW_MS))
    assert unread.kind == "image" and unread.text is None and unread.reading.status == OFF


def test_a_department_receives_the_document_as_routed_with_its_reading_and_decision(reader):
    pages = [page("INVOICE 4711"), page("page two")]
    routed = routed_scan(pages)
    scan = reader.read(routed, NOW_MS)
    prediction = {"doc_id": "scan-1", "department": "finance", "label": "invoice", "probabilities": {"invoice": 0.8, "other": 0.2},
                  "model_name": "mailroom-scan", "model_version": "2", "slot": "champion", "fallback_reason": None,
                  "scored_ms": NOW_MS + 10, "latency_ms": 60}
    record = codec.decode(codec.encode("department_document", department_document(routed, prediction, scan.reading, 0.8))).record
    assert record["image"] == pages[0] and record["pages"] == pages[1:]  # the bytes as routed
    assert record["ocr"]["status"] == READ and "INVOICE 4711" in record["ocr"]["text"] and record["ocr"]["pages_read"] == 2
    assert record["decision"]["model_name"] == "mailroom-scan" and record["decision"]["confidence"] == 0.8
    assert (record["department"], record["headers"], record["sender"]) == ("finance", {"X-Scanner": "3"}, "scanner@x.example")


def test_a_text_document_arrives_byte_for_byte():
    text = "Dear team,\n\nplease find our invoice 2024-117 attached — Grüße, Anna"
    routed = {**routed_scan([b""]), "content_type": "TEXT", "image": None, "pages": [], "text": text, "subject": "Invoice",
              "mime_type": "text/plain", "channel": "EMAIL"}
    prediction = {"doc_id": "scan-1", "department": "finance", "label": "invoice", "probabilities": {"invoice": 1.0},
                  "model_name": "mailroom-text", "model_version": "1", "slot": "champion", "fallback_reason": None, "scored_ms": 1,
                  "latency_ms": 1}
    record = codec.decode(codec.encode("department_document", department_document(routed, prediction, None, 1.0))).record
    assert record["text"] == text and record["ocr"] is None and record["image"] is None and record["subject"] == "Invoice"


def test_pending_document_kind():
    common = dict(doc_id="d", sender="s", image_features=None, received_ms=0, features=[], source=None)
    assert PendingDocument(content_type="TEXT", text="x", **common).kind == "text"
    assert PendingDocument(content_type="IMAGE", text=None, **common).kind == "image"
