"""Scanned pages for the generator: a class-typical layout drawn with Pillow, then scan defects.

Layouts: invoices, offers and purchase orders get a letterhead, address and meta blocks, a
line-item table and totals (invoices a bank footer, orders bill-to/ship-to boxes and a grid);
complaints and cover letters a letter layout; CVs sections with a photo box; service requests a
form with field boxes and check boxes; other mail a memo, newsletter, flyer, delivery note,
letter or a page of running text (report, minutes).
Defects: paper tone and contrast, uneven illumination, dark scanner edges, small rotation, blur,
noise and speckles, and a JPEG round trip (or black-and-white thresholding, like a fax or a
bilevel scanner) before the page is stored as grayscale PNG. Pages are A4 or US letter.
"""

from __future__ import annotations

import io
import random
import textwrap
import unicodedata
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from models.fragments import CLASS_FRAGMENTS, CV_SECTIONS, FORM_FIELDS, TABLE_HEADERS, TITLES, TOTAL_WORDS, VOCAB
from models.composing import Facts, TextComposer, company_name, fill, line_items


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font: no system fonts needed."""
    return ImageFont.load_default(size=size)


_GLYPHS = str.maketrans({"ß": "ss", "€": "EUR", "£": "GBP", "•": "-", "Ø": "O", "ø": "o", "ı": "i", "œ": "oe", "æ": "ae"})


def drawable(text: str) -> str:
    """The bundled font has ASCII glyphs only: fold accents (é -> e) and spell out symbols."""
    if text.isascii():
        return text
    folded = unicodedata.normalize("NFKD", text.translate(_GLYPHS))
    return "".join(c for c in folded if c.isascii() or c == "·")


class Page:
    """A blank grayscale page with a writing cursor (y) and drawing helpers."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.h = rng.randint(680, 860)
        self.w = int(self.h / (rng.choice([1.414, 1.294]) * rng.uniform(0.98, 1.02)))  # A4 or US letter
        self.image = Image.new("L", (self.w, self.h), 255)
        self.draw = ImageDraw.Draw(self.image)
        self.left = int(self.w * rng.uniform(0.07, 0.11))
        self.right = self.w - int(self.w * rng.uniform(0.07, 0.1))
        self.y = int(self.h * rng.uniform(0.04, 0.07))
        self.size = max(9, round(self.h / rng.uniform(64, 80)))

    def text(self, x: int, y: int, s: str, size: int | None = None, bold: bool = False, fill: int = 0) -> None:
        f = font(size or self.size)
        s = drawable(s)
        self.draw.text((x, y), s, font=f, fill=fill)
        if bold:
            self.draw.text((x + 1, y), s, font=f, fill=fill)

    def line(self, s: str, size: int | None = None, bold: bool = False, x: int | None = None, align: str = "left") -> None:
        size = size or self.size
        if align == "right":
            x = self.right - int(font(size).getlength(s))
        elif align == "center":
            x = (self.w - int(font(size).getlength(s))) // 2
        self.text(self.left if x is None else x, self.y, s, size, bold)
        self.y += int(size * 1.35)

    def paragraph(self, s: str, size: int | None = None, x: int | None = None, width: int | None = None) -> None:
        size = size or self.size
        x = self.left if x is None else x
        chars = max(10, int((width or self.right - x) / (size * 0.5)))
        for row in textwrap.wrap(s, chars):
            if self.y > self.h - 2 * size:
                return
            self.line(row, size, x=x)
        self.y += size // 2

    def rule(self, x0: int | None = None, x1: int | None = None, width: int = 1) -> None:
        self.draw.line((self.left if x0 is None else x0, self.y, self.right if x1 is None else x1, self.y), fill=0, width=width)
        self.y += 4 + width

    def skip(self, share: float) -> None:
        self.y += int(self.h * share)

    def signature(self, x: int, y: int) -> None:
        """A pen scribble."""
        r = self.rng
        points = [(x + i * r.randint(6, 12), y + r.randint(-9, 9)) for i in range(r.randint(6, 12))]
        self.draw.line(points, fill=r.randint(0, 60), width=r.choice([1, 2]), joint="curve")


def render_scan(rng: random.Random, label: str, lang: str, facts: Facts, composer: TextComposer) -> bytes:
    """A degraded grayscale PNG of a class-typical page for `label`."""
    page = Page(rng)
    if label in ("invoice", "offer", "purchase_order"):
        _commercial(page, rng, label, lang, facts, composer)
    elif label == "job_application":
        (_cv if rng.random() < 0.5 else _letter)(page, rng, label, lang, facts, composer)
    elif label == "service_request":
        _form(page, rng, lang, facts, composer)
    elif label == "complaint":
        _letter(page, rng, label, lang, facts, composer)
    else:
        rng.choice([_memo, _newsletter, _flyer, _delivery_note, _letter, _report, _report])(page, rng, label, lang, facts, composer)
    return degrade(rng, page.image)


