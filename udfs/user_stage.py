"""UserStage: the keyed operator that admits events, keeps user state, and scores and learns.

Keyed by user shard (jobs/kafka_tables.py). Each user's state is one entry of
a MapState, so it has its own TTL and moves with its shard on rescale. Per
micro-batch it

1. admits records: parse and validate, drop duplicate event ids seen within
   the dedup window (the ids live in the user's own state entry, so checking
   them costs no extra state access), drop events behind the watermark by
   more than the allowed lateness; each refused record goes to the dead
   letters with its reason and stage, so records in = processed + duplicates
   + dead letters,
2. folds each accepted event into its user's features, in arrival order, and
   emits a feature snapshot per event,
3. hands the accepted events on to the ItemStage, grouped by item shard,
4. (model.enabled) learns from feedback and refreshes top-k (udfs/recommender.py),
5. writes the users' state back.
"""

from __future__ import annotations

import time

from pyflink.common import Row
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext

from rtrec.config import RtrecConfig
from rtrec.events import Event, EventParser, Rejection
from rtrec.features.definitions import USER_FEATURES
from rtrec.features.engine import FeatureEngine
from rtrec.sharding import shard_of
from udfs.item_stage import KEYED_ITEM_EVENTS
from udfs.profiling import OperatorProfile
from udfs.recommender import OnlineRecommender
from udfs.records import Outputs
from udfs.runtime import subtask_info
from udfs.state import CachedMapState, entity_map

#: Side output: accepted events on their way to the ItemStage.
TO_ITEMS = OutputTag("to-items", KEYED_ITEM_EVENTS)

# A user's entry in the "users" MapState:
#   {"features": engine state, "model": recommender state, "seen": {event_id: first seen at (ms)}}


class UserStage(KeyedProcessFunction):
    """Admit, featurise, learn and recommend, one micro-batch at a time."""

    def __init__(self, cfg: RtrecConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        cfg = self.cfg
        self.parser = EventParser(cfg.events, cfg.model)
        self.engine = FeatureEngine(USER_FEATURES)
        ttl = cfg.features.user_ttl_ms
        self.users = CachedMapState(ctx.get_map_state(entity_map("users", ttl)), ttl)
        self.dedup_window = cfg.events.dedup_window_ms
        self.dedup_max = cfg.events.dedup_max_ids_per_user
        self.recommender = OnlineRecommender(cfg) if cfg.model.enabled else None
        self.topic = cfg.kafka.events_topic
        self.allowed_lateness = cfg.events.allowed_lateness_ms
        self.shards = cfg.flink.shards
        self.item_shards: dict[str, int] = {}
        self.emit_features = cfg.features.emit_user_features
        self.dead_letter_duplicates = cfg.features.dead_letter_duplicates

        metrics = ctx.get_metrics_group().add_group("rtrec")
        self.m_events = metrics.counter("events_in")
        self.m_accepted = metrics.counter("events_accepted")
        self.m_dead = metrics.counter("dead_letters")
        self.m_duplicates = metrics.counter("duplicates")
        self.m_late = metrics.counter("late_events")
        self._freshness_ms = 0
        # Processing time minus event time of the newest event of the last batch.
        metrics.gauge("freshness_ms", lambda: self._freshness_ms)
        self.profile = OperatorProfile("UserStage", subtask_info(ctx).index)

    def close(self):
        self.profile.dump()

    # -- per batch -------------------------------------------------------------
    def process_element(self, batch: Row, ctx: KeyedProcessFunction.Context):
        with self.profile:
            results = self.process_batch(batch, ctx.timer_service().current_watermark())
        yield from results

    def process_batch(self, batch: Row, watermark: int) -> list:
        """Everything one batch produces: side outputs for the ItemStage, then this stage's output row."""
        results: list = []
        out = Outputs()
        users: dict[str, dict] = {}
        events = self.admit(batch, watermark, users, out)
        if events:
            by_item_shard: dict[int, list[Event]] = {}
            self.featurise(events, users, out, by_item_shard)
            for shard, item_events in by_item_shard.items():
                results.append((TO_ITEMS, Row(shard, Row(shard, item_events))))
            if self.recommender is not None:
                models = {u: s["model"] or self.recommender.new_user(u) for u, s in users.items()}
                self.recommender.process(events, models, out)
                for u, s in users.items():
                    s["model"] = models[u]
            now = int(time.time() * 1000)
            self._freshness_ms = now - max(e.ts for e in events)
        self.users.put_all(users)
        if out:
            results.append(out.row())
        return results

    def admit(self, batch: Row, watermark: int, users: dict[str, dict], out: Outputs) -> list[Event]:
        """Parse, then refuse duplicate and late events (in that order); everything refused becomes a dead letter.

        Loads the state of every user with a valid event into ``users``.
        """
        now = int(time.time() * 1000)
        parse = self.parser.parse
        late_before = watermark - self.allowed_lateness
        forget_before = now - self.dedup_window
        accepted: list[Event] = []
        values, partitions, offsets = batch[1], batch[2], batch[3]
        self.m_events.inc(len(values))
        for value, partition, offset in zip(values, partitions, offsets, strict=True):
            r = parse(value, now)
            if type(r) is Rejection:
                out.dead(r.user_id, value, r.reason, r.stage, f"{self.topic}/{partition}@{offset}")
                continue
            user = users.get(r.user_id)
            if user is None:
                user = users[r.user_id] = self.load_user(r.user_id, forget_before)
            seen = user["seen"]
            if r.event_id in seen:
                self.m_duplicates.inc()
                if self.dead_letter_duplicates:
                    out.dead(r.user_id, value, f"duplicate event_id {r.event_id!r}", "dedup",
                             f"{self.topic}/{partition}@{offset}")
                continue
            if r.ts < late_before:
                self.m_late.inc()
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
        self.m_dead.inc(len(out.dead_keys))
        self.m_accepted.inc(len(accepted))
        return accepted

    def featurise(self, events: list[Event], users: dict[str, dict], out: Outputs,
                  by_item_shard: dict[int, list[Event]]) -> None:
        """Fold events into user features in arrival order; group them by item shard for the ItemStage."""
        engine, shards, emit, item_shards = self.engine, self.shards, self.emit_features, self.item_shards
        for e in events:
            u = e.user_id
            user = users[u]
            engine.update(user["features"], e)
            if emit:
                out.features.append(u, engine.record(u, user["features"], e))
            item = e.item_id
            if item is not None:
                shard = item_shards.get(item)
                if shard is None:
                    shard = item_shards[item] = shard_of(item, shards)
                    if len(item_shards) > 1_000_000:
                        item_shards.clear()
                by_item_shard.setdefault(shard, []).append(e)

    def load_user(self, user_id: str, forget_before: int) -> dict:
        """The user's state entry (a new one if none), with ids older than the dedup window forgotten."""
        user = self.users.get(user_id)
        if user is None:
            return {
                "features": self.engine.new_state(),
                "model": self.recommender.new_user(user_id) if self.recommender is not None else None,
                "seen": {},
            }
        seen = user["seen"]
        # Ids were added in time order, so the oldest come first.
        while seen:
            first = next(iter(seen))
            if seen[first] >= forget_before:
                break
            del seen[first]
        return user
