"""`mailroom feedback`: send ground truth (ground_truth.v1, key: doc_id) to the ground-truth topic.

Three sources: one verdict from the command line (--doc-id X --label invoice [--kind CORRECT]),
a file (JSONL objects, or CSV with the columns doc_id,label[,kind,comment,department,sent_ms],
header optional), or --simulate: realistic feedback from departments on documents we sent
(`simulate_feedback`). Every input is validated first (labels against schemas.labels.LABELS);
a file with an invalid line sends nothing unless --skip-invalid.

As a library (what `make run` uses):

    records = simulate_feedback(documents, seed=1, profile=FeedbackProfile(drift=("invoice", "purchase_order")))
    report = send_feedback(kafka_producer, topic, records)
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from rich.console import Console
from tqdm import tqdm

from config.settings import Settings
from schemas.labels import DEPARTMENTS, LABELS
from schemas.topics import topic_name
from schemas.units import DAY_MS, MINUTE_MS
from schemas import codec

console = Console(width=160)
err = Console(stderr=True)

KINDS = ("CONFIRM", "CORRECT")
FILE_COLUMNS = ("doc_id", "label", "kind", "comment", "department", "sent_ms")  # CSV column order without a header
MAX_DOC_ID_CHARS = 200
_BAD_ID_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


# --- validation ------------------------------------------------------------------------------


def check_label(label) -> str:
    """`label`, trimmed and lower-cased, if it is one of LABELS; ValueError saying what is."""
    cleaned = str(label).strip().lower()
    if cleaned in LABELS:
        return cleaned
    close = difflib.get_close_matches(cleaned, LABELS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown label {label!r}{hint} (labels: {', '.join(LABELS)})")


def ground_truth(raw: Mapping, now_ms: int) -> dict:
    """A ground_truth.v1 record from a looser dict (CLI, JSONL line, CSV row). Raises ValueError.

    label: one of LABELS (any case); kind: CONFIRM (default) or CORRECT; department: that of the
    label by default; sent_ms: now_ms by default; comment: optional, empty means none."""
    unknown = set(raw) - set(FILE_COLUMNS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(FILE_COLUMNS)}")
    doc_id = str(raw.get("doc_id") or "").strip()
    if not doc_id:
        raise ValueError("doc_id is missing")
    if len(doc_id) > MAX_DOC_ID_CHARS or _BAD_ID_CHARS.search(doc_id):
        raise ValueError(f"doc_id {doc_id[:60]!r} is not a document id (at most {MAX_DOC_ID_CHARS} characters, no whitespace)")
    if raw.get("label") in (None, ""):
        raise ValueError("label is missing")
    label = check_label(raw["label"])
    kind = str(raw.get("kind") or "CONFIRM").strip().upper()
    if kind not in KINDS:
        raise ValueError(f"kind {raw.get('kind')!r} is neither CONFIRM nor CORRECT")
    sent_ms = raw.get("sent_ms")
    try:
        sent_ms = now_ms if sent_ms in (None, "") else int(sent_ms)
    except (TypeError, ValueError):
        raise ValueError(f"sent_ms {sent_ms!r} is not epoch milliseconds") from None
    comment = raw.get("comment")
    return {"doc_id": doc_id, "label": label, "department": str(raw.get("department") or DEPARTMENTS[label]),
            "sent_ms": sent_ms, "kind": kind, "comment": str(comment) if comment not in (None, "") else None}


def read_feedback_file(path: Path, now_ms: int) -> tuple[list[dict], list[str]]:
    """(records, errors) from a .jsonl or .csv file; each error names its line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read: {exc}"]
    rows = _csv_rows(text) if path.suffix.lower() == ".csv" else _jsonl_rows(text)
    records, errors = [], []
    for number, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            records.append(ground_truth(row, now_ms))
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
    return records, errors


def _jsonl_rows(text: str):
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            yield number, row if isinstance(row, dict) else ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as exc:
            yield number, ValueError(f"not JSON: {exc}")


def _csv_rows(text: str):
    lines = list(csv.reader(io.StringIO(text)))
    header = [cell.strip().lower() for cell in lines[0]] if lines else []
    has_header = "doc_id" in header
    columns = header if has_header else list(FILE_COLUMNS)
    for number, cells in enumerate(lines[1:] if has_header else lines, 2 if has_header else 1):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(columns):
            yield number, ValueError(f"{len(cells)} columns, expected at most {len(columns)} ({', '.join(columns)})")
            continue
        yield number, dict(zip(columns, (cell.strip() for cell in cells)))


