"""A seeded, deterministic generator of a realistic labelled mailbox.

`generate(n, seed)` returns `n` documents (plain dicts, see `generate`) in receipt order:
e-mails, portal submissions, API uploads and scans of invoices, offers, purchase orders, job
applications, complaints, service requests and other mail, in English, German and French.
Senders recur with per-sender class tendencies (a supplier mostly sends invoices and offers,
a consumer mostly complaints and service requests), so per-sender context features carry signal.

Guard against learning templates instead of document types:
* every text is composed from pools of interchangeable fragments (models/fragments.py): an
  optional greeting, opener, 1-5 body sentences sampled without replacement and shuffled, an
  optional request, closing, signature and disclaimer; slots ({amount}, {product}, ...) get fresh
  values per document; parts are omitted at random; noise sentences, cross-class distractors
  (a complaint quoting an invoice number, a newsletter advertising offers), quoted replies of
  other classes, typos and OCR errors are mixed in;
* `fragment_half=0|1` restricts every pool to a disjoint half of its fragments. The tests train
  on one half and evaluate on the other, and check that no class-specific fragment is used by
  more than a small share of its class.

Same `seed` and arguments -> byte-identical output (one `random.Random`, no hash()-ordered sets).
"""

from __future__ import annotations

import base64
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

from schemas.labels import LABELS
from schemas.units import DAY_MS, HOUR_MS
from models.fragments import (CLASS_FRAGMENTS, COMMON, CV_SECTIONS, DISTRACTORS, OTHER_KINDS, OUR_COMPANIES, PORTAL_TOPICS, TABLE_HEADERS,
                              TOTAL_WORDS, VOCAB)

LANGS = ("en", "de", "fr")
LANG_WEIGHTS = (0.7, 0.2, 0.1)
START_MS = int(datetime(2025, 3, 3, 7, 0, tzinfo=timezone.utc).timestamp() * 1000)

# share of each label among documents that do not continue a sender's burst, in LABELS order
LABEL_PRIOR = dict(zip(LABELS, (0.19, 0.11, 0.12, 0.1, 0.13, 0.15, 0.2), strict=True))
# sender role -> (relative population, label tendencies, uses free-mail addresses)
ROLES: dict[str, tuple[float, dict[str, float], bool]] = {
    "supplier": (3, {"invoice": 60, "offer": 18, "other": 12, "complaint": 4, "service_request": 4, "purchase_order": 2}, False),
    "sales_rep": (2, {"offer": 65, "invoice": 12, "other": 23}, False),
    "business_customer": (3, {"purchase_order": 50, "complaint": 15, "service_request": 15, "invoice": 5, "other": 15}, False),
    "consumer": (4, {"complaint": 45, "service_request": 40, "other": 10, "purchase_order": 5}, True),
    "applicant": (3, {"job_application": 92, "other": 8}, True),
    "recruiter": (1, {"job_application": 75, "other": 25}, False),
    "newsletter": (1, {"other": 85, "offer": 15}, False),
    "colleague": (2, {"other": 60, "service_request": 20, "purchase_order": 10, "complaint": 5, "job_application": 5}, False),
}
NEW_SENDER_P = {"job_application": 0.7, "complaint": 0.35, "service_request": 0.3}  # default 0.15
BURST_P = 0.2  # the same sender sends again within minutes
RELATED = {"complaint": ("invoice", "service_request", "purchase_order"), "purchase_order": ("offer",), "invoice": ("purchase_order",),
           "offer": ("purchase_order",), "service_request": ("complaint",), "job_application": ("other",), "other": ("other", "other", "offer", "invoice")}


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
        if style == "structured":
            body = self._structured(rng, label, kind, lang, facts, used)
        elif style == "portal":
            body = self._portal(rng, label, kind, lang, facts, used)
        else:
            body = self._email(rng, label, kind, lang, facts, used)
        if rng.random() < (0.35 if label == "other" else 0.15):  # a reply or forward quoting earlier mail
            subject = rng.choice(["Re: ", "RE: ", "AW: ", "Fwd: ", "TR: "]) + subject
            for _ in range(rng.randint(1, 3) if label == "other" else 1):
                body += self._quote(rng, label, lang, used)
        text = fill(body, facts)
        if rng.random() < 0.3:
            text = add_typos(rng, text, rate=rng.uniform(0.01, 0.05))
        if rng.random() < 0.08:  # came in as paper and was OCRed upstream
            text = ocr_noise(rng, text)
        return Composed(fill(subject, facts), text, tuple(used))

    def _quote(self, rng, label, lang, used) -> str:
        quoted_label = rng.choice(RELATED[label])
        quoted_kind = rng.choice(OTHER_KINDS) if quoted_label == "other" else quoted_label
        quoted = self.sentences(rng, quoted_label, quoted_kind, lang, used, max_body=4 if label == "other" else 2)
        if rng.random() < 0.5:
            return "\n\n> {date}, {company}:\n" + "\n".join("> " + s for s in quoted)
        marker = {"en": "-----Original Message-----", "de": "-----Ursprüngliche Nachricht-----", "fr": "-----Message d'origine-----"}[lang]
        return f"\n\n{marker}\nFrom: {company_name(rng, lang)}\nSent: {{date}}\n\n" + " ".join(quoted)

    def _email(self, rng, label, kind, lang, facts, used) -> str:
        if rng.random() < 0.12:  # a short cover note: the attachment says it all
            lines = self.class_part(rng, lang, kind, "opener", used)
        else:
            lines = self.sentences(rng, label, kind, lang, used, max_body=8 if kind in ("report", "newsletter", "memo") else 5)
        paragraphs, i = [], 0
        while i < len(lines):
            step = rng.randint(1, 3)
            paragraphs.append(" ".join(lines[i:i + step]))
            i += step
        parts = []
        if rng.random() < 0.85:
            parts += self.common(rng, lang, "greeting", used)
        parts += paragraphs
        if kind == "job_application" and rng.random() < 0.4:
            parts.append(self._cv_text(rng, lang, facts))
        if rng.random() < 0.9:
            signature = [self.common(rng, lang, "closing", used)[0], facts["name"]]
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


