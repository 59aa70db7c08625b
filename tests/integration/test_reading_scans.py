"""Scans that read, on the real stack: router and scoring jobs, Tesseract in the scoring job's
scan reader, departments that receive the document itself.

The scans are clean pages rendered here (a scanned invoice, a scanned CV, a scanned letter,
and a three-page TIFF invoice), so the test needs nothing beyond the project."""

from __future__ import annotations

import io
import time

from PIL import Image, ImageDraw, ImageFont

from mailroom.kafkautil import read_topic
from mailroom.produce import DocumentProducer, to_document
from mailroom.submit import run_job
from models.generator import generate
from schemas import codec
from schemas.labels import DEPARTMENTS
from schemas.topics import department_topic_key, topic_name
from udfs.routing import Router, RouterConfig

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PAGES = {  # what a company's scanner sees: unambiguous documents of three classes
    "invoice": "INVOICE No. 2024-117\nBerg Office Supplies GmbH, Hafenstrasse 12, 20457 Hamburg\nBill to: Kestrel Manufacturing Ltd, Bristol\n"
               "Invoice date: 12 March 2025. Customer number: KD-88566\nDescription / Quantity / Unit price / Amount\n"
               "Office chairs, model Ergo 200 / 40 / 125.00 / 5,000.00\nSubtotal 5,000.00. VAT 19% 950.00. Total amount due: 5,950.00 EUR\n"
               "Payment terms: 30 days net. Please transfer the amount to our account, IBAN DE12 2005 0550 1234 5678 90, quoting the invoice number.",
    "job_application": "Curriculum Vitae\nAnna Berg, Lindenweg 4, Bremen, anna.berg@example.org\nApplication for the position of data engineer\n"
                       "Dear hiring team, I am applying for the data engineer position advertised on your website. Please find my CV below.\n"
                       "Professional experience: 2019-2024 software engineer at Nordlicht Systems, building data pipelines in Python and SQL.\n"
                       "Education: MSc Computer Science, University of Hamburg, 2019.\nSkills: Python, SQL, Kafka, Flink. Languages: German, English.\n"
                       "References available on request.",
    "other": "Dear colleagues,\nthe summer party will take place on Friday, 14 June, from 5 pm in the garden behind the canteen.\n"
             "There will be a barbecue and drinks; vegetarian food is available.\n"
             "Please let Maria know by Monday whether you will come and whether you will bring a partner.\n"
             "We look forward to seeing you all there.\nBest regards, the works council",
}


def rendered_page(text: str) -> Image.Image:
    """A clean A4 page at 150 dpi with `text` wrapped to the page."""
    image = Image.new("L", (1240, 1754), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 26)
    y = 120
    for paragraph in text.splitlines():
        words, line = paragraph.split(), ""
        for word in words + [None]:
            if word is not None and draw.textlength(f"{line} {word}", font=font) < 1000:
                line = f"{line} {word}".strip()
                continue
            draw.text((120, y), line, fill=0, font=font)
            y += 38
            line = word or ""
            if y > 1650:
                return image
    return image


def scan_of(label: str, doc_id: str, pages: int = 1) -> dict:
    """PAGES[label] as a scanned document (PNG, or a TIFF of `pages` pages)."""
    text = PAGES[label]
    images = [rendered_page(text)] + [rendered_page(f"Page {n} of {pages}\n{text}") for n in range(2, pages + 1)]
    out = io.BytesIO()
    if pages == 1:
        images[0].save(out, "PNG")
    else:
        images[0].save(out, "TIFF", save_all=True, append_images=images[1:], compression="tiff_deflate")
    return {"doc_id": doc_id, "received_ms": int(time.time() * 1000), "channel": "SCANNER", "sender": f"scanner@{doc_id}.example",
            "subject": None, "content_type": "IMAGE", "text": None, "image": out.getvalue(),
            "mime_type": "image/png" if pages == 1 else "image/tiff", "page_count": pages, "headers": {"X-Scanner": "mailroom-3"},
            "label": label}


def _text_document(doc_id: str) -> dict:
    doc = next(d for d in generate(60, seed=6, scan_share=0.0) if d["label"] == "complaint" and d["channel"] == "email")
    return {**doc, "doc_id": doc_id}


def _delivered(settings) -> dict[str, dict]:
    """Every department_document on the department topics, by doc_id."""
    out = {}
    for label in DEPARTMENTS:
        for message in read_topic(settings, topic_name(department_topic_key(label), settings.topic_prefix), timeout_s=2):
            record = codec.decode(message.value, expected="department_document").record
            out[record["doc_id"]] = record
    return out


