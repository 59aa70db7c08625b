"""What one scoring subtask serves: per model kind, a scorer in each slot, changed by the
records of the model-control topic. Plain Python (no pyflink); udfs/adapters/scoring.py calls
it at record boundaries, on its onnxruntime thread.

    CHAMPION    decides every document of its kind (never empty: a retire is refused)
    CHALLENGER  scores a sample in shadow (`ModelPointer.shadow_sample`)
    PREVIOUS    the fallback when the champion misses its deadline

A deploy is checked before it serves (`models.pointers.load_checked`); a refused one leaves
the slot as it was. Applying the same record twice changes nothing, so a subtask can replay
the control state it restored from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models.pointers import ModelPointer, ModelRefused

SLOTS = ("CHAMPION", "CHALLENGER", "PREVIOUS")


@dataclass(frozen=True)
class SlotChange:
    """The outcome of one control record on one subtask (a model_event record, less job and subtask)."""

    kind: str
    slot: str
    outcome: str  # SERVING | REFUSED | RETIRED
    model_name: str
    version: str | None
    serving_version: str | None
    reason: str | None = None

    def record(self, job: str, subtask: int, at_ms: int) -> dict:
        return {"job": job, "subtask": subtask, "kind": self.kind, "slot": self.slot, "outcome": self.outcome,
                "model_name": self.model_name, "version": self.version, "serving_version": self.serving_version,
                "reason": self.reason, "at_ms": at_ms}


class ModelSlots:
    """Scorers by (kind, slot). `load(pointer)` opens and checks a model (raises ModelRefused)."""

    def __init__(self, champions: dict, load: Callable[[ModelPointer], object]):
        self.load = load
        self._scorers: dict[tuple[str, str], object] = {(kind, "CHAMPION"): scorer for kind, scorer in champions.items()}
        self._pointers: dict[tuple[str, str], ModelPointer] = {}
        self.kinds = tuple(champions)

    def serving(self, kind: str, slot: str = "CHAMPION"):
        """The scorer in the slot, or None."""
        return self._scorers.get((kind, slot))

    def pointer(self, kind: str, slot: str) -> ModelPointer | None:
        return self._pointers.get((kind, slot))

    def versions(self) -> dict[tuple[str, str], int]:
        """The version number each (kind, slot) serves; 0 for an empty slot (or a version that is no number)."""
        return {(kind, slot): _number(getattr(self._scorers.get((kind, slot)), "version", None)) for kind in self.kinds for slot in SLOTS}

    def at_start(self) -> list[SlotChange]:
        """What this subtask serves now: one SERVING change per filled slot."""
        return [SlotChange(kind, slot, "SERVING", scorer.name, scorer.version, scorer.version) for (kind, slot), scorer in self._scorers.items()]

    def apply(self, record: dict) -> SlotChange:
        """Carry out one model_control record."""
        kind, slot, name = record["kind"], record["slot"], record["model_name"]
        current = self._scorers.get((kind, slot))
        now_serving = None if current is None else current.version
        if record["action"] == "RETIRE":
            if slot == "CHAMPION":
                return SlotChange(kind, slot, "REFUSED", name, None, now_serving, "the champion slot cannot be emptied: deploy another champion")
            self._scorers.pop((kind, slot), None)
            self._pointers.pop((kind, slot), None)
            return SlotChange(kind, slot, "RETIRED", name, None, None)
        pointer = ModelPointer.from_record(record)
        if self._pointers.get((kind, slot)) == pointer:
            return SlotChange(kind, slot, "SERVING", name, pointer.version, now_serving)  # a replay: nothing to do
        try:
            scorer = self.load(pointer)
        except ModelRefused as exc:
            return SlotChange(kind, slot, "REFUSED", name, pointer.version, now_serving, str(exc))
        self._scorers[(kind, slot)] = scorer
        self._pointers[(kind, slot)] = pointer
        return SlotChange(kind, slot, "SERVING", name, pointer.version, pointer.version)



def _number(version) -> int:
    return int(version) if str(version).isdigit() else 0