@dataclass
class Mailbox:
    """The state of one generation run: the sender population and the clock."""

    rng: random.Random
    scan_share: float
    our_company: str
    senders: list[Sender] = field(default_factory=list)

    def new_sender(self, label: str) -> Sender:
        r = self.rng
        roles = [role for role, (_, mix, _) in ROLES.items() if mix.get(label)]
        role = r.choices(roles, weights=[ROLES[x][0] * ROLES[x][1][label] for x in roles])[0]
        lang = r.choices(LANGS, weights=LANG_WEIGHTS)[0]
        v = VOCAB[lang]
        first, last = r.choice(v["first"]), r.choice(v["last"])
        person = slug(f"{first}.{last}").replace("-", ".")
        if ROLES[role][2]:
            company, domain = None, r.choice(v["freemail"])
            local = person + r.choice(["", str(r.randint(1, 99)), str(r.randint(1960, 2004))])
        elif role == "colleague":
            company, domain, local = self.our_company, slug(self.our_company) + ".example", person
        else:
            company = company_name(r, lang)
            domain = slug(company.rsplit(" ", 1)[0]) + r.choice(v["tld"])
            local = {"supplier": r.choice(["billing", "accounts", "invoices", person]), "newsletter": r.choice(["newsletter", "no-reply", "news"]),
                     "recruiter": r.choice(["talent", "jobs", person])}.get(role, person)
        a = 1.5
        b = a * (1 - self.scan_share) / max(self.scan_share, 1e-3)
        sender = Sender(f"{local}@{domain}", first, last, company, lang, role,
                        activity=r.paretovariate(1.5), paper_rate=r.betavariate(a, b) if self.scan_share > 0 else 0.0)
        self.senders.append(sender)
        return sender

    def sender_for(self, label: str) -> Sender:
        """An existing sender inclined to send `label` (weighted by activity), or a new one."""
        candidates = [s for s in self.senders if ROLES[s.role][1].get(label)]
        if not candidates or self.rng.random() < NEW_SENDER_P.get(label, 0.15):
            return self.new_sender(label)
        return self.rng.choices(candidates, weights=[s.activity * ROLES[s.role][1][label] for s in candidates])[0]


def generate(n: int, seed: int, scan_share: float = 0.3, fragment_half: int | None = None, start_ms: int = START_MS) -> list[dict]:
    """`n` labelled documents in receipt order. Each is a dict with doc_id, received_ms, channel,
    sender, subject, content_type ("text"|"image"), text, image (PNG bytes), mime_type,
    page_count, headers and label. `scan_share` is the expected share of scans."""
    from models.scans import render_scan

    rng = random.Random(seed)
    box = Mailbox(rng, scan_share, rng.choice(OUR_COMPANIES))
    composer = TextComposer(fragment_half)
    our_domain = slug(box.our_company) + ".example"
    recipients = [(rng.choice(VOCAB["en"]["first"]), rng.choice(VOCAB["en"]["last"])) for _ in range(6)]
    docs, now, previous = [], start_ms + rng.randint(0, HOUR_MS), None
    for i in range(n):
        if previous is not None and rng.random() < BURST_P:
            sender = previous
            mix = ROLES[sender.role][1]
            label = rng.choices(list(mix), weights=list(mix.values()))[0]
            now += rng.randint(20_000, 900_000)
        else:
            label = rng.choices(list(LABEL_PRIOR), weights=list(LABEL_PRIOR.values()))[0]
            sender = box.sender_for(label)
            now += int(rng.expovariate(1 / _mean_gap_s(now)) * 1000) + rng.randint(1, 999)
        previous = sender
        lang = sender.lang if rng.random() < 0.9 else rng.choice(LANGS)
        facts = Facts(rng, lang, sender, rng.choice(recipients), box.our_company, now)
        is_scan = rng.random() < sender.paper_rate
        channel = _channel(rng, label, is_scan)
        doc_id = f"gen-{seed}-{i:06d}"
        headers = _headers(rng, channel, sender, our_domain, now, doc_id)
        if is_scan:
            image = render_scan(rng, label, lang, facts, composer)
            subject = composer.compose(rng, label, lang, facts, "email").subject if channel == "email" else f"Scan {headers['X-Scanner-Id']} {i:06d}"
            text, mime, pages = None, "image/png", 1
        else:
            style = {"portal": "portal", "api": "structured"}.get(channel, "email")
            composed = composer.compose(rng, label, lang, facts, style)
            subject, text, image, mime = composed.subject, composed.body, None, "text/plain"
            pages = 1 + len(text) // 3000
        if channel == "email":
            headers["Subject"] = subject
        docs.append({"doc_id": doc_id, "received_ms": now, "channel": channel, "sender": sender.address, "subject": subject,
                     "content_type": "image" if is_scan else "text", "text": text, "image": image, "mime_type": mime,
                     "page_count": pages, "headers": headers, "label": label})
    return docs


