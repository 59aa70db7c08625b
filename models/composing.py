"""The building blocks of generated text: senders, slot values (`Facts`), the fragment composer,
and the small formatters and noise makers that `models.generator` (e-mails, portal texts) and
`models.scans` (rendered pages) share.

Same `random.Random` in, same text out: nothing here reads a clock or a hash()-ordered set.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from schemas.units import DAY_MS
from models.fragments import (CLASS_FRAGMENTS, COMMON, CV_EXTRA_SECTIONS, CV_SECTIONS, CV_SUMMARY, DISTRACTORS, OTHER_KINDS, PAPER, PORTAL_TOPICS,
                              TABLE_HEADERS, TOTAL_WORDS, VOCAB)

# label -> labels whose fragments a text of that label may quote as distractors
RELATED = {"complaint": ("invoice", "service_request", "purchase_order"), "purchase_order": ("offer",), "invoice": ("purchase_order",),
           "offer": ("purchase_order",), "service_request": ("complaint",), "job_application": ("other",), "other": ("other", "other", "offer", "invoice")}

# How an e-mail-channel text is written (its voice), so that no style means one class: every class is written in every voice but
# `cv` (a CV sent alone). `form` is a billing or order form, OCRed; `paper` a business document on paper as OCR reads it (a letterhead
# with address and phone lines, then an invoice, statement, quote, order or delivery note read cell by cell, or a letter).
# Weights: VOICES, plus the label's extra weight for a voice.
VOICES = {"plain": 0.45, "letter": 0.15, "ticket": 0.12, "social": 0.1, "form": 0.03, "paper": 0.03}
VOICE_EXTRA = {"complaint": {"letter": 0.2}, "service_request": {"ticket": 0.25}, "job_application": {"cv": 0.35},
               "invoice": {"form": 0.25, "paper": 0.5}, "offer": {"form": 0.15, "paper": 0.08}, "purchase_order": {"form": 0.2, "paper": 0.1},
               "other": {"form": 0.05, "paper": 0.04}}
COMMERCIAL = ("invoice", "offer", "purchase_order", "shipping")  # kinds whose paper form is a table of goods or services
# words a help-desk ticket system strips (with names and numbers) before it stores a ticket's text
TICKET_STOP_WORDS = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being am i me my we our us you
    your he she it its they them this that these those there here have has had do does did will would can could should may might must
    shall please not no so than then too very just also der die das und oder ist sind ein eine zu mit von für auf bitte ich wir sie le la les
    et ou est sont un une de du des pour avec sur je nous vous merci""".split())


@dataclass
class Sender:
    """Someone who writes to the mailbox: their address, language, role and habits."""

    address: str
    first: str
    last: str
    company: str | None
    lang: str
    role: str
    activity: float
    paper_rate: float

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass(frozen=True)
class Composed:
    """A composed text and the ids of the fragments it was built from."""

    subject: str
    body: str
    fragment_ids: tuple[str, ...]


