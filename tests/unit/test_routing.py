"""udfs/routing.py and udfs/cleaning.py: every bad input dead-lettered with its reason, valid
documents routed cleaned, each cleaning rule, the duplicate window, bugs not disguised."""

from __future__ import annotations

import io
import json
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image

from config.settings import PROJECT_DIR
from schemas import codec
from tests.unit.badinputs import RECEIVED_MS, bad_inputs, scan_document, scan_image, text_document, valid_scan_document, valid_text_document
from udfs import routing
from udfs.cleaning import clean_line, clean_text, repair_mojibake
from udfs.dead_letters import Reason
from udfs.routing import Destination, DuplicateWindow, Router, RouterConfig

NOW_MS = RECEIVED_MS + 60_000
TOPIC = "mailroom.documents"
CONFIG = RouterConfig()
REAL_DATA = PROJECT_DIR.parent / "shared" / "data" / "real"


def new_router(config: RouterConfig = CONFIG) -> Router:
    return Router(config, DuplicateWindow(config.duplicate_window_ms))


def routed(value: bytes, router: Router | None = None) -> tuple[routing.RoutingResult, dict]:
    result = (router or new_router()).route(value, TOPIC, 2, 41, NOW_MS)
    record_type = "dead_letter" if result.destination is Destination.DEAD_LETTER else "routed_document"
    return result, codec.decode(result.value, expected=record_type).record


def png_pixels(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png), formats=["PNG"])
    image.load()
    return image


# --- bad input -------------------------------------------------------------------------------

BAD_INPUTS = bad_inputs()


def test_the_corpus_covers_every_reason_with_at_least_20_kinds():
    assert len(BAD_INPUTS) >= 20
    assert {b.reason for b in BAD_INPUTS} == set(Reason) - {Reason.PROCESSING_ERROR}  # that one is for jobs after the router


def test_reason_codes_match_the_dead_letter_schema():
    reason_field = next(f for f in codec.schema("dead_letter").schema["fields"] if f["name"] == "reason")
    symbols = reason_field["type"]["symbols"]
    assert symbols[:symbols.index("OTHER")] == [r.value for r in Reason][:symbols.index("OTHER")]  # v1's order kept
    assert set(symbols) == {r.value for r in Reason} | {"OTHER"}
    assert all(r.value in reason_field["type"]["doc"] for r in Reason)
    assert all(r.value in routing.__doc__ for r in Reason if r is not Reason.PROCESSING_ERROR)


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.kind)
def test_bad_input_is_dead_lettered_with_its_reason_and_original_bytes(bad):
    router = new_router()
    for offset, earlier in enumerate(bad.before):
        assert router.route(earlier, TOPIC, 2, offset, NOW_MS).destination is Destination.TEXT
    result, letter = routed(bad.value, router)
    assert (result.destination, result.reason) == (Destination.DEAD_LETTER, bad.reason), result.message
    assert letter["original"] == bad.value
    assert letter["reason"] == bad.reason.value and letter["message"] == result.message and result.message
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (TOPIC, 2, 41)
    assert (letter["job"], letter["job_version"], letter["dead_lettered_ms"]) == (CONFIG.job, CONFIG.job_version, NOW_MS)
    try:  # the doc_id is in the dead letter when the router got as far as reading it
        readable_id = codec.decode(bad.value, expected="document").record["doc_id"] or None
    except codec.DecodeError:
        readable_id = None
    if len(bad.value) > CONFIG.max_message_bytes:  # refused before decoding
        readable_id = None
    assert letter["doc_id"] == result.doc_id == readable_id
    has_header = bad.value[:2] == codec.MARKER and len(bad.value) >= codec.HEADER_SIZE
    assert letter["fingerprint"] == (bad.value[2:10].hex() if has_header else None)


def test_bad_inputs_can_be_made_unique_per_run():
    ids = {b.kind: b for b in bad_inputs(prefix="run-42-")}
    assert codec.decode(ids["null_text"].value).record["doc_id"] == "run-42-null_text"