def _route_and_score(settings, docs: list[dict], *scoring_args: str) -> None:
    with DocumentProducer(settings) as producer:
        assert producer.send_many(docs, progress=False).sent == len(docs)
    for job, group, extra in (("jobs.router", "router", ()), ("jobs.scoring", "scoring", scoring_args)):
        result = run_job(settings, job, ["--bounded", "--group-id", f"{settings.topic_prefix}{group}", *extra], timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]


def _as_routed(doc: dict) -> dict:
    """What the router makes of `doc` (its logic is deterministic: the same bytes as the job's)."""
    result = Router(RouterConfig()).route(codec.encode("document", to_document(doc, doc["received_ms"])), "t", 0, 0, int(time.time() * 1000))
    return codec.decode(result.value, expected="routed_document").record


def test_scans_are_read_and_each_department_receives_the_whole_document(pipeline_settings):
    settings = pipeline_settings
    p = settings.topic_prefix
    text_doc = _text_document(f"{p}text")
    docs = [scan_of("invoice", f"{p}invoice"), scan_of("job_application", f"{p}cv"), scan_of("other", f"{p}letter"),
            scan_of("invoice", f"{p}three-pages", pages=3), text_doc]
    _route_and_score(settings, docs)

    delivered = _delivered(settings)
    assert sorted(delivered) == sorted(d["doc_id"] for d in docs)  # each once
    for doc_id, department in ((f"{p}invoice", "finance"), (f"{p}cv", "hr"), (f"{p}letter", "triage")):
        record = delivered[doc_id]
        assert record["ocr"]["status"] == "READ" and record["decision"]["model_name"] == "mailroom-scan", record["ocr"]
        assert record["department"] == department, (doc_id, record["decision"]["label"], record["decision"]["probabilities"])
    assert "INVOICE No. 2024-117" in delivered[f"{p}invoice"]["ocr"]["text"]  # its OCR text travels with it

    three = delivered[f"{p}three-pages"]
    assert (three["ocr"]["pages_read"], three["ocr"]["pages_routed"], len(three["pages"])) == (3, 3, 2)
    assert [page.startswith("Page 2 of 3") or page.startswith("Page 3 of 3") for page in three["ocr"]["text"].split("\f")[1:]] == [True, True]
    routed = _as_routed(next(d for d in docs if d["doc_id"] == three["doc_id"]))
    assert (three["image"], three["pages"]) == (routed["image"], routed["pages"])  # the image bytes as routed
    Image.open(io.BytesIO(three["pages"][1])).verify()

    text, routed_text = delivered[f"{p}text"], _as_routed(text_doc)
    assert text["text"] == routed_text["text"] and text["ocr"] is None  # byte for byte
    # as the router cleaned them (an empty subject becomes none)
    assert (text["sender"], text["subject"], text["channel"]) == (routed_text["sender"], routed_text["subject"], "EMAIL")

    predictions = {r["doc_id"]: r for r in (codec.decode(m.value, expected="prediction").record
                                            for m in read_topic(settings, topic_name("predictions", p), min_count=len(docs)))}
    assert predictions[f"{p}three-pages"]["ocr_status"] == "READ" and predictions[f"{p}three-pages"]["ocr_pages"] == 3
    assert "image" not in predictions[f"{p}invoice"] and predictions[f"{p}text"]["ocr_status"] is None  # the log stays lean


def test_a_page_over_the_ocr_budget_is_decided_by_the_layout_model_and_marked(pipeline_settings):
    settings = pipeline_settings
    p = settings.topic_prefix
    docs = [scan_of("invoice", f"{p}slow-invoice", pages=2)]
    _route_and_score(settings, docs, "--ocr-page-timeout-ms", "1", "--no-ocr-cache")  # the cache would answer page 1 within any budget

    record = _delivered(settings)[f"{p}slow-invoice"]
    assert record["ocr"]["status"] == "OVER_BUDGET" and record["ocr"]["reason"] == "page 1 took more than the OCR budget of 1 ms"
    assert record["decision"]["model_name"] == "mailroom-image"
    assert record["decision"]["fallback_reason"].startswith("OCR OVER_BUDGET: page 1 took more")
    assert len(record["pages"]) == 1 and record["image"]  # the document still arrives whole
    [prediction] = [codec.decode(m.value, expected="prediction").record for m in read_topic(settings, topic_name("predictions", p), min_count=1)]
    assert (prediction["ocr_status"], prediction["model_name"]) == ("OVER_BUDGET", "mailroom-image")
