"""Joining predictions (and shadow pairs) with ground truth, per doc_id: plain Python, no pyflink.

The accuracy job keys predictions and ground truth by doc_id and keeps one `PairState` per key
in Flink keyed state (plain data, picklable). `Joiner` holds the configuration and has one pure
method per input; each returns the new state (None: clear it) and the events it decided:

    state, events = joiner.on_prediction(state, prediction_record, now_ms)
    state, events = joiner.on_truth(state, ground_truth_record, now_ms)
    state, events = joiner.on_timer(state, timer_ms)
    then: state is None -> clear the keyed state; otherwise store it and register an event-time
          timer at state.next_timer_ms() (Flink deduplicates equal timers; a timer that finds
          nothing due changes nothing).

`now_ms` is the element's event time (ctx.timestamp()). Every decision depends only on event
times, never on the order in which the two topics are read, so both orders give the same pairs.

Life of a doc_id
  * A prediction opens it: the document waits `truth_wait_ms` (from the prediction's event
    time) for ground truth. Only the first prediction counts; any later one, from any model, is a
    DuplicatePrediction (one prediction per document, the pipeline's contract).
  * A truth that comes first waits `prediction_wait_ms` for its prediction, then is an
    OrphanTruth. A truth matches a prediction at event time p when
    p - prediction_wait_ms < truth time < p + truth_wait_ms.
  * When the wait is over, a prediction without truth is Unmatched (unlabelled: it lowers label
    coverage). The doc_id is then remembered for `remember_closed_ms`, so a truth arriving later
    is a LateTruth (never matched, never matched twice); after that it would be an orphan.

Which verdict is in force (the duplicate and correction rule)
  Truths are ranked by (CORRECT above CONFIRM when `correct_outranks_confirm`, then the newer
  `sent_ms`, then the label, so ties are deterministic). The highest-ranked truth received
  within the wait is in force; its label is the true label (`kind` only ranks verdicts: a
  reviewer's CORRECT outranks a clerk's CONFIRM, and among equals the latest wins). For each
  further truth:
    * same label as the verdict in force: DuplicateTruth (ignored, counted; if it ranks higher
      it becomes the verdict in force silently, so the result does not depend on arrival order);
    * different label, ranks higher: Corrected(old pair, new pair); metrics retract the old pair
      and add the new one, labelled examples get a new revision;
    * different label, ranks lower: StaleTruth (ignored, counted).
  Truths that came before the prediction are replayed in arrival order when it comes, so the
  events are the same as if the prediction had been first.

Every prediction ends as exactly one of Matched (possibly Corrected later), Unmatched or
DuplicatePrediction; every truth as exactly one of: in force when it arrived (Matched or
Corrected), DuplicateTruth, StaleTruth, LateTruth or OrphanTruth. Nothing is dropped silently.

Events name their model as (model_name, model_version, slot): the slot (champion, fallback,
prior) comes from the prediction; a prediction.v1 record reads as "champion".

Shadow pairs (`ShadowJoiner`)
  The same rules, with shadow_prediction records (the champion's and the challenger's answers
  on one document) in place of predictions: event time received_ms, the same waits, a
  correction retracts, late truth is never matched. Its events name the pair as (kind,
  champion model, champion version, challenger model, challenger version) and carry a
  `LabelledShadow` instead of a `LabelledPair`. The shadow join writes labelled shadow pairs
  (`labelled_shadow_pairs`: per document, for the judge; a correction a higher revision), no
  labelled examples.

>>> joiner = Joiner(JoinConfig())
>>> truth = {"doc_id": "d1", "label": "invoice", "department": "finance", "sent_ms": 5_000, "kind": "CONFIRM"}
>>> state, events = joiner.on_truth(None, truth, now_ms=5_000)       # truth first: it waits
>>> events
[]
>>> prediction = {"doc_id": "d1", "sender": "s@x.example", "content_type": "TEXT", "label": "invoice",
...               "probabilities": {"invoice": 0.9, "other": 0.1}, "model_name": "m", "model_version": "1",
...               "feature_set_id": "fs", "received_ms": 1_000, "features": {}}
>>> state, events = joiner.on_prediction(state, prediction, now_ms=1_000)
>>> [type(e).__name__ for e in events], events[1].pair.correct, events[1].pair.matched_ms
(['Predicted', 'Matched'], True, 5000)
>>> state.next_timer_ms() == 1_000 + JoinConfig().truth_wait_ms
True
>>> shadow = {"doc_id": "d1", "kind": "text", "received_ms": 1_000, "champion_model": "m", "champion_version": "1",
...           "champion_label": "invoice", "challenger_model": "m", "challenger_version": "2", "challenger_label": "offer"}
>>> state, events = ShadowJoiner(JoinConfig()).on_truth(None, truth, now_ms=5_000)
>>> state, events = ShadowJoiner(JoinConfig()).on_prediction(state, shadow, now_ms=1_000)
>>> events[1].pair.model, events[1].pair.champion_correct, events[1].pair.challenger_correct
(('text', 'm', '1', 'm', '2'), True, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.modelio import KINDS
from schemas.units import DAY_MS, HOUR_MS
from schemas import codec

# the prediction fields a pair and a labelled example need (the model inputs too, so an example
# can train); the rest is not kept in state
PREDICTION_FIELDS = ("doc_id", "sender", "content_type", "label", "probabilities", "model_name", "model_version",
                     "feature_set_id", "received_ms", "features", "slot", "model_text", "image_features", "ocr_status")
# the shadow_prediction fields a paired comparison needs
SHADOW_FIELDS = ("doc_id", "kind", "received_ms", "champion_model", "champion_version", "champion_label", "challenger_model",
                 "challenger_version", "challenger_label", "champion_latency_ms", "challenger_latency_ms")
CHAMPION = "champion"  # the slot of a prediction that does not say (prediction.v1's default)
MODEL_NAME_PREFIX = "mailroom-"  # model names are mailroom-<kind> (models.scoring)


JOIN_VERSION = "1.0.0"  # written into the accuracy job's dead letters; bump when the join's rules change


@dataclass(frozen=True)
class JoinConfig:
    """How long each side waits for the other, and the verdict rule. Picklable."""

    truth_wait_ms: int = 7 * DAY_MS  # a prediction waits this long (event time) for its ground truth
    prediction_wait_ms: int = HOUR_MS  # a truth for an unknown doc_id waits this long for its prediction
    remember_closed_ms: int = 30 * DAY_MS  # after the wait, later truths are LateTruth for this long (orphans after)
    correct_outranks_confirm: bool = True  # a CORRECT outranks any CONFIRM; False: the newest verdict wins
    max_failures_per_minute: int = 100  # records dead-lettered for a processing error; more fail the job

    def __post_init__(self):
        if min(self.truth_wait_ms, self.prediction_wait_ms, self.remember_closed_ms) <= 0:
            raise ValueError(f"the waits must be positive: {self}")


@dataclass(frozen=True)
class Prediction:
    """A prediction record (slimmed to PREDICTION_FIELDS) and its event time."""

    record: dict
    at_ms: int

    @property
    def model(self) -> tuple[str, str, str]:
        return self.record["model_name"], self.record["model_version"], self.record.get("slot") or CHAMPION  # state of a v1 join: no slot


@dataclass(frozen=True)
class Shadowed:
    """A shadow_prediction record (slimmed to SHADOW_FIELDS) and its event time."""

    record: dict
    at_ms: int

    @property
    def model(self) -> tuple[str, str, str, str, str]:
        r = self.record
        return r["kind"], r["champion_model"], r["champion_version"], r["challenger_model"], r["challenger_version"]


@dataclass(frozen=True)
class Truth:
    """A ground_truth record and its event time."""

    record: dict
    at_ms: int

    @property
    def label(self) -> str:
        return self.record["label"]


@dataclass(frozen=True)
class LabelledPair:
    """A prediction with the ground truth in force: one labelled example."""

    doc_id: str
    model_name: str
    model_version: str
    slot: str  # champion | fallback | prior
    feature_set_id: str
    content_type: str
    sender: str
    predicted: str  # the model's label
    actual: str  # the true label
    truth_kind: str  # CONFIRM | CORRECT
    truth_department: str
    probabilities: dict
    features: dict
    predicted_ms: int  # event time of the prediction: the metrics' windows are over this
    truth_sent_ms: int
    matched_ms: int  # event time of the match: the later of the prediction's and the truth's
    revision: int  # 0 for the first verdict, +1 per correction
    # the model inputs, as the prediction carried them (the defaults: a prediction from before prediction.v3)
    model_text: str | None = None
    image_features: tuple[float, ...] = ()
    ocr_status: str | None = None

    @property
    def model(self) -> tuple[str, str, str]:
        return self.model_name, self.model_version, self.slot

    @property
    def model_kind(self) -> str:
        """text, scan or image: the kind in the model name mailroom-<kind>; "" for any other name."""
        return model_kind(self.model_name)

    @property
    def correct(self) -> bool:
        return self.predicted == self.actual


@dataclass(frozen=True)
class LabelledShadow:
    """A shadow pair with the ground truth in force: both models' answers on one labelled document."""

    doc_id: str
    kind: str
    champion_model: str
    champion_version: str
    champion_label: str
    challenger_model: str
    challenger_version: str
    challenger_label: str
    actual: str  # the true label
    truth_kind: str  # CONFIRM | CORRECT
    predicted_ms: int  # event time of the shadow pair (received_ms): the paired windows are over this
    truth_sent_ms: int
    matched_ms: int  # event time of the match: the later of the pair's and the truth's
    revision: int  # 0 for the first verdict, +1 per correction
    champion_latency_ms: float = 0.0  # the pair's run times (0: state from before they were kept)
    challenger_latency_ms: float = 0.0

    @property
    def model(self) -> tuple[str, str, str, str, str]:
        return self.kind, self.champion_model, self.champion_version, self.challenger_model, self.challenger_version

    @property
    def champion_correct(self) -> bool:
        return self.champion_label == self.actual

    @property
    def challenger_correct(self) -> bool:
        return self.challenger_label == self.actual


