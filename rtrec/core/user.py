"""UserCore: one key shard's micro-batch of raw records, admitted, featurised, learned from and scored.

Per batch (udfs/user_stage.py calls it; tests and benchmarks call it directly):

1. :meth:`UserCore.admit` parses and validates each record, drops duplicate
   event ids seen within the dedup window (the ids live in the user's own
   state, so checking them costs no extra state access) and events behind the
   watermark by more than the allowed lateness; each refused record becomes a
   dead letter with its reason and stage, so records in = accepted +
   duplicates + dead letters. It reads the state of every user with a valid
   event through the caller's ``load``; this is the one part that touches
   Flink state, so the operator runs it on its task thread; it must not call
   torch (models/worker.py says why).
2. :meth:`UserCore.process` folds each accepted event into its user's
   features in arrival order, groups the events by item shard for the item
   features, and (with a learner) predicts, then learns from, every feedback
   event, refreshes the top-k of users who interacted and ranks the
   candidates of requests (models.online.OnlineLearner). It returns a
   :class:`UserBatch`: the users' new state, the output records, the events
   per item shard, the impressions to expire and the delta for the merger.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.merger import DeltaMessage
from models.online import Inputs, OnlineLearner, Predictions, Recommendation, refreshes
from models.params import delta_to_bytes, heldout_to_bytes
from rtrec.config import RtrecConfig
from rtrec.core.outputs import Outputs
from rtrec.events import Event, EventParser, Rejection
from rtrec.features.compiled import HybridGroup
from rtrec.features.definitions import USER_FEATURES
from rtrec.features.model_inputs import UserInputs, id_code
from rtrec.records import encode_feature, encode_predictions, encode_recommendations
from rtrec.sharding import shard_of

#: The format of a user's state entry that this release writes. 3: features as
#: rtrec.features.compiled.HybridGroup keeps them (the compiled vector, stored, then the engine's state
#: of the other declarations); 2 and 1 (the engine's state of every declaration) are read.
USER_STATE_FORMAT = 3
FEATURES = HybridGroup(USER_FEATURES)
#: Impressions' attribution windows close on the next whole multiple of this (event time, ms): one timer
#: (and one MapState entry) per shard and second rather than per impression.
IMPRESSION_TIMER_MS = 1_000


class DueTimes:
    """The times at which a key shard's impressions fall due (its timers), oldest first.

    The UserStage keeps the due impressions in a MapState keyed by time; a timer must take every
    entry the watermark has passed. Scanning the MapState's keys for them made each timer cost
    every pending key (RocksDB, one JNI hop each), and a backlog fires a timer per second of event
    time: quadratic. This index is derived from the state's keys, so nothing of it is stored; a task
    that (re)starts builds it with one scan per shard (``DueTimes(map_state.keys())``).

    >>> due = DueTimes([3000, 1000])
    >>> due.add(2000), due.add(2000)
    (True, False)
    >>> due.take(2500), 3000 in due
    ([1000, 2000], True)
    """

    __slots__ = ("_heap", "_times")

    def __init__(self, times=()):
        self._times = set(times)
        self._heap = sorted(self._times)

    def add(self, at: int) -> bool:
        """Note ``at``; True if it is new (its timer is to be registered)."""
        if at in self._times:
            return False
        self._times.add(at)
        heapq.heappush(self._heap, at)
        return True

    def take(self, watermark: int) -> list[int]:
        """Remove and return the times at or before ``watermark``, in order."""
        heap, out = self._heap, []
        while heap and heap[0] <= watermark:
            at = heapq.heappop(heap)
            self._times.discard(at)
            out.append(at)
        return out

    def __contains__(self, at: int) -> bool:
        return at in self._times

    def __len__(self) -> int:
        return len(self._times)


def batch_parts(n: int, most: int) -> list[slice]:
    """How a shard's micro-batch of ``n`` records goes through the core: in parts of at most ``most``
    (flink.max_batch_events), so that the UserStage can adopt a newer model version between them.
    LocalPipeline cuts the same way.

    >>> batch_parts(5, 2)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    return [slice(i, min(i + most, n)) for i in range(0, n, most)] or [slice(0, 0)]