def test_limits_come_from_the_config():
    small = RouterConfig(max_text_chars=20, max_image_pixels=1000, max_clock_skew_ms=0)
    assert new_router(small).route(valid_text_document(), TOPIC, 0, 0, NOW_MS).reason is Reason.OVERSIZED
    assert new_router(small).route(valid_scan_document(), TOPIC, 0, 0, NOW_MS).reason is Reason.OVERSIZED
    assert new_router(RouterConfig(max_message_bytes=100)).route(valid_text_document(), TOPIC, 0, 0, NOW_MS).reason is Reason.OVERSIZED
    ahead = valid_text_document(received_ms=NOW_MS + 1)
    assert new_router(small).route(ahead, TOPIC, 0, 0, NOW_MS).reason is Reason.INVALID_TIMESTAMP
    assert new_router().route(ahead, TOPIC, 0, 0, NOW_MS).destination is Destination.TEXT


def test_unexpected_exceptions_propagate(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in our cleaning code")

    monkeypatch.setattr(routing, "clean_text", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        new_router().route(valid_text_document(), TOPIC, 0, 0, NOW_MS)


def test_a_bug_writing_our_own_output_propagates():
    broken = Router(RouterConfig(job_version=None))  # type: ignore[arg-type]
    with pytest.raises(codec.InvalidRecord):
        broken.route(valid_text_document(), TOPIC, 0, 0, NOW_MS)


# --- valid documents -------------------------------------------------------------------------


def test_text_document_is_routed_cleaned_with_metadata():
    value = valid_text_document("t-1", subject="  Invoice\x00 2024-117 ", language="en")
    result, doc = routed(value)
    assert (result.destination, result.reason, result.key) == (Destination.TEXT, None, b"t-1")
    assert doc["text"] == "Dear Sir or Madam,\n\nplease find attached our invoice no. 2024-117 for the delivery of 40 office chairs.\nPayment is due within 30 days."
    assert doc["text_cleaning"]["signature_removed"] and not doc["text_cleaning"]["quote_removed"]
    assert doc["image"] is None and doc["image_cleaning"] is None
    assert doc["subject"] == "Invoice 2024-117" and doc["language"] == "en" and doc["document_version"] == 2
    assert (doc["source_topic"], doc["source_partition"], doc["source_offset"], doc["routed_ms"]) == (TOPIC, 2, 41, NOW_MS)
    assert (doc["router_job"], doc["router_version"]) == ("router", routing.ROUTER_VERSION)
    source = text_document("t-1")
    assert {k: doc[k] for k in ("doc_id", "received_ms", "channel", "sender", "content_type", "page_count", "headers")} == \
        {k: source[k] for k in ("doc_id", "received_ms", "channel", "sender", "content_type", "page_count", "headers")}


def test_older_document_version_is_routed():
    v1 = codec.encode("document", text_document("old-1"), version=1)
    result, doc = routed(v1)
    assert result.destination is Destination.TEXT
    assert (doc["document_version"], doc["language"]) == (1, None)


def test_mime_type_parameters_and_case_are_ignored():
    result, doc = routed(valid_text_document(mime_type="Text/Plain; charset=UTF-8"))
    assert result.destination is Destination.TEXT
    assert (doc["mime_type"], doc["original_mime_type"]) == ("text/plain", "text/plain")


def test_empty_subject_becomes_null():
    assert routed(valid_text_document(subject=" \t "))[1]["subject"] is None


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "TIFF"])
def test_scan_is_routed_as_grayscale_png(image_format):
    result, doc = routed(valid_scan_document("s-1", image_format=image_format))
    assert (result.destination, result.key) == (Destination.SCANS, b"s-1")
    image = png_pixels(doc["image"])
    assert (image.mode, image.size) == ("L", (850, 1100))
    assert doc["mime_type"] == "image/png" and doc["original_mime_type"] == f"image/{image_format.lower()}"
    cleaning = doc["image_cleaning"]
    assert (cleaning["original_format"], cleaning["original_mode"], cleaning["frames"]) == (image_format, "RGB", 1)
    assert (cleaning["final_width"], cleaning["final_height"], cleaning["final_bytes"]) == (850, 1100, len(doc["image"]))
    assert not cleaning["resized"] and doc["text"] is None and doc["text_cleaning"] is None


def _gray_png(size: tuple[int, int] = (850, 1100), **save) -> bytes:
    out = io.BytesIO()
    png_pixels(scan_image("PNG", size)).convert("L").save(out, "PNG", **save)
    return out.getvalue()


def test_a_gray_png_within_the_limits_travels_as_it_was_sent():
    """Decode once: the router checks the header and the chunks' checksums, and passes the bytes on untouched."""
    original = _gray_png()
    _, doc = routed(codec.encode("document", scan_document(image=original)))
    assert doc["image"] == original and doc["pages"] == []
    cleaning = doc["image_cleaning"]
    assert (cleaning["original_mode"], cleaning["final_bytes"], cleaning["original_bytes"], cleaning["resized"]) == ("L", len(original), len(original), False)