class Facts(dict):
    """Slot values for one document, made on first use and then stable within the document."""

    def __init__(self, rng: random.Random, lang: str, sender: Sender, recipient: tuple[str, str], our_company: str, when_ms: int):
        super().__init__()
        self.rng, self.lang, self.sender, self.when_ms = rng, lang, sender, when_ms
        self.update(name=sender.name, first=sender.first, our_company=our_company,
                    recipient_first=recipient[0], recipient_title=f"{rng.choice(VOCAB[lang]['title'])} {recipient[1]}")

    def __missing__(self, key: str) -> str:
        value = self._make(key)
        self[key] = value
        return value

    def _make(self, key: str) -> str:
        r, lang, v = self.rng, self.lang, VOCAB[self.lang]
        digits = lambda k: str(r.randrange(10**k)).zfill(k)  # noqa: E731
        year = str(datetime.fromtimestamp(self.when_ms / 1000, timezone.utc).year)
        if key.endswith("2") and key[:-1] in v:  # a second, different product/skill/device
            return r.choice([x for x in v[key[:-1]] if x != self[key[:-1]]])
        if key in v:
            return r.choice(v[key])
        numbered = {
            "invoice_no": [f"INV-{year}-{digits(5)}", digits(6), f"RE-{year}-{digits(4)}", f"F{year}-{digits(4)}", f"IN{digits(7)}"],
            "order_no": [f"PO-{digits(6)}", f"BE-{year}-{digits(4)}", f"CMD-{digits(5)}", f"ORD{digits(7)}"],
            "offer_no": [f"Q-{year}-{digits(4)}", f"ANG-{digits(5)}", f"DEV-{digits(4)}", f"OFF{digits(6)}"],
            "customer_no": [f"C{digits(6)}", f"KD-{digits(5)}", f"CL{digits(5)}"],
            "contract_no": [f"CT-{year}-{digits(3)}", f"RV-{digits(5)}"],
            "ticket_no": [f"SR-{digits(5)}", f"INC{digits(7)}", f"TCK-{digits(4)}"],
            "tracking_no": [f"1Z{digits(12)}", f"JD{digits(16)}", f"{digits(14)}"],
            "serial": [f"SN{digits(8)}", f"{r.choice('ABCDEFGH')}{digits(6)}-{digits(2)}"],
            "error_code": [f"E{digits(3)}", f"0x{r.getrandbits(16):04X}", f"ERR-{digits(2)}"],
            "job_ref": [f"JR-{digits(4)}", f"{year}/{digits(3)}"],
            "cost_centre": [digits(4), f"KST-{digits(4)}"],
        }
        if key in numbered:
            return r.choice(numbered[key])
        numbers = {"qty": (1, 500), "qty2": (1, 120), "years": (1, 20), "months": (1, 3), "weeks": (1, 8), "team": (3, 25)}
        if key in numbers:
            return str(r.randint(*numbers[key]))
        if key == "time":  # of a mail header: "10:15 AM" (en), "10:15" (de, fr)
            hour, minute = r.randint(7, 19), r.randrange(60)
            return f"{(hour - 1) % 12 + 1}:{minute:02d} {'AM' if hour < 12 else 'PM'}" if lang == "en" else f"{hour}:{minute:02d}"
        if key == "days":
            return str(r.choice([7, 10, 14, 21, 30, 45, 60]))
        if key == "percent":
            return str(r.choice([2, 3, 5, 8, 10, 15, 20]))
        if key == "vat":
            return str(r.choice({"en": [20, 0], "de": [19, 7], "fr": [20, 5.5]}[lang]))
        if key in ("amount", "unit_price", "small_amount", "salary"):
            value = {"amount": lambda: r.lognormvariate(7, 1.2), "unit_price": lambda: r.lognormvariate(3.5, 1.2),
                     "small_amount": lambda: r.uniform(4, 90), "salary": lambda: round(r.uniform(28, 95)) * 1000}[key]()
            return format_money(value, lang, r)
        if key in ("date", "due_date", "delivery_date"):
            offset_days = {"date": r.randint(-40, 0), "due_date": r.randint(7, 60), "delivery_date": r.randint(-10, 30)}[key]
            return format_date(self.when_ms + offset_days * DAY_MS, lang, r)
        if key == "company":
            return self.sender.company or company_name(r, lang)
        if key == "iban":
            country = {"en": "GB", "de": "DE", "fr": "FR"}[lang]
            return f"{country}{digits(2)} " + " ".join(digits(4) for _ in range(4)) + f" {digits(2)}"
        if key == "phone":
            if lang == "en":
                return f"+44 {digits(2)} {digits(4)} {digits(4)}"
            return f"+49 {digits(3)} {digits(7)}" if lang == "de" else f"+33 {digits(1)} " + " ".join(digits(2) for _ in range(4))
        if key == "portal_topic":
            return r.choice(PORTAL_TOPICS[lang])
        raise KeyError(key)


def format_money(value: float, lang: str, rng: random.Random) -> str:
    whole, cents = f"{value:,.2f}".split(".")
    if lang == "en":
        return rng.choice(["£", "$", "EUR ", "€"]) + f"{whole}.{cents}"
    if lang == "de":
        return f"{whole.replace(',', '.')},{cents} " + rng.choice(["€", "EUR"])
    return f"{whole.replace(',', ' ')},{cents} €"


def format_date(ms: int, lang: str, rng: random.Random) -> str:
    d = datetime.fromtimestamp(ms / 1000, timezone.utc)
    month = VOCAB[lang]["month"][d.month - 1]
    formats = {"en": [f"{d.day} {month} {d.year}", d.strftime("%m/%d/%Y"), d.strftime("%Y-%m-%d"), f"{month} {d.day}, {d.year}"],
               "de": [d.strftime("%d.%m.%Y"), f"{d.day}. {month} {d.year}"],
               "fr": [d.strftime("%d/%m/%Y"), f"{d.day} {month} {d.year}"]}[lang]
    return rng.choice(formats)