# --- simulation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackProfile:
    """How departments answer. Shares are per document given."""

    unanswered_share: float = 0.15  # never get ground truth
    correction_share: float = 0.05  # a first, wrong verdict, then a CORRECT with the true label
    duplicate_share: float = 0.03  # the verdict is delivered twice (identical record)
    orphan_share: float = 0.02  # an extra verdict about a doc_id we never sent
    too_late_share: float = 0.01  # answered after the join stopped waiting
    median_delay_ms: int = 30 * MINUTE_MS  # delays are log-normal around this: seconds to hours
    max_delay_ms: int = 2 * DAY_MS
    too_late_delay_ms: int = 8 * DAY_MS  # a too-late verdict comes this long (up to a day more) after receipt
    drift: tuple[str, str] | None = None  # (X, Y): documents of class X are now, truly, Y
    drift_from_ms: int | None = None  # drift applies to documents received from here on (None: all)

    def __post_init__(self):
        shares = (self.unanswered_share, self.correction_share, self.duplicate_share, self.orphan_share, self.too_late_share)
        if not all(0.0 <= share <= 1.0 for share in shares):
            raise ValueError(f"shares must be between 0 and 1: {self}")
        if self.drift is not None:
            old, new = (check_label(label) for label in self.drift)
            if old == new:
                raise ValueError(f"drift {old} -> {new} changes nothing")


def simulate_feedback(documents: Iterable[Mapping], seed: int = 0, profile: FeedbackProfile = FeedbackProfile()) -> list[dict]:
    """Ground truth, as departments would send it, for documents we sent, sorted by sent_ms.

    Each document needs doc_id, label (its TRUE label, as the generator writes it) and
    received_ms; predicted_label and department (from its prediction) make the verdicts exact:
    the department the document was routed to answers CONFIRM when the prediction was right
    and CORRECT with the true label when it was wrong. Without them the model is assumed right
    (department of the true label, CONFIRM).

    Most verdicts come seconds to hours after receipt (log-normal delays in event time); some
    never (unanswered_share); some after the join's wait (too_late_share); some are corrected
    (a wrong first verdict, then a CORRECT with the true label); some are delivered twice; some
    are about doc_ids we never sent.

    Drift (X, Y) models a changed world, not a broken model: from drift_from_ms on, documents
    that look like X (the model, trained before, still predicts X and routes them to X's
    department) are truly Y, and that department answers CORRECT Y. On those documents the
    model is wrong: precision of X and recall of Y collapse, and macro-F1 falls. (Relabelling
    the truth cannot lower recall of X: X has no true documents left to miss.)
    """
    rng = random.Random(seed)
    drift_from = profile.drift_from_ms
    out: list[dict] = []
    for index, doc in enumerate(documents):
        received = doc["received_ms"]
        if rng.random() < profile.orphan_share:
            label = rng.choice(LABELS)
            out.append(_verdict(f"unseen-{seed}-{index:06d}", label, DEPARTMENTS[label], received + _delay(rng, profile), "CONFIRM"))
        if rng.random() < profile.unanswered_share:
            continue
        actual = check_label(doc["label"])
        if profile.drift and actual == profile.drift[0] and (drift_from is None or received >= drift_from):
            actual = profile.drift[1]
        shown = doc.get("predicted_label") or check_label(doc["label"])  # the label the department was sent the document as
        department = doc.get("department") or DEPARTMENTS[shown]
        if rng.random() < profile.too_late_share:
            sent = received + profile.too_late_delay_ms + rng.randrange(DAY_MS)
        else:
            sent = received + _delay(rng, profile)
        if rng.random() < profile.correction_share:
            if shown != actual:  # a clerk confirmed the wrong prediction
                out.append(_verdict(doc["doc_id"], shown, department, sent, "CONFIRM"))
            else:  # a reviewer picked a wrong label
                out.append(_verdict(doc["doc_id"], rng.choice([label for label in LABELS if label != actual]), department, sent, "CORRECT"))
            sent += _delay(rng, profile)
            verdict = _verdict(doc["doc_id"], actual, department, sent, "CORRECT", "corrected after review")
        else:
            verdict = _verdict(doc["doc_id"], actual, department, sent, "CONFIRM" if actual == shown else "CORRECT")
        out.append(verdict)
        if rng.random() < profile.duplicate_share:
            out.append(dict(verdict))
    out.sort(key=lambda record: record["sent_ms"])
    return out


def with_predictions(documents: Iterable[Mapping], predictions: Iterable[Mapping]) -> list[dict]:
    """Documents with predicted_label and department from their prediction records, by doc_id."""
    by_id = {p["doc_id"]: p for p in predictions}
    return [{**doc, "predicted_label": by_id[doc["doc_id"]]["label"], "department": by_id[doc["doc_id"]]["department"]}
            if doc["doc_id"] in by_id else dict(doc) for doc in documents]