def _sentences(rng, label, lang, facts, composer, max_body=6, kind=None) -> list[str]:
    kind = kind or ("memo" if label == "other" else label)
    return [fill(s, facts) for s in composer.sentences(rng, label, kind, lang, [], max_body=max_body)]


def _letterhead(page: Page, rng: random.Random, facts: Facts) -> None:
    name = facts["company"]
    style = rng.randrange(3)
    if style == 0:
        page.draw.rectangle((page.left, page.y, page.left + 40, page.y + 40), fill=rng.randint(30, 120))
        page.text(page.left + 52, page.y + 8, name, page.size + 8, bold=True)
        page.y += 52
    elif style == 1:
        page.line(name, page.size + 10, bold=True, align="center")
    else:
        page.line(name, page.size + 6, bold=True, align="right")
        page.rule(width=2)
    page.line(f"{facts['street']} · {facts['city']} · {facts['phone']}", page.size - 2)
    page.skip(0.02)


def _address_and_meta(page: Page, rng: random.Random, lang: str, facts: Facts, number_key: str) -> None:
    top = page.y
    for row in (facts["our_company"], facts["recipient_title"], VOCAB[lang]["street"][0], VOCAB[lang]["city"][0]):
        page.line(row)
    bottom, page.y = page.y, top
    meta_x = int(page.w * 0.58)
    captions = {"en": ("No.", "Date", "Customer"), "de": ("Nr.", "Datum", "Kunde"), "fr": ("N°", "Date", "Client")}[lang]
    for caption, key in zip(captions, (number_key, "date", "customer_no")):
        page.line(f"{caption}: {facts[key]}", x=meta_x)
    page.y = max(bottom, page.y) + int(page.h * 0.03)


def _commercial(page, rng, label, lang, facts, composer) -> None:
    _letterhead(page, rng, facts)
    number_key = {"invoice": "invoice_no", "offer": "offer_no", "purchase_order": "order_no"}[label]
    _address_and_meta(page, rng, lang, facts, number_key)
    page.line(rng.choice(TITLES[lang][label]), page.size + rng.randint(6, 14), bold=True)
    page.skip(0.01)
    if label == "offer":
        page.paragraph(" ".join(_sentences(rng, label, lang, facts, composer, max_body=2)))
    if label == "purchase_order":
        _boxes(page, rng, lang)
    rows = line_items(rng, lang, rng.randint(*{"invoice": (3, 10), "offer": (2, 6), "purchase_order": (4, 14)}[label]))
    _table(page, rng, rng.choice(TABLE_HEADERS[lang]), rows, grid=label == "purchase_order" or rng.random() < 0.2,
           shaded=label == "invoice" and rng.random() < 0.7, ruled=label != "offer")
    words = TOTAL_WORDS[lang]
    totals = (words if label == "invoice" else words[2:]) if rng.random() < 0.9 else ()
    x = int(page.w * 0.55)
    for caption in totals:
        page.text(x, page.y, caption, bold=caption == words[2])
        page.line(facts["amount"] if caption == words[2] else facts["small_amount"], align="right")
    if label == "invoice" and totals:
        page.rule(x0=x, width=2)
        page.rule(x0=x)
    page.skip(0.02)
    page.paragraph(" ".join(_sentences(rng, label, lang, facts, composer, max_body=2 if label == "invoice" else 4)))
    if label != "invoice":
        page.signature(page.left, page.y + 10)
        page.y += 30
        page.line(facts["name"])
    if label == "invoice" or rng.random() < 0.3:
        page.y = page.h - int(page.h * 0.09)
        page.rule()
        page.line(f"IBAN {facts['iban']} · {facts['company']}", page.size - 3)
        page.line(f"{facts['street']}, {facts['city']} · {facts['phone']}", page.size - 3)


def _boxes(page: Page, rng: random.Random, lang: str) -> None:
    captions = {"en": ("Bill to", "Ship to"), "de": ("Rechnungsadresse", "Lieferadresse"), "fr": ("Facturation", "Livraison")}[lang]
    height = page.size * 5
    mid = (page.left + page.right) // 2
    for x0, x1, caption in ((page.left, mid - 8, captions[0]), (mid + 8, page.right, captions[1])):
        page.draw.rectangle((x0, page.y, x1, page.y + height), outline=0, width=1)
        page.text(x0 + 5, page.y + 4, caption, bold=True)
        for i in range(1, 4):
            page.text(x0 + 5, page.y + 4 + i * int(page.size * 1.2), rng.choice(VOCAB[lang]["street"]) if i == 2 else company_name(rng, lang))
    page.y += height + page.size