def company_name(rng: random.Random, lang: str) -> str:
    v = VOCAB[lang]
    return f"{rng.choice(v['company_a'])} {rng.choice(v['company_b'])} {rng.choice(v['legal'])}"


def slug(text: str) -> str:
    """ASCII, lower-case, dashes: 'Müller Groß GmbH' -> 'muller-gro-gmbh'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


class TextComposer:
    """Composes subjects and bodies from fragment pools, optionally from one half of each pool."""

    def __init__(self, fragment_half: int | None = None):
        if fragment_half not in (None, 0, 1):
            raise ValueError("fragment_half must be None, 0 or 1")
        self.half = fragment_half

    def pick(self, rng: random.Random, pool: list[str], pool_id: str, used: list[str], k: int = 1) -> list[str]:
        """k distinct fragments from a pool (its half, if restricted); their ids go into `used`."""
        indices = [i for i in range(len(pool)) if self.half is None or i % 2 == self.half]
        chosen = rng.sample(indices, min(k, len(indices)))
        used.extend(f"{pool_id}/{i}" for i in chosen)
        return [pool[i] for i in chosen]

    def class_part(self, rng, lang, kind, part, used, k=1) -> list[str]:
        return self.pick(rng, CLASS_FRAGMENTS[lang][kind][part], f"{lang}/{kind}/{part}", used, k)

    def common(self, rng, lang, part, used, k=1) -> list[str]:
        return self.pick(rng, COMMON[lang][part], f"{lang}/common/{part}", used, k)

    def sentences(self, rng: random.Random, label: str, kind: str, lang: str, used: list[str], max_body: int = 5) -> list[str]:
        """Opener, shuffled body sentences, a distractor and noise, the request: the core of a text."""
        core = self.class_part(rng, lang, kind, "opener", used) if rng.random() < 0.85 else []
        body = self.class_part(rng, lang, kind, "body", used, k=rng.randint(1, max_body))
        if rng.random() < 0.35:
            body += self.pick(rng, DISTRACTORS[lang][label], f"{lang}/distractor/{label}", used)
        if rng.random() < 0.4:
            body += self.common(rng, lang, "noise", used, k=rng.randint(1, 2))
        rng.shuffle(body)
        core += body
        if rng.random() < 0.7:
            core += self.class_part(rng, lang, kind, "request", used)
        return core

    def compose(self, rng: random.Random, label: str, lang: str, facts: Facts, style: str) -> Composed:
        """One text document of `label` in `style` ("email", "portal" or "structured")."""
        used: list[str] = []
        kind = rng.choice(OTHER_KINDS) if label == "other" else label
        subject = self.class_part(rng, lang, kind, "subject", used)[0]
        voice = self.voice(rng, label) if style == "email" else "plain"
        if style == "structured":
            body = self._structured(rng, label, kind, lang, facts, used)
        elif style == "portal":
            body = self._portal(rng, label, kind, lang, facts, used)
        elif voice == "cv":
            body = self._cv_alone(rng, lang, facts, used)
        elif voice == "form":
            body = self._structured(rng, label, kind, lang, facts, used)
        elif voice == "paper":
            body = self._paper(rng, label, kind, lang, facts, used)
        elif voice == "social":
            body = " ".join(self.sentences(rng, label, kind, lang, used, max_body=3))
        else:
            body = self._email(rng, label, kind, lang, facts, used, long=voice == "letter")
        if voice in ("plain", "letter", "ticket") and rng.random() < (0.35 if label == "other" else 0.15):  # a reply or forward quoting earlier mail
            subject = rng.choice(["Re: ", "RE: ", "AW: ", "Fwd: ", "TR: "]) + subject
            for _ in range(rng.randint(1, 3) if label == "other" else 1):
                body += self._quote(rng, label, lang, used)
        text = fill(body, facts)
        if voice == "ticket":  # an e-mail (thread) turned into a ticket: its subject, often twice, then the text
            title = fill(subject, facts)
            subject, text = "", ticket_text(f"{title} {title if rng.random() < 0.4 else ''} {text}", facts.sender)
        elif voice == "social":
            subject, text = "", social_post(rng, text, facts)
        elif voice == "form" or (voice == "paper" and kind in COMMERCIAL):
            text = form_text(rng, text)
        elif voice == "paper":
            text = ocr_noise(rng, text.upper() if rng.random() < 0.3 else text)
        if voice == "paper" and rng.random() < 0.5:  # the text of a scanned page, not of an e-mail
            subject = ""
        if rng.random() < 0.3:
            text = add_typos(rng, text, rate=rng.uniform(0.01, 0.05))
        if voice not in ("ticket", "social", "paper") and rng.random() < 0.08:  # came in as paper and was OCRed upstream
            text = ocr_noise(rng, text)
        return Composed(fill(subject, facts), text, tuple(used))

    @staticmethod
    def voice(rng: random.Random, label: str) -> str:
        """The voice of an e-mail-channel text of `label` (see VOICES)."""
        weights = {**VOICES, **{v: VOICES.get(v, 0) + w for v, w in VOICE_EXTRA[label].items()}}
        return rng.choices(list(weights), weights=list(weights.values()))[0]

    def _quote(self, rng, label, lang, used) -> str:
        quoted_label = rng.choice(RELATED[label])
        quoted_kind = rng.choice(OTHER_KINDS) if quoted_label == "other" else quoted_label
        quoted = self.sentences(rng, quoted_label, quoted_kind, lang, used, max_body=4 if label == "other" else 2)
        if rng.random() < 0.5:
            return "\n\n> {date} {time}, {company}:\n" + "\n".join("> " + s for s in quoted)
        marker = {"en": "-----Original Message-----", "de": "-----Ursprüngliche Nachricht-----", "fr": "-----Message d'origine-----"}[lang]
        return f"\n\n{marker}\nFrom: {company_name(rng, lang)}\nSent: {{date}} {{time}}\n\n" + " ".join(quoted)

    def _email(self, rng, label, kind, lang, facts, used, long: bool = False) -> str:
        """An e-mail; `long`: a long first-person letter (many body sentences, no cover note)."""
        if rng.random() < 0.12 and not long:  # a short cover note: the attachment says it all
            lines = self.class_part(rng, lang, kind, "opener", used)
        else:
            lines = self.sentences(rng, label, kind, lang, used, max_body=12 if long else 8 if kind in ("report", "newsletter", "memo") else 5)
        paragraphs, i = [], 0
        while i < len(lines):
            step = rng.randint(1, 3)
            paragraphs.append(" ".join(lines[i:i + step]))
            i += step
        parts = []
        if rng.random() < (0.6 if long else 0.15):  # a letterhead or memo header, as on paper mail
            parts.append(rng.choice(["{company}\n{street}\n{city}\n{date}", "Date: {date}\nTo: {recipient_title}\nFrom: {name}",
                                     "{name}\n{street}, {city}\n\n{date}"]))
        if rng.random() < 0.85:
            parts += self.common(rng, lang, "greeting", used)
        parts += paragraphs
        if kind == "job_application" and rng.random() < 0.4:
            parts.append(self._cv_text(rng, lang, facts))
        if rng.random() < 0.9:
            signature = [self.common(rng, lang, "closing", used)[0], facts["name"]]
            if rng.random() < 0.4:  # a job title: every class signs with one, so a title alone names no class
                signature.append("{role}")
            if facts.sender.company and rng.random() < 0.8:
                signature.append(facts.sender.company)
            if rng.random() < 0.5:
                signature.append("{phone}")
            parts.append("\n".join(signature))
        if rng.random() < 0.25:
            parts += self.common(rng, lang, "disclaimer", used)
        return "\n\n".join(parts)

    def _portal(self, rng, label, kind, lang, facts, used) -> str:
        caption = {"en": ("Topic", "Name", "Customer no.", "Message"), "de": ("Thema", "Name", "Kundennr.", "Nachricht"),
                   "fr": ("Sujet", "Nom", "N° client", "Message")}[lang]
        lines = [f"{caption[0]}: {{portal_topic}}", f"{caption[1]}: {{name}}"]
        if rng.random() < 0.6:
            lines.append(f"{caption[2]}: {{customer_no}}")
        lines += [f"{caption[3]}:", " ".join(self.sentences(rng, label, kind, lang, used, max_body=5))]
        return "\n".join(lines)

    def _structured(self, rng, label, kind, lang, facts, used) -> str:
        number_key = {"invoice": "invoice_no", "offer": "offer_no", "purchase_order": "order_no"}.get(kind, "tracking_no")
        header = rng.choice(TABLE_HEADERS[lang])
        captions = {"en": ("No", "Date", "From", "To"), "de": ("Nr.", "Datum", "Von", "An"), "fr": ("N°", "Date", "De", "À")}[lang]
        lines = [self.class_part(rng, lang, kind, "subject", used)[0], f"{captions[0]}: {{{number_key}}}", f"{captions[1]}: {{date}}",
                 f"{captions[2]}: {{company}}", f"{captions[3]}: {{our_company}}", " | ".join(("#",) + header)]
        rows = line_items(rng, lang, rng.randint(1, 6))
        lines += [" | ".join((str(i + 1),) + row) for i, row in enumerate(rows)]
        if kind in ("invoice", "offer", "purchase_order") and rng.random() < 0.8:
            lines.append(f"{TOTAL_WORDS[lang][2]}: {{amount}}")
        lines += self.sentences(rng, label, kind, lang, used, max_body=3)
        return "\n".join(lines)

    def _paper(self, rng, label, kind, lang, facts, used) -> str:
        """A business document on paper (the `paper` voice): a letterhead, then for the COMMERCIAL kinds a title, captioned fields, a
        table of goods or services (description, quantity, prices), totals and a footer (`models.fragments.PAPER`); for the others a letter."""
        p = PAPER[lang]
        head = ["{company}", "{street}", "{city}"] + [f"{c}: {{phone}}" for c in rng.sample(p["contact"], rng.randint(0, 2))]
        if kind not in COMMERCIAL:
            return "\n".join(head) + "\n\n" + self._email(rng, label, kind, lang, facts, used, long=rng.random() < 0.5)
        fields = rng.sample(p["fields"][kind], min(len(p["fields"][kind]), rng.randint(3, 8)))
        lines = head + [rng.choice(p["title"][kind])] + [f"{caption}: {value}" if value else caption for caption, value in fields]
        which = rng.randrange(len(p["headers"])) if kind == "invoice" else 0
        header = p["headers"][which][:2] if kind == "shipping" else p["headers"][which]
        lines.append(" | ".join(header))
        for _ in range(rng.randint(1, 7)):
            qty, price = rng.randint(1, 200), rng.lognormvariate(3, 1.1)
            product = rng.choice(p["services"]) if which == 2 or (kind == "invoice" and rng.random() < 0.3) else rng.choice(VOCAB[lang]["product"])
            money = format_money(price, lang, rng), format_money(qty * price, lang, rng)
            row = {0: (str(qty), product, *money), 1: (str(rng.randint(100, 99999)), product, str(qty), money[1]),
                   2: ("{date}", product, str(rng.randint(1, 60)), *money), 3: (str(qty), str(qty), product, *money)}[which]
            lines.append(" | ".join(row[:2] if kind == "shipping" else ((str(rng.randint(1, 99)),) + row if which == 1 else row)))
        for caption in rng.sample(p["totals"][kind], min(len(p["totals"][kind]), rng.randint(1, 3))):
            lines.append(f"{caption}: {{amount}}" if kind != "shipping" else f"{caption}: {{qty2}}")
        if rng.random() < 0.4:
            lines += self.sentences(rng, label, kind, lang, used, max_body=2)
        lines += rng.sample(p["footer"][kind], min(len(p["footer"][kind]), rng.randint(0, 2)))
        return "\n".join(lines)

    def _cv_alone(self, rng, lang, facts, used) -> str:
        """A CV sent on its own (no letter): a summary line, the usual sections and some of CV_EXTRA_SECTIONS."""
        v, bullet = VOCAB[lang], rng.choice(["•", "-", "*", ""])
        lines = {0: lambda: ", ".join(rng.sample(v["skill"], rng.randint(3, 6))),
                 1: lambda: f"{rng.choice(v['position'])} at {company_name(rng, lang)} ({rng.randint(1, 9)} years): {rng.choice(v['duty'])}",
                 2: lambda: f"{rng.choice(v['degree'])}, {rng.choice(v['university'])}"}
        extra = [f"{title}\n" + "\n".join(f"{bullet} {lines[rng.randrange(3)]()}" for _ in range(rng.randint(1, 4)))
                 for title in rng.sample(CV_EXTRA_SECTIONS[lang], rng.randint(1, 3))]
        summary = self.pick(rng, CV_SUMMARY[lang], f"{lang}/cv/summary", used)
        parts = [summary[0], self._cv_text(rng, lang, facts), *extra]
        rng.shuffle(parts)
        return "\n\n".join(parts)

    def _cv_text(self, rng, lang, facts) -> str:
        """A CV pasted below a cover letter: sections in random order, some left out."""
        v, bullet = VOCAB[lang], rng.choice(["•", "-", "*", ""])
        start = rng.randint(2003, 2020)
        experience, education, skills, languages = CV_SECTIONS[lang]
        sections = {
            experience: [f"{bullet} {start + 2 * i}-{start + 2 * i + rng.randint(1, 3)} {rng.choice(v['position'])}, "
                         f"{company_name(rng, lang)}: {rng.choice(v['duty'])}" for i in range(rng.randint(1, 4))],
            education: [f"{bullet} {rng.choice(v['degree'])}, {rng.choice(v['university'])} ({start - rng.randint(1, 4)})"],
            skills: [f"{bullet} {s}" for s in rng.sample(v["skill"], rng.randint(2, 5))],
            languages: [f"{bullet} " + ", ".join(rng.sample(["English", "Deutsch", "Français", "Español", "Italiano", "Türkçe"], 2))],
        }
        chosen = rng.sample(list(sections), rng.randint(2, 4))
        return "\n\n".join([rng.choice(["CV", "Curriculum Vitae", facts["name"]])] + [f"{title}\n" + "\n".join(sections[title]) for title in chosen])


def ticket_text(text: str, sender: Sender) -> str:
    """What a help-desk system stores: lower-cased words without stop words, numbers, punctuation or the sender's name."""
    names = {part.lower() for part in sender.name.split()}
    words = re.findall(r"[^\W\d_]{2,}", text.lower())
    return " ".join(w for w in words if w not in TICKET_STOP_WORDS and w not in names)