def _delay(rng: random.Random, profile: FeedbackProfile) -> int:
    """Log-normal around the median (sigma 1.5: a minute or less to ten hours and more), clipped."""
    delay = profile.median_delay_ms * math.exp(1.5 * rng.gauss(0.0, 1.0))
    return int(min(max(delay, 1000), profile.max_delay_ms))


def _verdict(doc_id: str, label: str, department: str, sent_ms: int, kind: str, comment: str | None = None) -> dict:
    return {"doc_id": doc_id, "label": label, "department": department, "sent_ms": sent_ms, "kind": kind, "comment": comment}


# --- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackReport:
    topic: str
    sent: int
    failed: list[str]  # doc_id: reason, for records the broker did not acknowledge

    def summary(self) -> str:
        return f"sent {self.sent} verdict(s) to {self.topic}; delivery failed for {len(self.failed)}"


def send_feedback(kafka, topic: str, records: list[dict], progress: bool = True) -> FeedbackReport:
    """Encode (validated) and send every record keyed by doc_id; wait for all acknowledgements."""
    values = [(record["doc_id"], codec.encode("ground_truth", record, validate=True)) for record in records]
    pending = []
    with tqdm(total=len(values), unit="verdict", desc=f"sending to {topic}", disable=not progress) as bar:
        for doc_id, value in values:
            future = kafka.send(topic, value=value, key=doc_id.encode("utf-8"))
            future.add_both(lambda _: bar.update(1))
            pending.append((doc_id, future))
        kafka.flush()
    failed = [f"{doc_id}: {future.exception}" for doc_id, future in pending if future.failed()]
    return FeedbackReport(topic, len(pending) - len(failed), failed)


# --- command line ----------------------------------------------------------------------------


def _drift(value: str) -> tuple[str, str]:
    old, sep, new = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("give it as FROM:TO, e.g. invoice:purchase_order")
    try:
        return check_label(old), check_label(new)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a share between 0 and 1")
    return share