Subject = Prediction | Shadowed  # what a doc_id's wait is for: a prediction, or a shadow pair in the shadow join
Pair = LabelledPair | LabelledShadow  # the subject with the verdict in force
Key = tuple[str, ...]  # (model_name, model_version, slot); in the shadow join (kind, champion model, version, challenger model, version)


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predicted:
    """A document's (first) prediction: counts towards the predictions of its window."""

    prediction: Subject

    @property
    def model(self) -> Key:
        return self.prediction.model


@dataclass(frozen=True)
class DuplicatePrediction:
    """A further prediction for a doc_id that already has one: ignored, counted."""

    prediction: Subject

    @property
    def model(self) -> Key:
        return self.prediction.model


@dataclass(frozen=True)
class Matched:
    """A prediction got its first verdict."""

    pair: Pair

    @property
    def model(self) -> Key:
        return self.pair.model


@dataclass(frozen=True)
class Corrected:
    """A higher-ranked verdict changed the true label: retract `old`, add `new`."""

    old: Pair
    new: Pair
    truth: Truth

    @property
    def model(self) -> Key:
        return self.new.model


@dataclass(frozen=True)
class DuplicateTruth:
    """A verdict with the label already in force: ignored, counted."""

    truth: Truth
    pair: Pair  # the pair in force

    @property
    def model(self) -> Key:
        return self.pair.model