def social_post(rng: random.Random, text: str, facts: Facts) -> str:
    """A short public post: one or two sentences of `text`, an @handle, maybe a hashtag, a link and lower case."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]
    post = " ".join(sentences[:rng.randint(1, 2)])[:260]
    handle = "@" + slug(facts["our_company"]).replace("-", "_")[:15]
    parts = [handle, post] if rng.random() < 0.7 else [post, handle]
    if rng.random() < 0.4:
        parts.append("#" + rng.choice(["fail", "help", "customerservice", "thanks", "jobs", "billing", "support", "news"]))
    if rng.random() < 0.4:
        parts.append("https://t.co/" + "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789") for _ in range(10)))
    post = " ".join(parts)
    return post.lower() if rng.random() < 0.3 else post


def form_text(rng: random.Random, text: str) -> str:
    """A form as OCR reads it: captions, values and table cells on lines of their own, often upper-case, with OCR errors."""
    text = re.sub(r" \| |: ", "\n", text)
    return ocr_noise(rng, text.upper() if rng.random() < 0.5 else text)


def line_items(rng: random.Random, lang: str, n: int) -> list[tuple[str, str, str, str]]:
    """n invoice/offer/order rows: (description, quantity, unit price, amount)."""
    rows = []
    for _ in range(n):
        qty, price = rng.randint(1, 200), rng.lognormvariate(3, 1.1)
        rows.append((rng.choice(VOCAB[lang]["product"]), str(qty), format_money(price, lang, rng), format_money(qty * price, lang, rng)))
    return rows


_OCR_CONFUSIONS = (("l", "1"), ("O", "0"), ("rn", "m"), ("e", "c"), ("S", "5"), ("i", "í"), (".", ","), ("ü", "u"), ("é", "e"))


def ocr_noise(rng: random.Random, text: str) -> str:
    """What OCR does to a page: confused glyphs, lost accents, broken and upper-cased lines."""
    for wrong, right in rng.sample(_OCR_CONFUSIONS, 3):
        text = re.sub(re.escape(wrong), lambda m: right if rng.random() < 0.15 else m.group(0), text)
    lines = []
    for line in text.split("\n"):
        if len(line) > 40 and rng.random() < 0.5:
            cut = rng.randrange(20, len(line) - 10)
            line = line[:cut] + "\n" + line[cut:]
        lines.append(line.upper() if rng.random() < 0.08 else line)
    return "\n".join(lines)


_SLOT = re.compile(r"\{(\w+)\}")


def fill(template: str, facts: Facts) -> str:
    """Replace {slot}s with the document's facts (unknown braces are left alone)."""
    return _SLOT.sub(lambda m: facts[m.group(1)], template)


def add_typos(rng: random.Random, text: str, rate: float) -> str:
    """Swap, drop or double letters in a share `rate` of the longer words."""
    def typo(m: re.Match) -> str:
        w = m.group(0)
        if rng.random() >= rate:
            return w
        i = rng.randrange(1, len(w) - 1)
        op = rng.randrange(3)
        if op == 0:
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if op == 1:
            return w[:i] + w[i + 1:]
        return w[:i] + w[i] + w[i:]
    return re.sub(r"[^\W\d_]{4,}", typo, text)