def _mean_gap_s(now_ms: int) -> float:
    t = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
    return 150.0 if t.weekday() < 5 and 7 <= t.hour < 19 else 1500.0


def _channel(rng: random.Random, label: str, is_scan: bool) -> str:
    if is_scan:
        return "scanner" if rng.random() < 0.85 else "email"
    weights = {"portal": {"complaint": 0.3, "service_request": 0.35}.get(label, 0.03),
               "api": {"invoice": 0.25, "purchase_order": 0.3, "offer": 0.1}.get(label, 0.0)}
    x = rng.random()
    if x < weights["portal"]:
        return "portal"
    if x < weights["portal"] + weights["api"]:
        return "api"
    return "email"


def _headers(rng: random.Random, channel: str, sender: Sender, our_domain: str, now_ms: int, doc_id: str) -> dict[str, str]:
    date = format_datetime(datetime.fromtimestamp(now_ms / 1000, timezone.utc))
    token = f"{rng.getrandbits(64):016x}"
    if channel == "email":
        return {"From": f"{sender.name} <{sender.address}>", "To": f"{rng.choice(['info', 'office', 'post', 'service'])}@{our_domain}", "Date": date,
                "Message-ID": f"<{token}@{sender.address.split('@')[1]}>", "MIME-Version": "1.0"}
    if channel == "portal":
        return {"X-Portal-Form": rng.choice(["contact", "support", "feedback"]), "X-Portal-Session": token, "Date": date}
    if channel == "api":
        return {"X-Api-Client": slug(sender.company or sender.address), "X-Request-Id": token, "Date": date}
    return {"X-Scanner-Id": f"scan-{rng.randint(1, 4):02d}", "X-Scan-Dpi": rng.choice(["200", "300"]), "X-Batch-Id": f"B{now_ms // HOUR_MS}", "Date": date}


# --- writing and reading ---------------------------------------------------------------------

MANIFEST_FIELDS = ("doc_id", "received_ms", "channel", "sender", "subject", "content_type", "mime_type", "page_count", "headers", "label")


def write_directory(docs: list[dict], directory: Path) -> Path:
    """One file per document (.eml for e-mails, .txt for other texts, .png for scans) plus
    labels.jsonl (every field except the content, and the file name). Returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "labels.jsonl"
    with manifest.open("w", encoding="utf-8") as out:
        for doc in docs:
            if doc["content_type"] == "image":
                name = f"{doc['doc_id']}.png"
                (directory / name).write_bytes(doc["image"])
            elif doc["channel"] == "email":
                name = f"{doc['doc_id']}.eml"
                head = "".join(f"{k}: {v}\n" for k, v in doc["headers"].items())
                (directory / name).write_text(f"{head}Content-Type: text/plain; charset=utf-8\n\n{doc['text']}\n", encoding="utf-8")
            else:
                name = f"{doc['doc_id']}.txt"
                (directory / name).write_text(doc["text"], encoding="utf-8")
            out.write(json.dumps({**{k: doc[k] for k in MANIFEST_FIELDS}, "file": name}, ensure_ascii=False) + "\n")
    return manifest


def write_jsonl(docs: list[dict], path: Path) -> None:
    """All documents in one JSONL file: texts inline, images base64-encoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for doc in docs:
            image = base64.b64encode(doc["image"]).decode("ascii") if doc["image"] is not None else None
            out.write(json.dumps({**doc, "image": image}, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Inverse of write_jsonl."""
    docs = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            if doc.get("image") is not None:
                doc["image"] = base64.b64decode(doc["image"])
            docs.append(doc)
    return docs