@dataclass(frozen=True)
class StaleTruth:
    """A verdict with another label that ranks below the one in force: ignored, counted."""

    truth: Truth
    pair: Pair  # the pair in force

    @property
    def model(self) -> Key:
        return self.pair.model


@dataclass(frozen=True)
class Unmatched:
    """A prediction whose wait ended without ground truth: unlabelled."""

    prediction: Subject
    expired_ms: int

    @property
    def model(self) -> Key:
        return self.prediction.model


@dataclass(frozen=True)
class LateTruth:
    """A verdict at or after the end of its prediction's wait: counted, never matched."""

    truth: Truth
    model: Key  # the model (or shadow pair) the document's prediction was about


@dataclass(frozen=True)
class OrphanTruth:
    """A verdict for a doc_id with no prediction within its wait: counted. No model."""

    truth: Truth

    @property
    def model(self) -> None:
        return None


Event = Predicted | DuplicatePrediction | Matched | Corrected | DuplicateTruth | StaleTruth | Unmatched | LateTruth | OrphanTruth


# --- state -----------------------------------------------------------------------------------


@dataclass
class PairState:
    """What the join remembers about one doc_id. Plain data, picklable.

    Phases: waiting for the prediction (only `early_truths`), open (`prediction` set, until
    `truth_deadline_ms`), closed (`closed_until_ms` set: a tombstone naming the model).
    """

    prediction: Subject | None = None
    truth_deadline_ms: int | None = None  # the prediction's wait ends here
    verdict: Truth | None = None  # the ground truth in force
    revision: int = 0
    early_truths: list[tuple[int, Truth]] = field(default_factory=list)  # (orphan at ms, truth), arrival order
    closed_model: Key | None = None
    closed_until_ms: int | None = None

    @property
    def closed(self) -> bool:
        return self.closed_until_ms is not None

    def next_timer_ms(self) -> int | None:
        """The event-time timer to (re)register: the earliest moment something is due."""
        if self.closed:
            return self.closed_until_ms
        if self.prediction is not None:
            return self.truth_deadline_ms
        return min((at for at, _ in self.early_truths), default=None)