def read_documents(path: Path) -> tuple[list[dict], list[str]]:
    """(documents, errors): doc_id, label and received_ms of each line of a JSONL file of documents
    (the generator's labels.jsonl or documents file); other fields are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read: {exc}"]
    documents, errors = [], []
    for number, row in _jsonl_rows(text):
        try:
            if isinstance(row, Exception):
                raise row
            missing = [name for name in ("doc_id", "label", "received_ms") if row.get(name) in (None, "")]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            documents.append({"doc_id": str(row["doc_id"]), "label": check_label(row["label"]), "received_ms": int(row["received_ms"])})
        except (TypeError, ValueError) as exc:
            errors.append(f"{path}:{number}: {exc}")
    return documents, errors


def _simulated(args: argparse.Namespace, settings: Settings) -> tuple[list[dict], list[str]]:
    documents, errors = read_documents(args.simulate)
    if args.with_predictions:
        from mailroom.kafkautil import read_topic

        messages = read_topic(settings, topic_name("predictions", settings.topic_prefix), timeout_s=10)
        documents = with_predictions(documents, [codec.decode(m.value, expected="prediction").record for m in messages])
    profile = FeedbackProfile(unanswered_share=args.unanswered_share, drift=args.drift, drift_from_ms=args.drift_from_ms)
    return simulate_feedback(documents, args.seed, profile), errors


def _records(args: argparse.Namespace, settings: Settings, now_ms: int) -> tuple[list[dict], list[str]]:
    if args.file:
        return read_feedback_file(args.file, now_ms)
    if args.simulate:
        return _simulated(args, settings)
    raw = {"doc_id": args.doc_id, "label": args.label, "kind": args.kind, "comment": args.comment,
           "department": args.department, "sent_ms": args.sent_ms}
    try:
        return [ground_truth(raw, now_ms)], []
    except ValueError as exc:
        return [], [str(exc)]


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    from mailroom.kafkautil import producer

    if args.doc_id is not None and args.label is None:
        err.print("[red]error:[/red] --doc-id needs --label")
        return 2
    misplaced = [flag for flag, value in (("--label", args.label), ("--kind", args.kind), ("--comment", args.comment),
                                          ("--department", args.department), ("--sent-ms", args.sent_ms)) if value is not None and not args.doc_id]
    misplaced += [flag for flag, value in (("--drift", args.drift), ("--drift-from-ms", args.drift_from_ms),
                                           ("--with-predictions", args.with_predictions or None)) if value is not None and not args.simulate]
    if misplaced:
        err.print(f"[red]error:[/red] {', '.join(misplaced)} do not apply here: --label, --kind, --comment, --department and --sent-ms "
                  "go with --doc-id; --drift, --drift-from-ms and --with-predictions with --simulate")
        return 2
    if args.file and not args.file.is_file() or args.simulate and not args.simulate.is_file():
        err.print(f"[red]error:[/red] {args.file or args.simulate} is not a file")
        return 2
    records, errors = _records(args, settings, int(time.time() * 1000))
    for line in errors[:args.show]:
        err.print(f"[red]invalid[/red] {line}", highlight=False)
    if len(errors) > args.show:
        err.print(f"... and {len(errors) - args.show} more")
    if errors and not args.skip_invalid:
        err.print(f"[red]nothing sent:[/red] {len(errors)} invalid input(s)" + (" (--skip-invalid sends the valid ones)" if records else ""))
        return 2
    if not records:
        err.print("[red]nothing to send[/red]")
        return 1
    kinds = {kind: sum(r["kind"] == kind for r in records) for kind in KINDS}
    console.print(f"{len(records)} verdict(s): {kinds['CONFIRM']} CONFIRM, {kinds['CORRECT']} CORRECT; {len(errors)} invalid skipped")
    if args.dry_run:
        for record in records[:args.show]:
            console.print(json.dumps(record), highlight=False)
        console.print("dry run: nothing sent")
        return 0
    topic = args.topic or topic_name("ground_truth", settings.topic_prefix)
    if args.department:  # one verdict from one department: sent as that department's principal
        from schemas.access import department_principal

        settings = settings.as_principal(department_principal(args.department))
    try:
        kafka = producer(settings)
        try:
            report = send_feedback(kafka, topic, records, progress=not args.no_progress)
        finally:
            kafka.close()
    except KafkaError as exc:
        from mailroom.kafkautil import explain

        err.print(f"[red]error:[/red] {explain(exc, settings, 'Write', f'topic {topic}')}", highlight=False)
        return 1
    console.print(report.summary())
    for failure in report.failed[:args.show]:
        console.print(f"  [red]failed[/red] {failure}", highlight=False)
    return 0 if not report.failed else 1


def register(sub) -> None:
    parser = sub.add_parser(
        "feedback", help="send ground truth (confirmed or corrected labels) to the ground-truth topic",
        description=__doc__.split("\n\nAs a library")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Labels: {', '.join(LABELS)}. Exit status: 0 when every verdict was acknowledged; 1 when delivery failed or "
               "there was nothing to send; 2 on invalid input (nothing is sent).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--doc-id", help="the document the verdict is about (with --label)")
    source.add_argument("--file", type=Path, metavar="FILE", help="verdicts in a .jsonl file (one object per line) or a .csv file "
                        f"(columns {','.join(FILE_COLUMNS)}; header optional; only doc_id and label are required)")
    source.add_argument("--simulate", type=Path, metavar="DOCS", help="simulate departments' feedback on the documents in DOCS "
                        "(JSONL with doc_id, label = true label, received_ms; e.g. a generator labels.jsonl)")
    parser.add_argument("--label", help="with --doc-id: the true label")
    parser.add_argument("--kind", type=str.upper, choices=KINDS, help="with --doc-id: CONFIRM (default) or CORRECT")
    parser.add_argument("--comment", help="with --doc-id: free text from the reviewer")
    parser.add_argument("--department", help="with --doc-id: who gives the verdict (default: the label's department)")
    parser.add_argument("--sent-ms", type=int, help="with --doc-id: when the verdict was given, epoch ms (default: now)")
    parser.add_argument("--seed", type=int, default=0, help="with --simulate: random seed (default 0)")
    parser.add_argument("--unanswered-share", type=_share, default=FeedbackProfile.unanswered_share,
                        help="with --simulate: share of documents that never get ground truth (default %(default)s)")
    parser.add_argument("--drift", type=_drift, metavar="FROM:TO", help="with --simulate: documents of class FROM are truly TO "
                        "now (the world changed), e.g. invoice:purchase_order")
    parser.add_argument("--drift-from-ms", type=int, help="with --drift: only documents received from this epoch ms on")
    parser.add_argument("--with-predictions", action="store_true", help="with --simulate: read the predictions topic so verdicts "
                        "confirm or correct what the model actually said")
    parser.add_argument("--topic", help="topic to send to (default: the declared ground-truth topic)")
    parser.add_argument("--skip-invalid", action="store_true", help="with --file or --simulate: send the valid lines even if some "
                        "are invalid")
    parser.add_argument("--show", type=int, default=20, metavar="N", help="list at most N invalid inputs, failures or (--dry-run) "
                        "verdicts (default 20)")
    parser.add_argument("--dry-run", action="store_true", help="validate and show; send nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd)