@dataclass(slots=True)
class UserState:
    """A user's entry in keyed state (one per user, with its own TTL)."""

    features: list  # [compiled vector, the engine's state of the other declarations] (FEATURES)
    model: dict | None  # the learner's user state (models.online.OnlineLearner.new_user); None: models off
    seen: dict[str, int]  # event id -> first seen at (processing time, ms), oldest first

    def to_state(self) -> dict:
        """As stored: plain data only, so a restore never depends on this class's name."""
        vector, other = self.features
        return {"format": USER_STATE_FORMAT, "features": [FEATURES.compiled.store(vector), other],
                "model": self.model, "seen": self.seen}

    @staticmethod
    def read(value: dict) -> UserState:
        """From a stored entry of this format, of format 2 (the feature engine's state of every declaration) or
        of format 1 (releases up to 0.1.0: format 2 without the ``format`` key)."""
        fmt = value.get("format", 1)
        if fmt > USER_STATE_FORMAT:
            raise ValueError(f"user state format {fmt} is newer than this release reads ({USER_STATE_FORMAT})")
        if fmt >= 3:
            stored, other = value["features"]
            features = [FEATURES.compiled.read_state(stored), other]
        else:
            features = FEATURES.from_engine_state(value["features"])
        return UserState(features, value["model"], value["seen"])


@dataclass
class Admitted:
    """What :meth:`UserCore.admit` let through, and the state of the users it concerns."""

    events: list[Event] = field(default_factory=list)
    users: dict[str, UserState] = field(default_factory=dict)
    out: Outputs = field(default_factory=Outputs)
    records: int = 0
    duplicates: int = 0
    late: int = 0


@dataclass
class UserBatch:
    """Everything one batch (or one expiry of impressions) produces."""

    users: dict[str, UserState]
    out: Outputs
    #: item shard -> the accepted events of its items, in arrival order
    item_events: dict[int, list[Event]] = field(default_factory=dict)
    #: event time at which to expire -> (user id, item id, impression event id)
    impressions_due: dict[int, list[tuple[str, str, str]]] = field(default_factory=dict)
    delta: DeltaMessage | None = None
    examples: int = 0
    newest_ts: int | None = None
    predictions: Predictions | None = None  # (kept for benchmarks and tests)
    recommendations: list[Recommendation] = field(default_factory=list)