class Joiner:
    """The join's decisions (module docstring). Stateless apart from its config."""

    def __init__(self, config: JoinConfig = JoinConfig()):
        self.config = config

    def on_prediction(self, state: PairState | None, record: dict, now_ms: int) -> tuple[PairState, list[Event]]:
        prediction = self._subject(record, now_ms)
        state = state or PairState()
        if state.closed or state.prediction is not None:
            return state, [DuplicatePrediction(prediction)]
        state.prediction = prediction
        state.truth_deadline_ms = now_ms + self.config.truth_wait_ms
        events: list[Event] = [Predicted(prediction)]
        early, state.early_truths = state.early_truths, []
        for _, truth in early:
            events.extend(self._apply(state, truth))
        return state, events

    def on_truth(self, state: PairState | None, record: dict, now_ms: int) -> tuple[PairState | None, list[Event]]:
        truth = Truth(record, now_ms)
        if state is None:
            state = PairState()
        if state.closed:
            return state, [LateTruth(truth, state.closed_model)]
        if state.prediction is None:
            state.early_truths.append((now_ms + self.config.prediction_wait_ms, truth))
            return state, []
        return state, self._apply(state, truth)

    def on_timer(self, state: PairState | None, timer_ms: int) -> tuple[PairState | None, list[Event]]:
        if state is None:
            return None, []
        events: list[Event] = []
        if state.prediction is None and not state.closed:
            events = [OrphanTruth(truth) for at, truth in state.early_truths if at <= timer_ms]
            state.early_truths = [(at, truth) for at, truth in state.early_truths if at > timer_ms]
            return (state if state.early_truths else None), events
        if not state.closed and state.truth_deadline_ms <= timer_ms:
            if state.verdict is None:
                events.append(Unmatched(state.prediction, state.truth_deadline_ms))
            state = PairState(closed_model=state.prediction.model,
                              closed_until_ms=state.truth_deadline_ms + self.config.remember_closed_ms)
        if state.closed and state.closed_until_ms <= timer_ms:
            return None, events
        return state, events

    def rank(self, truth: Truth) -> tuple:
        """Verdict order: the highest-ranked truth is in force."""
        outranks = truth.record["kind"] == "CORRECT" if self.config.correct_outranks_confirm else False
        return outranks, truth.record["sent_ms"], truth.label

    def _apply(self, state: PairState, truth: Truth) -> list[Event]:
        """A truth for an open document (the prediction is there)."""
        if truth.at_ms >= state.truth_deadline_ms:
            return [LateTruth(truth, state.prediction.model)]
        if truth.at_ms <= state.prediction.at_ms - self.config.prediction_wait_ms:
            return [OrphanTruth(truth)]
        current = state.verdict
        if current is None:
            state.verdict = truth
            return [Matched(self._pair(state))]
        if self.rank(truth) <= self.rank(current):
            return [DuplicateTruth(truth, self._pair(state)) if truth.label == current.label else StaleTruth(truth, self._pair(state))]
        if truth.label == current.label:
            state.verdict = truth
            return [DuplicateTruth(truth, self._pair(state))]
        old = self._pair(state)
        state.verdict, state.revision = truth, state.revision + 1
        return [Corrected(old, self._pair(state), truth)]

    def _subject(self, record: dict, now_ms: int) -> Subject:
        """What the join keeps of a prediction record."""
        return Prediction({name: record.get(name) for name in PREDICTION_FIELDS}, now_ms)

    def _pair(self, state: PairState) -> Pair:
        p, t = state.prediction, state.verdict
        return LabelledPair(
            doc_id=p.record["doc_id"], model_name=p.record["model_name"], model_version=p.record["model_version"], slot=p.model[2],
            feature_set_id=p.record["feature_set_id"], content_type=p.record["content_type"], sender=p.record["sender"],
            predicted=p.record["label"], actual=t.label, truth_kind=t.record["kind"], truth_department=t.record["department"],
            probabilities=dict(p.record["probabilities"]), features=dict(p.record["features"] or {}),
            predicted_ms=p.at_ms, truth_sent_ms=t.record["sent_ms"], matched_ms=max(p.at_ms, t.at_ms), revision=state.revision,
            model_text=p.record.get("model_text"), image_features=tuple(p.record.get("image_features") or ()),
            ocr_status=p.record.get("ocr_status"),
        )