@pytest.mark.parametrize("damage", ["cut off", "a flipped bit", "no end"])
def test_a_damaged_gray_png_is_dead_lettered_without_being_decoded(damage):
    original = _gray_png()
    middle = len(original) // 2
    bad = {"cut off": original[:middle], "a flipped bit": original[:middle] + bytes([original[middle] ^ 0x10]) + original[middle + 1:],
           "no end": original[:-12]}[damage]
    result, _ = routed(codec.encode("document", scan_document(image=bad)))
    assert result.destination == Destination.DEAD_LETTER and result.reason == Reason.CORRUPT_IMAGE, result.message


def test_a_gray_png_that_needs_work_is_still_cleaned():
    """Too large, or with EXIF (an orientation to apply): decoded, fitted and encoded again."""
    _, large = routed(codec.encode("document", scan_document(image=_gray_png((3000, 4000)))))
    assert png_pixels(large["image"]).size == (1500, 2000) and large["image_cleaning"]["resized"]
    exif = Image.Exif()
    exif[0x0112] = 6
    _, turned = routed(codec.encode("document", scan_document(image=_gray_png((60, 20), exif=exif.tobytes()))))
    assert png_pixels(turned["image"]).size == (20, 60) and turned["image_cleaning"]["orientation_applied"]


def test_large_scan_is_scaled_down_keeping_its_aspect_ratio():
    value = codec.encode("document", scan_document(image=scan_image("JPEG", (3000, 4000)), image_format="JPEG"))
    _, doc = routed(value)
    assert png_pixels(doc["image"]).size == (1500, 2000)
    assert doc["image_cleaning"]["resized"] and doc["image_cleaning"]["original_width"] == 3000


def test_multi_page_tiff_routes_every_page():
    value = codec.encode("document", scan_document(image=scan_image("TIFF", pages=3), image_format="TIFF", page_count=3))
    _, doc = routed(value)
    assert doc["image_cleaning"]["frames"] == 3 and doc["page_count"] == 3 and doc["notes"] == []
    assert len(doc["pages"]) == 2
    assert [png_pixels(page).size for page in doc["pages"]] == [png_pixels(doc["image"]).size] * 2


def test_pages_beyond_the_routers_cap_are_left_out_and_noted():
    value = codec.encode("document", scan_document(image=scan_image("TIFF", pages=4), image_format="TIFF", page_count=4))
    _, doc = routed(value, new_router(RouterConfig(max_routed_pages=2)))
    assert len(doc["pages"]) == 1 and doc["notes"] == ["routed the first 2 of 4 pages (the router's page cap)"]


def test_text_documents_have_no_pages():
    _, doc = routed(valid_text_document())
    assert doc["pages"] == [] and doc["image"] is None


def test_page_count_disagreeing_with_the_file_is_noted():
    _, doc = routed(valid_scan_document(page_count=2))
    assert doc["notes"] == ["page_count says 2, the file has 1 page(s)"]


def test_transparent_background_becomes_white():
    out = io.BytesIO()
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(out, "PNG")
    _, doc = routed(codec.encode("document", scan_document(image=out.getvalue())))
    assert png_pixels(doc["image"]).getextrema() == (255, 255)


def test_sixteen_bit_scan_is_scaled_to_eight_bits():
    out = io.BytesIO()
    Image.fromarray(np.full((30, 40), 40_000, dtype=np.uint16)).save(out, "PNG")
    _, doc = routed(codec.encode("document", scan_document(image=out.getvalue())))
    assert png_pixels(doc["image"]).getextrema() == (40_000 >> 8, 40_000 >> 8)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    _, doc = routed(codec.encode("document", scan_document(image=out.getvalue(), image_format="JPEG")))
    assert png_pixels(doc["image"]).size == (20, 60) and doc["image_cleaning"]["orientation_applied"]


