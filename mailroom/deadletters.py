"""`mailroom dead-letters`: count and list dead letters by reason, and replay chosen ones.

Replay sends each dead letter's original bytes, unchanged, back to the topic it came from (or
`--to`), after the cause was fixed (for example a schema the router now knows).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from mailroom.kafkautil import producer, read_topic
from config.settings import Settings
from schemas.topics import topic_name
from schemas import codec

console = Console(width=160)


@dataclass(frozen=True)
class DeadLetter:
    offset: int  # in the dead-letter topic
    partition: int
    record: dict

    @property
    def reason(self) -> str:
        return self.record["reason"]


def read_dead_letters(settings: Settings, topic: str, timeout_s: float = 10) -> list[DeadLetter]:
    letters = []
    for message in read_topic(settings, topic, timeout_s=timeout_s):
        _, _, record = codec.decode(message.value, expected="dead_letter")
        letters.append(DeadLetter(message.offset, message.partition, record))
    return letters


def select(letters: list[DeadLetter], reasons: list[str] | None = None, doc_ids: list[str] | None = None,
           offsets: list[int] | None = None) -> list[DeadLetter]:
    """The dead letters matching every given filter (a filter left as None matches all)."""
    return [
        d for d in letters
        if (not reasons or d.reason in reasons) and (not doc_ids or d.record["doc_id"] in doc_ids) and (not offsets or d.offset in offsets)
    ]


def replay(settings: Settings, letters: list[DeadLetter], to_topic: str | None = None) -> int:
    """Send the original bytes of `letters` back to their source topic (or `to_topic`)."""
    prod = producer(settings)
    for letter in letters:
        key = letter.record["doc_id"].encode() if letter.record["doc_id"] else None
        prod.send(to_topic or letter.record["source_topic"], letter.record["original"], key=key)
    prod.flush()
    prod.close()
    return len(letters)


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    topic = args.topic or topic_name("dead_letters", settings.topic_prefix)
    letters = read_dead_letters(settings, topic)
    chosen = select(letters, args.reason, args.doc_id, args.offset)
    counts = Counter(d.reason for d in letters)
    table = Table(title=f"Dead letters in {topic}: {len(letters)}")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for reason, count in counts.most_common():
        table.add_row(reason, str(count))
    console.print(table)
    if args.list:
        listing = Table(title=f"{min(len(chosen), args.limit)} of {len(chosen)} selected")
        for col in ("offset", "reason", "doc_id", "source", "bytes", "message"):
            listing.add_column(col)
        for d in chosen[-args.limit:]:
            r = d.record
            listing.add_row(f"{d.partition}:{d.offset}", d.reason, str(r["doc_id"]), f"{r['source_topic']}[{r['source_partition']}]@{r['source_offset']}",
                            str(len(r["original"])), r["message"][:80])
        console.print(listing)
    if args.replay:
        if not (args.reason or args.doc_id or args.offset):
            console.print("[red]error:[/red] --replay needs a selection (--reason, --doc-id or --offset), so nothing is replayed by accident.")
            return 2
        sent = replay(settings, chosen, args.to)
        console.print(f"replayed {sent} dead letter(s) to {args.to or 'their source topic'}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser(
        "dead-letters", help="count and list dead letters by reason; replay chosen ones",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--topic", help="dead-letter topic (default: the declared one)")
    parser.add_argument("--reason", action="append", help="select by reason code (repeatable), e.g. CORRUPT_IMAGE")
    parser.add_argument("--doc-id", action="append", help="select by doc_id (repeatable)")
    parser.add_argument("--offset", action="append", type=int, help="select by offset in the dead-letter topic (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the selected dead letters (newest last)")
    parser.add_argument("--limit", type=int, default=50, help="at most this many rows with --list (default 50)")
    parser.add_argument("--replay", action="store_true", help="send the selected originals back to their source topic")
    parser.add_argument("--to", help="with --replay: send to this topic instead")
    parser.set_defaults(func=_cmd)