class ShadowJoiner(Joiner):
    """The join's decisions for shadow pairs (module docstring): a shadow_prediction record in
    place of a prediction, a `LabelledShadow` in place of a `LabelledPair`."""

    def _subject(self, record: dict, now_ms: int) -> Subject:
        return Shadowed({name: record.get(name) for name in SHADOW_FIELDS}, now_ms)

    def _pair(self, state: PairState) -> Pair:
        s, t = state.prediction.record, state.verdict
        return LabelledShadow(
            doc_id=s["doc_id"], kind=s["kind"], champion_model=s["champion_model"], champion_version=s["champion_version"],
            champion_label=s["champion_label"], challenger_model=s["challenger_model"], challenger_version=s["challenger_version"],
            challenger_label=s["challenger_label"], actual=t.label, truth_kind=t.record["kind"], predicted_ms=state.prediction.at_ms,
            truth_sent_ms=t.record["sent_ms"], matched_ms=max(state.prediction.at_ms, t.at_ms), revision=state.revision,
            champion_latency_ms=s.get("champion_latency_ms") or 0.0, challenger_latency_ms=s.get("challenger_latency_ms") or 0.0,
        )


# --- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """A record to write: topic key (schemas.topics), Kafka key, record type and record."""

    topic: str
    key: str
    record_type: str
    record: dict

    def encode(self) -> bytes:
        return codec.encode(self.record_type, self.record)


def model_kind(model_name: str) -> str:
    """text, scan or image from a model name mailroom-<kind>; "" when the name does not say."""
    kind = model_name.removeprefix(MODEL_NAME_PREFIX) if model_name.startswith(MODEL_NAME_PREFIX) else ""
    return kind if kind in KINDS else ""


def labelled_example(pair: LabelledPair) -> Outgoing:
    """The labelled_example.v2 record of a pair, for the labelled-examples topic (key: doc_id):
    the verdict with the model inputs, so the example can train."""
    record = {
        "doc_id": pair.doc_id, "model_name": pair.model_name, "model_version": pair.model_version,
        "feature_set_id": pair.feature_set_id, "content_type": pair.content_type, "sender": pair.sender,
        "predicted_label": pair.predicted, "true_label": pair.actual, "truth_kind": pair.truth_kind,
        "truth_department": pair.truth_department, "probabilities": pair.probabilities, "features": pair.features,
        "predicted_ms": pair.predicted_ms, "truth_sent_ms": pair.truth_sent_ms, "matched_ms": pair.matched_ms,
        "revision": pair.revision, "model_kind": pair.model_kind, "model_text": pair.model_text,
        "image_features": list(pair.image_features), "ocr_status": pair.ocr_status,
    }
    return Outgoing("labelled_examples", pair.doc_id, "labelled_example", record)


def labelled_examples(events: list[Event]) -> list[Outgoing]:
    """A labelled example for every Matched pair and every correction's new pair."""
    return [labelled_example(e.pair if isinstance(e, Matched) else e.new) for e in events if isinstance(e, (Matched, Corrected))]


def labelled_shadow_pair(pair: LabelledShadow) -> Outgoing:
    """The labelled_shadow_pair.v1 record of a shadow pair with its truth, for the
    labelled-shadow-pairs topic (key: doc_id): what the judge's paired tests take."""
    record = {
        "doc_id": pair.doc_id, "kind": pair.kind, "champion_model": pair.champion_model, "champion_version": pair.champion_version,
        "champion_label": pair.champion_label, "challenger_model": pair.challenger_model, "challenger_version": pair.challenger_version,
        "challenger_label": pair.challenger_label, "true_label": pair.actual, "truth_kind": pair.truth_kind,
        "champion_latency_ms": float(pair.champion_latency_ms), "challenger_latency_ms": float(pair.challenger_latency_ms),
        "predicted_ms": pair.predicted_ms, "truth_sent_ms": pair.truth_sent_ms, "matched_ms": pair.matched_ms, "revision": pair.revision,
    }
    return Outgoing("labelled_shadow_pairs", pair.doc_id, "labelled_shadow_pair", record)


def labelled_shadow_pairs(events: list[Event]) -> list[Outgoing]:
    """A labelled shadow pair for every Matched shadow pair and every correction's new pair."""
    return [labelled_shadow_pair(e.pair if isinstance(e, Matched) else e.new) for e in events if isinstance(e, (Matched, Corrected))]