class UserCore:
    """The UserStage's per-batch logic for one subtask; ``learner`` None computes features only."""

    def __init__(self, cfg: RtrecConfig, learner: OnlineLearner | None = None, subtask: int = 0):
        self.cfg = cfg
        self.learner = learner
        self.subtask = subtask
        self.parser = EventParser(cfg.events, cfg.model)
        self.features = FEATURES
        self.inputs = UserInputs()
        self._pick, self._session = self.inputs.pick(FEATURES)
        self.topic = cfg.kafka.events_topic
        self.allowed_lateness = cfg.events.allowed_lateness_ms
        self.dedup_window = cfg.events.dedup_window_ms
        self.dedup_max = cfg.events.dedup_max_ids_per_user
        self.dead_letter_duplicates = cfg.features.dead_letter_duplicates
        self.emit_features = cfg.features.emit_user_features
        self.snapshot_every_event = cfg.features.snapshots == "event"
        self.attribution_ms = cfg.model.attribution_window_ms
        self.shards = cfg.flink.key_shards
        self.item_shards: dict[str, int] = {}
        self.user_codes: dict[str, int] = {}

    # -- admit (touches state: the caller's thread) ------------------------------------------
    def admit(self, values: Sequence[bytes], partitions: Sequence[int], offsets: Sequence[int], watermark: int,
              load: Callable[[str], dict | None], now_ms: int | None = None) -> Admitted:
        """Parse, then refuse duplicate and late events (in that order); everything refused is a dead letter.

        ``load(user_id)`` returns a user's stored entry or None.
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        parse = self.parser.parse
        late_before = watermark - self.allowed_lateness
        forget_before = now - self.dedup_window
        a = Admitted(records=len(values))
        users, out, accepted = a.users, a.out, a.events
        for value, partition, offset in zip(values, partitions, offsets, strict=True):
            r = parse(value, now)
            if type(r) is Rejection:
                out.dead(r.user_id, value, r.reason, r.stage, f"{self.topic}/{partition}@{offset}")
                continue
            user = users.get(r.user_id)
            if user is None:
                user = users[r.user_id] = self._load(r.user_id, load, forget_before)
            seen = user.seen
            if r.event_id in seen:
                a.duplicates += 1
                if self.dead_letter_duplicates:
                    out.dead(r.user_id, value, f"duplicate event_id {r.event_id!r}", "dedup",
                             f"{self.topic}/{partition}@{offset}")
                continue
            if r.ts < late_before:
                a.late += 1
                out.dead(
                    r.user_id, value,
                    f"event time {r.ts} is more than events.allowed_lateness_ms={self.allowed_lateness} "
                    f"behind the watermark {watermark}",
                    "lateness", f"{self.topic}/{partition}@{offset}",
                )
                continue
            seen[r.event_id] = now
            if len(seen) > self.dedup_max:
                del seen[next(iter(seen))]
            accepted.append(r)
        return a

    def _load(self, user_id: str, load: Callable[[str], dict | None], forget_before: int) -> UserState:
        """The user's state (a new one if none), with ids older than the dedup window forgotten."""
        stored = load(user_id)
        if stored is None:  # (the model's part is made by process(): it takes torch, so the torch thread)
            return UserState(self.features.new_state(), None, {})
        user = UserState.read(stored)
        seen = user.seen
        while seen:  # ids were added in time order, so the oldest come first
            first = next(iter(seen))
            if seen[first] >= forget_before:
                break
            del seen[first]
        return user

    # -- process (no state access: the torch thread in the job) ------------------------------
    def process(self, a: Admitted) -> UserBatch:
        """Features, then (with a learner) predictions, learning and recommendations, for admitted events."""
        batch = UserBatch(a.users, a.out)
        events = a.events
        if not events:
            return batch
        learner = self.learner
        inputs = self._featurise(events, a.users, batch)
        if learner is not None:
            users = a.users
            new = [u for u, s in users.items() if s.model is None]  # new users, or state written while models were off
            if new:
                for u, model in zip(new, learner.new_users(new), strict=True):
                    users[u].model = model
            models = {u: s.model for u, s in users.items()}
            result = learner.process(inputs, models)
            self._emit(result.examples, result.recommendations, batch)
            batch.delta = self.hand_over()
        batch.newest_ts = max(e.ts for e in events)
        return batch

    def step(self, values: Sequence[bytes], partitions: Sequence[int], offsets: Sequence[int], watermark: int,
             load: Callable[[str], dict | None], now_ms: int | None = None) -> UserBatch:
        """:meth:`admit` then :meth:`process`: one whole batch."""
        return self.process(self.admit(values, partitions, offsets, watermark, load, now_ms))

    def _featurise(self, events: list[Event], users: dict[str, UserState], batch: UserBatch) -> list:
        """Fold events into user features in arrival order; group them by item shard.

        The declarations that hold strings fold here, event by event, on the feature engine; the numeric
        ones, then, in one compiled call for the whole batch (rtrec.features.compiled.HybridGroup), which
        also gives, per event, what the models need of its user's features before it (and after it, where
        the models score something then): with a learner, the returned inputs.
        """
        features, shards, item_shards, by_shard = self.features, self.shards, self.item_shards, batch.item_events
        other, compiled = features.engine, features.compiled
        emit, every_event = self.emit_features, self.snapshot_every_event
        learner = self.learner
        session_at = self._session
        sessions: list[int] = []  # per event: its session's events before it, then after it
        codes_of: list[int] = []
        snapshots: list[dict] = []  # (every_event) the other declarations' features after each event
        if learner is not None:
            codes, due, attribution = self.user_codes, batch.impressions_due, self.attribution_ms
        for e in events:
            u = e.user_id
            state = users[u].features[1]
            if learner is not None:
                code = codes.get(u)
                if code is None:
                    code = codes[u] = id_code(u)
                    if len(codes) > 1_000_000:
                        codes.clear()
                codes_of.append(code)
                if e.type == "impression" and e.item_id is not None:  # a negative unless attributed in time
                    at = -(-(e.ts + attribution) // IMPRESSION_TIMER_MS) * IMPRESSION_TIMER_MS
                    due.setdefault(at, []).append((u, e.item_id, e.event_id))
                sessions.append(state[session_at][2])
                other.update(state, e)
                sessions.append(state[session_at][2])
            else:
                other.update(state, e)
            if emit and every_event:
                snapshots.append(other.snapshot(state, e.ts))
            item = e.item_id
            if item is not None:
                shard = item_shards.get(item)
                if shard is None:
                    shard = item_shards[item] = shard_of(item, shards)
                    if len(item_shards) > 1_000_000:
                        item_shards.clear()
                by_shard.setdefault(shard, []).append(e)
        vectors, ids, raw, reads, picked = compiled.fold(events, "user_id",
                                                         {u: s.features[0] for u, s in users.items()},
                                                         emit and every_event, None if learner is None else self._pick)
        for u, v in vectors.items():
            users[u].features[0] = v
        if emit:
            out, version = batch.out.features, features.version
            for u, row, i in zip(ids, raw.tolist(), reads.tolist(), strict=True):
                e = events[i]
                rest = snapshots[i] if every_event else users[u].features[1]
                out.append(u, encode_feature("user", u, version, e.event_id, int(row[0]), int(row[1]),
                                             features.snapshot(row, rest, e.ts)))
        if learner is None:
            return []
        at = np.array([e.ts for e in events], np.float64)
        session = np.array(sessions, np.float64).reshape(-1, 2)
        dense, buckets = self.inputs.dense_rows(picked[:, 0], session[:, 0], at)
        dense, buckets = dense.tolist(), list(zip(*buckets.T.tolist(), strict=True))
        inputs = [Inputs(e, d, b, c) for e, d, b, c in zip(events, dense, buckets, codes_of, strict=True)]
        # Only the last interaction of a user is refreshed (unless every event is): features after the
        # event are needed there and for candidate requests.
        if learner.refresh_every_event:
            after = [pos for pos, e in enumerate(events) if refreshes(e)]
        else:
            last: dict[str, int] = {}
            after = []
            for pos, e in enumerate(events):
                if e.candidates:
                    after.append(pos)
                elif refreshes(e):
                    last[e.user_id] = pos
            after = sorted([*after, *last.values()])
        if after:
            dense, buckets = self.inputs.dense_rows(picked[after, 1], session[after, 1], at[after])
            for pos, d, b in zip(after, dense.tolist(), buckets.tolist(), strict=True):
                inputs[pos].dense_after, inputs[pos].buckets_after = d, tuple(b)
        return inputs

    def _emit(self, examples: Predictions, recommendations: list[Recommendation], batch: UserBatch) -> None:
        version = self.learner.version
        encode_predictions(examples, version, self.subtask, batch.out.predictions)
        encode_recommendations(recommendations, version, batch.out.recommendations)
        batch.examples += len(examples)
        batch.predictions = examples
        batch.recommendations = recommendations

    # -- impressions and hand-over --------------------------------------------------------
    def expire(self, due: list[tuple[str, str, str]], load: Callable[[str], dict | None],
               hand_over: bool = True) -> UserBatch:
        """Impressions whose attribution window closed: the still open ones' 0s are recorded (see
        :meth:`models.online.OnlineLearner.expire_impressions`).

        ``due`` holds (user id, item id, impression event id). :meth:`expire_loaded` is the same for
        users loaded already (the operator loads them on its task thread, then calls that on the torch
        thread). ``hand_over`` False leaves what they taught the global parameters with the trainer, for
        its next batch's hand-over: a PyFlink timer (thread mode) can emit the main output only, not
        the merger's side output."""
        return self.expire_loaded(due, self.users_of(due, load), hand_over)

    @staticmethod
    def users_of(due: list[tuple[str, str, str]], load: Callable[[str], dict | None]) -> dict[str, UserState]:
        """The stored state of the users in ``due`` (those without state left out)."""
        users: dict[str, UserState] = {}
        for user_id, _, _ in due:
            if user_id not in users:
                stored = load(user_id)
                if stored is not None:
                    users[user_id] = UserState.read(stored)
        return users

    def expire_loaded(self, due: list[tuple[str, str, str]], users: dict[str, UserState],
                      hand_over: bool = True) -> UserBatch:
        batch = UserBatch(users, Outputs())
        models = {u: s.model for u, s in users.items() if s.model is not None}
        examples = self.learner.expire_impressions(due, models)
        if len(examples):
            self._emit(examples, [], batch)
            if hand_over:
                batch.delta = self.hand_over()
        return batch

    def hand_over(self) -> DeltaMessage | None:
        """This trainer's change since the last hand-over (every batch: nothing learned is left
        outside a checkpoint)."""
        handed = self.learner.take_delta()
        if handed is None:
            return None
        seq, delta, heldout = handed
        return DeltaMessage(self.learner.trainer_id, seq, delta_to_bytes(delta), heldout_to_bytes(heldout))