# --- text cleaning rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected, flag",
    [
        ("Cafe\u0301 au lait", "Café au lait", "nfc_changed"),
        ("a\x00b\x07c\u200bd\ufeffe\x1b", "abcde", "control_chars_removed"),
        ("one  two\u00a0\u00a0three \n\n\n\n four\t\t five  ", "one two three\n\nfour\tfive", "whitespace_collapsed"),
        ("GrÃ¼ÃŸe aus MÃ¼nchen", "Grüße aus München", "mojibake_repaired"),
        ("Gr\ufffd\ufffde from a bad decoder", "Gre from a bad decoder", "replacement_chars_removed"),
        ("lone \udc80surrogate", "lone surrogate", "replacement_chars_removed"),
    ],
    ids=["nfc", "controls", "whitespace", "mojibake", "replacement", "surrogate"],
)
def test_normalization_rules(raw, expected, flag):
    text, cleaning = clean_text(raw)
    assert text == expected
    assert getattr(cleaning, flag)


def test_line_breaks_are_unified_and_tabs_kept():
    assert clean_text("a\r\nb\rc\u2028d\te")[0] == "a\nb\nc\nd\te"


@pytest.mark.parametrize(
    "raw",
    [
        "Yes, approved.\n\n> Can we order 40 chairs?\n> Anna",
        "Yes, approved.\n\nOn Mon, Jun 3, 2024 at 10:00 AM Anna Berg <\nanna@berg-office.example> wrote:\n> Can we order 40 chairs?",
        "Yes, approved.\n\nAm 03.06.2024 um 10:00 schrieb Anna Berg <anna@berg-office.example>:\n> Können wir bestellen?",
        "Yes, approved.\n\nLe lun. 3 juin 2024 à 10:00, Anna Berg <anna@berg-office.example> a écrit :\n> On commande ?",
        "Yes, approved.\n\n-----Original Message-----\nFrom: Anna Berg\nSent: Monday, June 3, 2024 10:00\nSubject: chairs\n\nCan we order?",
        "Yes, approved.\n\n________________________________\nFrom: Anna Berg <anna@berg-office.example>\nSent: Monday, June 3, 2024\nTo: Bob\n\nCan we order?",
    ],
    ids=[">", "on-wrote-wrapped", "am-schrieb", "le-a-ecrit", "original-message", "outlook"],
)
def test_quoted_replies_are_removed(raw):
    text, cleaning = clean_text(raw)
    assert (text, cleaning.quote_removed, cleaning.signature_removed) == ("Yes, approved.", True, False)


@pytest.mark.parametrize(
    "raw",
    [
        "Please repair the printer on floor 3.\n-- \nBob Miller\nFacilities\n+1 555 0100",
        "Please repair the printer on floor 3.\n\nBest regards,\nBob Miller",
        "Please repair the printer on floor 3.\n\nMit freundlichen Grüßen\nBob Müller\nHausmeisterei",
        "Please repair the printer on floor 3.\n\nSent from my iPhone",
    ],
    ids=["delimiter", "best-regards", "mfg", "sent-from"],
)
def test_signatures_are_removed(raw):
    text, cleaning = clean_text(raw)
    assert (text, cleaning.signature_removed) == ("Please repair the printer on floor 3.", True)


@pytest.mark.parametrize(
    "raw",
    [
        "FYI, see the invoice below.\n\n---------- Forwarded message ---------\nFrom: Anna Berg <anna@berg-office.example>\nDate: Mon, Jun 3, 2024\nSubject: Invoice 2024-117\n\nPlease pay 400 EUR.",
        "FYI\n\n________________________________\nFrom: Anna Berg\nSent: Monday, June 3, 2024\nTo: Bob\nSubject: FW: Invoice 2024-117\n\nPlease pay 400 EUR.",
    ],
    ids=["gmail", "outlook"],
)
def test_forwarded_messages_are_content_not_quotes(raw):
    text, cleaning = clean_text(raw)
    assert text == raw and not cleaning.quote_removed


def test_quotes_and_signatures_are_only_removed_from_email():
    raw = "Printed mail, scanned.\n\nFrom: Anna Berg\nSent: Monday\n\nPlease pay.\n\nBest regards,\nAnna"
    assert clean_text(raw, email=False)[0] == raw
    assert routed(valid_text_document(text=raw, channel="SCANNER"))[1]["text"] == raw
    assert routed(valid_text_document(text=raw, channel="EMAIL"))[1]["text"] == "Printed mail, scanned."


def test_a_sign_off_followed_by_sentences_is_not_a_signature():
    raw = "Please fix it.\nThanks!\nAlso, the printer on floor 2 is broken as well, please check it.\nBest,\nBob Miller"
    assert clean_text(raw)[0] == "Please fix it.\nThanks!\nAlso, the printer on floor 2 is broken as well, please check it."