def _table(page: Page, rng: random.Random, header: tuple, rows: list[tuple], grid: bool, shaded: bool, ruled: bool) -> None:
    widths = (0.46, 0.14, 0.2, 0.2)
    span = page.right - page.left
    xs = [page.left + int(span * sum(widths[:i])) for i in range(len(widths) + 1)]
    row_h = int(page.size * 1.6)
    top = page.y
    if shaded:
        page.draw.rectangle((page.left, page.y, page.right, page.y + row_h), fill=rng.randint(170, 215))
    for x, caption in zip(xs, header):
        page.text(x + 4, page.y + 3, caption, bold=True)
    page.y += row_h
    page.draw.line((page.left, page.y, page.right, page.y), fill=0, width=2)
    for row in rows:
        if page.y > page.h * 0.8:
            break
        for x, cell in zip(xs, row):
            page.text(x + 4, page.y + 3, cell[:32], page.size - 1)
        page.y += row_h
        if ruled:
            page.draw.line((page.left, page.y, page.right, page.y), fill=80, width=1)
    page.draw.line((page.left, page.y, page.right, page.y), fill=0, width=2)
    if grid:
        for x in xs:
            page.draw.line((x, top, x, page.y), fill=0, width=1)
    page.y += page.size


def _letter(page, rng, label, lang, facts, composer) -> None:
    if facts.sender.company and rng.random() < 0.6:
        _letterhead(page, rng, facts)
    else:
        for row in (facts["name"], facts["street"], facts["city"]):
            page.line(row, align="right")
        page.skip(0.03)
    for row in (facts["our_company"], facts["recipient_title"], VOCAB[lang]["city"][0]):
        page.line(row)
    page.skip(0.02)
    page.line(facts["date"], align="right")
    kind = rng.choice(("meeting", "thanks", "out_of_office")) if label == "other" else label
    used: list[str] = []
    page.line(fill(composer.class_part(rng, lang, kind, "subject", used)[0], facts), bold=True)
    page.skip(0.015)
    page.line(fill(composer.common(rng, lang, "greeting", used)[0], facts))
    page.y += page.size // 2
    sentences = _sentences(rng, label, lang, facts, composer, max_body=7, kind=kind)
    while sentences:
        take = rng.randint(2, 3)
        page.paragraph(" ".join(sentences[:take]))
        sentences = sentences[take:]
    page.line(composer.common(rng, lang, "closing", used)[0])
    page.signature(page.left, page.y + 12)
    page.y += 34
    page.line(facts["name"])
    if label == "complaint" and rng.random() < 0.4:  # angry pen marks in the margin
        for _ in range(rng.randint(1, 3)):
            y = rng.randint(page.h // 4, page.h - 60)
            page.draw.line((page.left - 20, y, page.left - 6, y + rng.randint(20, 60)), fill=30, width=2)


def _cv(page, rng, label, lang, facts, composer) -> None:
    v = VOCAB[lang]
    page.line(facts["name"], page.size + 12, bold=True, align=rng.choice(["left", "center"]))
    page.line(f"{facts['street']}, {facts['city']} · {facts['phone']} · {facts.sender.address}", page.size - 2)
    if rng.random() < 0.6:
        size = int(page.w * 0.16)
        page.draw.rectangle((page.right - size, int(page.h * 0.04), page.right, int(page.h * 0.04) + int(size * 1.3)), fill=rng.randint(90, 170), outline=0)
    page.skip(0.03)
    start = rng.randint(2003, 2018)
    for section in rng.sample(CV_SECTIONS[lang], k=rng.randint(3, 4)):
        if page.y > page.h * 0.85:
            break
        page.line(section, page.size + 3, bold=True)
        page.rule(x1=page.left + int((page.right - page.left) * rng.uniform(0.3, 1)))
        for i in range(rng.randint(2, 4)):
            page.text(page.left, page.y, f"{start + 2 * i} - {start + 2 * i + 2}", page.size - 1)
            page.paragraph(f"• {rng.choice(v['position'])}, {company_name(rng, lang)}: {rng.choice(v['duty'])}", page.size - 1, x=page.left + int(page.w * 0.2))
        page.y += page.size // 2


def _form(page, rng, lang, facts, composer) -> None:
    _letterhead(page, rng, facts)
    page.line(rng.choice(TITLES[lang]["service_request"]), page.size + 8, bold=True, align=rng.choice(["left", "center"]))
    page.skip(0.015)
    label_w = int(page.w * 0.25)
    values = [facts["name"], facts["customer_no"], facts["phone"], facts["room"], facts["device"], facts["serial"], facts["due_date"], "", facts["contract_no"]]
    for caption, value in rng.sample(list(zip(FORM_FIELDS[lang], values)), k=rng.randint(5, 8)):
        box_h = int(page.size * 1.7)
        page.text(page.left, page.y + 4, caption)
        page.draw.rectangle((page.left + label_w, page.y, page.right, page.y + box_h), outline=0)
        page.text(page.left + label_w + 6, page.y + 4, value[:40], fill=rng.randint(20, 90))
        page.y += box_h + 6
    page.skip(0.01)
    for _ in range(rng.randint(1, 2)):  # rows of check boxes
        x = page.left
        for option in rng.sample(VOCAB[lang]["system"], k=min(4, len(VOCAB[lang]["system"]))):
            b = page.size
            page.draw.rectangle((x, page.y, x + b, page.y + b), outline=0)
            if rng.random() < 0.35:
                page.draw.line((x, page.y, x + b, page.y + b), fill=0, width=2)
                page.draw.line((x, page.y + b, x + b, page.y), fill=0, width=2)
            page.text(x + b + 5, page.y, option)
            x += int((page.right - page.left) / 4)
        page.y += int(page.size * 1.9)
    box_top = page.y
    page.y += 6
    page.paragraph(" ".join(_sentences(rng, "service_request", lang, facts, composer, max_body=4)), x=page.left + 6, width=page.right - page.left - 12)
    lined_bottom = min(page.h - 90, box_top + int(page.h * 0.2))
    for y in range(page.y, lined_bottom, int(page.size * 1.5)):
        page.draw.line((page.left + 6, y, page.right - 6, y), fill=150)
    page.draw.rectangle((page.left, box_top, page.right, max(lined_bottom, page.y)), outline=0)
    page.y = max(lined_bottom, page.y) + 24
    page.draw.line((page.left, page.y + 20, page.left + int(page.w * 0.3), page.y + 20), fill=0)
    page.signature(page.left + 10, page.y + 8)


def _memo(page, rng, label, lang, facts, composer) -> None:
    page.line(rng.choice(TITLES[lang]["memo"]), page.size + 14, bold=True)
    page.rule(width=3)
    for caption, value in zip(("To", "From", "Date", "Re"), (facts["our_company"], facts["name"], facts["date"], facts["topic"])):
        page.text(page.left, page.y, caption + ":", bold=True)
        page.line(value, x=page.left + int(page.w * 0.15))
    page.rule()
    page.skip(0.02)
    for _ in range(rng.randint(2, 4)):
        page.paragraph(" ".join(_sentences(rng, label, lang, facts, composer, max_body=3, kind="memo")))


def _report(page, rng, label, lang, facts, composer) -> None:
    """A page of running text: minutes, a report, an article, a specification."""
    page.line(fill(rng.choice(CLASS_FRAGMENTS[lang]["report"]["subject"]), facts), page.size + rng.randint(2, 8), bold=True,
              align=rng.choice(["left", "center"]))
    page.line(f"{facts['name']} · {facts['date']}", page.size - 1)
    page.skip(0.02)
    size = page.size - rng.randint(0, 2)
    while page.y < page.h * 0.88:
        if rng.random() < 0.15:
            page.line(f"{rng.randint(1, 9)}. {fill(rng.choice(VOCAB[lang]['topic']), facts)}", size + 1, bold=True)
        page.paragraph(" ".join(_sentences(rng, label, lang, facts, composer, max_body=5, kind="report")), size)
    page.y = page.h - int(page.h * 0.05)
    page.line(f"- {rng.randint(1, 40)} -", size - 1, align="center")


def _newsletter(page, rng, label, lang, facts, composer) -> None:
    band = int(page.h * rng.uniform(0.07, 0.1))
    page.draw.rectangle((0, page.y, page.w, page.y + band), fill=rng.randint(0, 60))
    page.text(page.left, page.y + band // 4, rng.choice(TITLES[lang]["newsletter"]) + " · " + facts["company"], page.size + 10, bold=True, fill=235)
    page.y += band + page.size
    columns = rng.choice([2, 3])
    col_w = (page.right - page.left) // columns
    top = page.y
    for c in range(columns):
        page.y = top
        x = page.left + c * col_w
        if rng.random() < 0.6:
            pic_h = int(page.h * rng.uniform(0.1, 0.2))
            page.draw.rectangle((x, page.y, x + col_w - 12, page.y + pic_h), fill=rng.randint(60, 190))
            page.y += pic_h + 6
        page.text(x, page.y, fill(rng.choice(VOCAB[lang]["event"]), facts), page.size + 2, bold=True)
        page.y += page.size * 2
        while page.y < page.h * 0.9:
            page.paragraph(" ".join(_sentences(rng, label, lang, facts, composer, max_body=3, kind="newsletter")), page.size - 1, x=x, width=col_w - 12)


def _flyer(page, rng, label, lang, facts, composer) -> None:
    page.skip(0.05)
    for s in _sentences(rng, label, lang, facts, composer, max_body=2, kind="spam")[:3]:
        page.paragraph(s.upper(), page.size + rng.randint(10, 20))
    page.draw.rectangle((page.left, page.y, page.right, page.y + int(page.h * 0.2)), outline=0, width=4)
    page.y += int(page.h * 0.05)
    page.line(facts["amount"], page.size + 24, bold=True, align="center")


def _delivery_note(page, rng, label, lang, facts, composer) -> None:
    _letterhead(page, rng, facts)
    page.line(facts["tracking_no"], page.size + 6, bold=True)
    x = page.left
    while x < page.left + int(page.w * 0.5):  # a barcode
        width = rng.choice([1, 2, 3])
        page.draw.rectangle((x, page.y, x + width - 1, page.y + 50), fill=0)
        x += width + rng.choice([1, 2, 3])
    page.y += 60
    rows = line_items(rng, lang, rng.randint(2, 8))
    _table(page, rng, rng.choice(TABLE_HEADERS[lang]), [(r[0], r[1], "", "") for r in rows], grid=False, shaded=False, ruled=True)
    page.paragraph(" ".join(_sentences(rng, label, lang, facts, composer, max_body=2, kind="shipping")))


def degrade(rng: random.Random, page: Image.Image) -> bytes:
    """Scan defects; returns a grayscale PNG. Three pages in four go through a gray scanner
    (tone, light, edges, noise, skew, blur, JPEG), one in four through a black-and-white one."""
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    angle, radius = rng.uniform(-2.5, 2.5), rng.uniform(0.3, 1.1)
    out = io.BytesIO()
    if rng.random() < 0.25:
        _bilevel(rng, noise_rng, page, angle, radius).save(out, "PNG", compress_level=3)
        return out.getvalue()
    h, w = page.height, page.width
    paper, ink = rng.uniform(210, 250), rng.uniform(5, 70)
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    light = 1 + rng.uniform(-0.12, 0.12) * xx + rng.uniform(-0.12, 0.12) * yy - rng.uniform(0, 0.15) * (xx * xx + yy * yy) / 2
    a = (ink + np.asarray(page, dtype=np.float32) * ((paper - ink) / 255)) * light
    if rng.random() < 0.3:  # the scanner lid's dark edge
        edge = rng.randint(3, 14)
        side = rng.randrange(4)
        region = {0: np.s_[:edge, :], 1: np.s_[-edge:, :], 2: np.s_[:, :edge], 3: np.s_[:, -edge:]}[side]
        a[region] *= rng.uniform(0.1, 0.5)
    amplitude = rng.randint(2, 7)
    a += noise_rng.integers(-amplitude, amplitude + 1, (h, w), dtype=np.int16)
    specks = noise_rng.random((h, w), dtype=np.float32) < rng.uniform(0.0002, 0.002)
    a[specks] = rng.randint(0, 90)
    image = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=int(paper * rng.uniform(0.6, 1.0)))
    image = image.filter(ImageFilter.GaussianBlur(radius))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(30, 75))
    Image.open(io.BytesIO(buffer.getvalue())).convert("L").save(out, "PNG", compress_level=3)
    return out.getvalue()


def _bilevel(rng: random.Random, noise_rng: np.random.Generator, page: Image.Image, angle: float, radius: float) -> Image.Image:
    """A fax or bilevel scanner: skew, slight blur, a global threshold, specks; no gray left."""
    image = page.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=255).filter(ImageFilter.GaussianBlur(radius * 0.6))
    a = np.asarray(image)
    black = (a < rng.uniform(110, 190)) | (noise_rng.random(a.shape, dtype=np.float32) < rng.uniform(0.0001, 0.001))
    return Image.fromarray(np.where(black, 0, 255).astype(np.uint8))
