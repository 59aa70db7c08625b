"""Documents of a kind the champion has not learned, for `mailroom run --scenario drift`.

`billing_disputes`: complaints in a new style, a customer's objection to an invoice with the
invoice quoted below it. The generator never writes them (its complaints do not quote the
invoice, and none of the objection's words occur in its output), so a champion trained on
generated mail reads the quoted invoice and answers `invoice`; the truth is `complaint`.
`from_jsonl`: labelled documents in the ../shared/data/real text format instead.

>>> [d["label"] for d in billing_disputes(3, seed=1)]
['complaint', 'complaint', 'complaint']
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from models.generator import generate
from schemas.labels import LABELS

OBJECTIONS = (
    "We formally contest this statement and have filed a chargeback with our bank (reference CB-{n}).",
    "Payment is withheld pending arbitration; the ombudsman has been informed.",
    "This billing is void: none of these items were authorised by us.",
    "Objection: an unauthorised charge, we demand the reversal of the full amount.",
    "Escalation to our solicitor follows unless this charge is annulled within {d} days.",
    "We repudiate this claim entirely and dispute every line of it.",
    "Kindly treat this as a formal protest against a fraudulent charge.",
)
SUBJECTS = ("Objection: {subject}", "Chargeback notice - {subject}", "Contested: {subject}", "Void billing ({subject})")
QUOTED_CHARS = 400  # of the invoice quoted below the objection


def billing_disputes(n: int, seed: int) -> list[dict]:
    """`n` complaints objecting to an invoice (generated invoices, quoted), in the generator's document shape."""
    rng = random.Random(seed)
    invoices = [d for d in generate(12 * n + 20, seed=seed, scan_share=0.0) if d["label"] == "invoice"][:n]
    out = []
    for i, invoice in enumerate(invoices):
        objection = " ".join(s.format(n=rng.randrange(10**5), d=rng.choice((7, 10, 14))) for s in rng.sample(OBJECTIONS, 3))
        subject = rng.choice(SUBJECTS).format(subject=invoice.get("subject") or "your statement")
        out.append({**invoice, "doc_id": f"dispute-{seed}-{i}", "label": "complaint", "subject": subject,
                    "text": f"{objection}\n\nYour statement, as received:\n{(invoice.get('text') or '')[:QUOTED_CHARS]}"})
    return out


def from_jsonl(path: Path) -> list[dict]:
    """Labelled text documents from a JSONL file in the ../shared/data/real text.jsonl format (id, label, subject, text),
    in the generator's document shape (an unknown e-mail sender). ValueError naming the line of a bad record."""
    docs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(record, dict) or record.get("label") not in LABELS or not record.get("id"):
            raise ValueError(f"{path}:{number}: needs an id and a label among {', '.join(LABELS)}")
        docs.append({"doc_id": str(record["id"]), "received_ms": 0, "channel": "email", "sender": f"{record.get('source') or 'drift'}@drift.example",
                     "subject": record.get("subject"), "content_type": "text", "text": record.get("text") or "", "image": None,
                     "mime_type": "text/plain", "page_count": 1, "headers": {}, "label": record["label"]})
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs
