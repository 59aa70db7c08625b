"""The bench's documents: generated once, routed in plain Python, read by every variant."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from mailroom.bench.output import console
from schemas.units import now_ms
from schemas import codec


@dataclass
class Corpus:
    """The generated documents and their routed forms (topic key, routed_document bytes)."""

    documents: list[dict]
    routed: list[tuple[str, bytes]]

    @property
    def scan_share(self) -> float:
        return sum(key == "routed_scans" for key, _ in self.routed) / max(1, len(self.routed))

    @property
    def mix(self) -> str:
        """The input column of the variants that read every routed document."""
        return f"mixed {self.scan_share:.0%} scans"


def build_corpus(n: int, seed: int, scan_share: float) -> Corpus:
    """`n` generated documents, routed by udfs.routing in plain Python (what the router job does)."""
    from mailroom.produce import to_document
    from models.generator import generate
    from udfs.routing import Destination, Router, RouterConfig

    with console.status(f"generating {n:,} documents (seed {seed}, scan share {scan_share:.0%})"):
        documents = generate(n, seed=seed, scan_share=scan_share)
    router, now = Router(RouterConfig()), now_ms()
    routed = []
    for offset, doc in enumerate(tqdm(documents, desc="routing (plain Python)", unit="doc")):
        result = router.route(codec.encode("document", to_document(doc, doc["received_ms"])), "bench", 0, offset, now)
        if result.destination is not Destination.DEAD_LETTER:
            routed.append((result.destination.value, result.value))
    return Corpus(documents, routed)


def pending_documents(corpus: Corpus) -> list:
    """The routed documents with their sender features, as the scorer receives them."""
    from models.features import SenderHistory
    from udfs.dead_letters import SourceRecord
    from udfs.scoring import SenderFeatures

    features, histories = SenderFeatures(mirror=None), {}
    pending = []
    for offset, (_, value) in enumerate(tqdm(corpus.routed, desc="limit: model inputs", unit="doc")):
        routed = codec.decode(value, expected="routed_document").record
        pending.append(features.observe(histories.setdefault(routed["sender"], SenderHistory()), routed, SourceRecord(value, "", 0, offset)))
    return pending