def test_a_long_block_after_dashes_is_not_a_signature():
    raw = "Summary\n--\n" + "\n".join(f"line {i}" for i in range(20))
    text, cleaning = clean_text(raw)
    assert text == raw and not cleaning.signature_removed


def test_removal_that_would_leave_nothing_keeps_the_body():
    raw = "> only a quote\n> of an earlier mail"
    text, cleaning = clean_text(raw)
    assert text == raw
    assert cleaning.removal_reverted and not cleaning.quote_removed


def test_correct_text_is_left_alone():
    raw = "Sehr geehrte Damen und Herren,\n\nanbei die Rechnung über 1.200 € für São Paulo – naïve café."
    text, cleaning = clean_text(raw)
    assert text == raw
    assert not any(v for k, v in vars(cleaning).items() if k not in ("original_chars", "final_chars"))


def test_repair_mojibake_only_when_the_result_is_valid_utf8():
    assert repair_mojibake("naÃ¯ve â€¢ 10â‚¬") == "naïve • 10€"
    assert repair_mojibake("Ã¤ and a real € sign") == "Ã¤ and a real € sign"  # mixed: not safely reversible


def test_clean_line():
    assert clean_line("  Re:\tInvoice\n 42\x00 ") == "Re: Invoice 42"


# --- duplicate window ------------------------------------------------------------------------


def test_duplicate_window_decision_per_key():
    window = DuplicateWindow(window_ms=1000)
    assert not window.is_duplicate(None, 5)
    assert window.is_duplicate(0, 999) and not window.is_duplicate(0, 1000)
    assert window.is_duplicate(10, 5)  # a clock that went back is still inside the window


def test_duplicate_window_keeps_the_first_sighting():
    window = DuplicateWindow(window_ms=1000)
    assert [window.seen("a", t) for t in (0, 500, 999, 1000, 1500, 2000)] == [False, True, True, False, True, False]


def test_duplicate_window_forgets_expired_ids():
    window = DuplicateWindow(window_ms=100)
    for t in range(1000):
        window.seen(f"doc-{t}", t)
    assert len(window.first_seen) == 100


def test_duplicate_window_uses_a_given_store_as_is():
    store: dict[str, int] = {"old": 0}  # e.g. a view of Flink keyed state, expired by its TTL
    window = DuplicateWindow(window_ms=10, first_seen=store)
    assert not window.seen("new", 100) and window.first_seen is store
    assert store == {"old": 0, "new": 100}
    assert isinstance(DuplicateWindow(10).first_seen, OrderedDict)


def test_router_without_a_window_does_not_check_duplicates():
    router = Router(CONFIG)
    value = valid_text_document("same")
    assert [router.route(value, TOPIC, 0, i, NOW_MS).destination for i in range(2)] == [Destination.TEXT] * 2


def test_duplicate_dead_letter_for_a_check_kept_elsewhere():
    value = valid_text_document("twice")
    result = Router(CONFIG).duplicate(value, TOPIC, 1, 9, NOW_MS, "twice")
    letter = codec.decode(result.value, expected="dead_letter").record
    assert (result.reason, result.key, letter["original"], letter["source_offset"]) == (Reason.DUPLICATE_ID, b"twice", value, 9)


def test_a_rejected_document_does_not_reserve_its_id():
    router = new_router()
    assert router.route(valid_text_document("fix-1", text=" "), TOPIC, 0, 0, NOW_MS).reason is Reason.EMPTY_AFTER_CLEANING
    assert router.route(valid_text_document("fix-1"), TOPIC, 0, 1, NOW_MS).destination is Destination.TEXT


# --- real documents, when ../shared/data/real is there ---------------------------------------


@pytest.mark.skipif(not (REAL_DATA / "text.jsonl").exists(), reason="no real data beside the project")
def test_real_texts_are_routed_and_never_emptied():
    router = new_router()
    with open(REAL_DATA / "text.jsonl", encoding="utf-8") as lines:
        records = [json.loads(line) for i, line in enumerate(lines) if i % 6 == 0]  # every source
    for i, record in enumerate(records):
        value = valid_text_document(record["id"], text=record["text"], subject=record["subject"])
        result = router.route(value, TOPIC, 0, i, NOW_MS)
        assert result.destination is Destination.TEXT, (record["id"], result.message)
