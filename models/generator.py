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
* no style gives the class away (`models.composing.VOICES`): e-mail texts of every class are also
  written as long first-person letters, help-desk tickets (lower-case, no stop words, names or
  numbers), short social-media posts with handles and links, OCRed forms and paper documents as OCR
  reads them (a letterhead with contact lines; invoices, statements, quotes, orders and delivery notes
  read cell by cell; letters for the other classes); a CV sent on its own is a job application, a job
  offer made to a candidate is `other`;
* `fragment_half=0|1` restricts every pool to a disjoint half of its fragments. The tests train
  on one half and evaluate on the other, and check that no class-specific fragment is used by
  more than a small share of its class.

Same `seed` and arguments -> byte-identical output (one `random.Random`, no hash()-ordered sets).
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

from schemas.labels import LABELS
from schemas.units import HOUR_MS
from models.composing import Facts, Sender, TextComposer, company_name, slug
from models.fragments import OUR_COMPANIES, VOCAB

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


@dataclass
class Mailbox:
    """The state of one generation run: the sender population and the clock."""

    rng: random.Random
    scan_share: float
    our_company: str
    senders: list[Sender] = field(default_factory=list)
    # label -> (the senders inclined to send it, their cumulative weights): sender_for picks in O(log n), not O(n)
    _inclined: dict[str, tuple[list[Sender], list[float]]] = field(default_factory=dict, init=False, repr=False)

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
        activity = r.paretovariate(1.5)
        paper_rate = 0.0 if self.scan_share <= 0 else 1.0 if self.scan_share >= 1 else r.betavariate(a, b)  # scan_share 1: every document a scan
        sender = Sender(f"{local}@{domain}", first, last, company, lang, role, activity=activity, paper_rate=paper_rate)
        self.senders.append(sender)
        for inclined, weight in ROLES[role][1].items():
            if weight:
                chosen, cumulative = self._inclined.setdefault(inclined, ([], []))
                chosen.append(sender)
                cumulative.append((cumulative[-1] if cumulative else 0) + sender.activity * weight)
        return sender

    def sender_for(self, label: str) -> Sender:
        """An existing sender inclined to send `label` (weighted by activity), or a new one."""
        candidates, cumulative = self._inclined.get(label, ([], []))
        if not candidates or self.rng.random() < NEW_SENDER_P.get(label, 0.15):
            return self.new_sender(label)
        return self.rng.choices(candidates, cum_weights=cumulative)[0]  # the same draw as weights=, summed as they came


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
