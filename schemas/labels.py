"""The label set and the department that handles each label: what every party agrees on.

>>> department_of("invoice"), TRIAGE
('finance', 'triage')
"""

from __future__ import annotations

# label -> department that handles it (and whose topic receives it)
DEPARTMENTS: dict[str, str] = {
    "invoice": "finance",
    "offer": "sales",
    "purchase_order": "procurement",
    "job_application": "hr",
    "complaint": "customer-care",
    "service_request": "service-desk",
    "other": "triage",
}
LABELS: tuple[str, ...] = tuple(DEPARTMENTS)
TRIAGE = DEPARTMENTS["other"]  # where documents go that no model is sure about


def department_of(label: str) -> str:
    """The department whose topic receives documents with `label`."""
    return DEPARTMENTS[label]
