"""mailroom/drift.py: the drifted documents of `mailroom run --scenario drift`."""

from __future__ import annotations

import json
import re

import pytest

from mailroom.drift import OBJECTIONS, billing_disputes, from_jsonl
from mailroom.produce import to_document
from models.generator import generate


def test_billing_disputes_are_complaints_quoting_an_invoice_in_words_the_generator_never_writes():
    disputes = billing_disputes(20, seed=3)
    assert len(disputes) == 20 and {d["label"] for d in disputes} == {"complaint"} and len({d["doc_id"] for d in disputes}) == 20
    generated = {w for d in generate(1500, seed=7, scan_share=0.0) for w in re.findall(r"\w+", f"{d['subject']} {d['text']}".lower())}
    for word in ("chargeback", "ombudsman", "arbitration", "repudiate", "annulled"):
        assert word not in generated and any(word in o.lower() for o in OBJECTIONS)
    assert all("Your statement, as received:" in d["text"] for d in disputes)
    to_document({k: v for k, v in disputes[0].items() if k != "label"}, 0)  # a document upstream can send


def test_a_drift_file_in_the_real_data_format_reads_as_documents(tmp_path):
    path = tmp_path / "drift.jsonl"
    path.write_text(json.dumps({"id": "cfpb-1", "source": "cfpb", "label": "complaint", "subject": None, "text": "remove this inquiry"})
                    + "\n\n" + json.dumps({"id": "t-2", "source": "tickets", "label": "service_request", "text": "vpn down"}) + "\n")
    docs = from_jsonl(path)
    assert [(d["doc_id"], d["label"], d["sender"]) for d in docs] == [("cfpb-1", "complaint", "cfpb@drift.example"),
                                                                     ("t-2", "service_request", "tickets@drift.example")]
    to_document({k: v for k, v in docs[0].items() if k != "label"}, 0)
    path.write_text(json.dumps({"id": "x", "label": "memo"}) + "\n")
    with pytest.raises(ValueError, match="drift.jsonl:1: needs an id and a label"):
        from_jsonl(path)
