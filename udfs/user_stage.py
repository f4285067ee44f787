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
4. (model.enabled) predicts, then learns from, every feedback event
   (models.online.OnlineLearner), refreshes the top-k of users who
   interacted and ranks the candidates of requests, emits predictions and
   recommendations tagged with the model version, and hands the change to the
   global parameters over to the ModelMerger (udfs/merger.py),
5. writes the users' state back.

Merged model versions are announced on a broadcast input (a notice per
record of the model-updates topic: its offset and version number); the
subtask loads a newer version from the broker by its offset, keeps it in
broadcast state and swaps its global parameters to it between two batches,
so every output of a batch carries one version. An impression becomes a negative
example when ``model.attribution_window_ms`` of event time passes without a
click, cart or purchase of its item (an event-time timer per shard).
"""

from __future__ import annotations

import logging
import time

import orjson
import torch
from pyflink.common import Row, Types
from pyflink.datastream import KeyedBroadcastProcessFunction, KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from models.device import resolve_device
from models.online import REFRESH_TYPES, Inputs, OnlineLearner
from models.params import Version, delta_to_plain, from_bytes, to_bytes
from models.search import SearchRanker
from models.worker import torch_call
from rtrec.config import RtrecConfig
from rtrec.events import Event, EventParser, Rejection
from rtrec.features.definitions import USER_FEATURES
from rtrec.features.engine import FeatureEngine
from rtrec.features.model_inputs import UserInputs, id_code
from rtrec.sharding import shard_of
from rtrec.topics import RecordFetcher
from udfs.faults import FaultInjector
from udfs.item_stage import KEYED_ITEM_EVENTS
from udfs.merger import MERGER_INPUT
from udfs.metrics import Level
from udfs.profiling import OperatorProfile
from udfs.records import Outputs
from udfs.runtime import subtask_info
from udfs.state import CachedMapState, entity_map

log = logging.getLogger(__name__)

#: Side output: accepted events on their way to the ItemStage.
TO_ITEMS = OutputTag("to-items", KEYED_ITEM_EVENTS)
#: Side output: this trainer's parameter deltas on their way to the ModelMerger.
TO_MERGER = OutputTag("to-merger", MERGER_INPUT)
#: Broadcast state: "latest" -> the newest model version's bytes.
MODEL_STATE = MapStateDescriptor("model-version", Types.STRING(), Types.PICKLED_BYTE_ARRAY())
#: Broadcast input: a version on the model-updates topic (jobs/kafka_tables.model_updates_source);
#: number and created_ms are None for a record without rtrec's headers.
VERSION_NOTICE = Types.ROW_NAMED(["partition", "offset", "number", "created_ms"],
                                 [Types.INT(), Types.LONG(), Types.LONG(), Types.LONG()])

# A user's entry in the "users" MapState:
#   {"features": engine state, "model": the learner's user state (models.online), "seen": {event_id: first seen at (ms)}}


class UserStage(KeyedBroadcastProcessFunction):
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
        self.info = subtask_info(ctx)
        self.learner = None
        if cfg.model.enabled:
            torch_call(torch.set_num_threads, 1)
            # Warm up what torch imports lazily, so no import runs later on the worker thread
            # while a task thread is inside the interpreter.
            torch_call(lambda: from_bytes(to_bytes({"x": torch.zeros(1)})))
            # Sequence numbers of deltas must grow across restarts (the merger remembers them).
            self.learner = torch_call(OnlineLearner, cfg.model, self.info.index, resolve_device(cfg.model.device))
            self.learner.seq = int(time.time() * 1000) * 1000
            if cfg.text.enabled:
                # The text encoder and the encoded item catalogue, on the torch thread: made by the
                # first subtask of this TaskManager to get here, shared with the others and kept
                # across restarts of the task.
                self.learner.search = torch_call(SearchRanker.shared, cfg.text)
            self.inputs = UserInputs()
            self.impressions = ctx.get_map_state(
                MapStateDescriptor("impressions-due", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
            self.attribution_ms = cfg.model.attribution_window_ms
            self.versions = RecordFetcher(cfg.kafka, cfg.kafka.model_updates_topic)
        self._checked_broadcast = False
        self.broadcast_log = cfg.model.broadcast_log
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
        # Processing time minus event time of the newest event of the last batch.
        self.freshness_ms = Level(metrics, "freshness_ms")
        self.m_examples = metrics.counter("examples")
        self.m_versions = metrics.counter("model_versions_applied")
        self.model_version = Level(metrics, "model_version")
        # From a version's creation by the merger to this scorer using it.
        self.broadcast_latency_ms = Level(metrics, "broadcast_latency_ms")
        self.profile = OperatorProfile("UserStage", self.info.index)
        self.fault = FaultInjector(cfg, "user-stage", self.info.index)

    def close(self):
        if hasattr(self, "profile"):  # not when open() failed: let its error be the one reported
            self.profile.dump()
        if getattr(self, "versions", None) is not None:
            torch_call(self.versions.close)

    # -- model versions (broadcast) ------------------------------------------------
    def process_broadcast_element(self, value, ctx: KeyedBroadcastProcessFunction.Context):
        """A version was published: load it if it is newer, keep it in broadcast state and swap to it now."""
        if self.learner is None:
            return
        partition, offset, number = value[0], value[1], value[2]
        if number is not None and number <= self.learner.version:
            return  # (after a restore, the versions the checkpoint already covered come again)
        try:
            # The newest version on the topic, not just the announced one: while the job is busy,
            # notices queue up, and the scorer then skips every version between (each costs a load).
            record = torch_call(self.versions.fetch, partition, offset, newest=True)
        except Exception as e:  # the broker is away: the next notice tries again
            log.warning("could not load model version %s at offset %s: %s", number, offset, e)
            return
        if record is None:
            log.warning("model version %s at offset %s is no longer on the topic", number, offset)
            return
        data = record.value()
        try:
            version = torch_call(Version.from_bytes, data)
        except Exception as e:  # not ours; never fail the task on it
            log.warning("ignoring a record on the model-updates topic that is no rtrec version: %s", e)
            return
        state = ctx.get_broadcast_state(MODEL_STATE)
        # (get() of a missing key fails in PyFlink 2.2 for byte-array values: ask contains() first)
        if not state.contains("number") or int(bytes(state.get("number"))) < version.number:
            state.put("latest", data)
            state.put("number", str(version.number).encode())
        self._apply(version)

    def _apply(self, version, how: str = "broadcast") -> None:
        """Swap to ``version`` if it is newer; ``how`` it came: "broadcast", or "restored" from state."""
        if torch_call(self.learner.apply_version, version):
            now = int(time.time() * 1000)
            if how == "broadcast":  # (a restored version is as old as the outage)
                self.broadcast_latency_ms.set(now - version.created_ms)
            self.model_version.set(version.number)
            self.m_versions.inc()
            if self.broadcast_log:
                with open(self.broadcast_log, "a") as f:
                    f.write(f"{version.number},{self.info.index},{version.created_ms},{now},{how}\n")

    def _restore_version(self, ctx) -> None:
        """After a restart, take the version the broadcast state holds (it was checkpointed)."""
        self._checked_broadcast = True
        state = ctx.get_broadcast_state(MODEL_STATE)
        if state.contains("latest"):
            data = state.get("latest")
            self._apply(torch_call(Version.from_bytes, bytes(data)), "restored")

    # -- per batch -------------------------------------------------------------
    def process_element(self, batch: Row, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext):
        with self.profile:
            if self.learner is not None and not self._checked_broadcast:
                self._restore_version(ctx)
            results = self.process_batch(batch, ctx.timer_service().current_watermark(), ctx.timer_service())
        yield from results

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext):
        """Impressions whose attribution window closed become negative examples."""
        with self.profile:
            due = self.impressions.get(timestamp)
            results = []
            if due:
                self.impressions.remove(timestamp)
                users = {}
                for user_id, _, _ in due:
                    if user_id not in users:
                        entry = self.users.get(user_id)
                        if entry is not None:
                            users[user_id] = entry
                models = {u: s["model"] for u, s in users.items()}
                examples = torch_call(self.learner.expire_impressions, due, models)
                if examples:
                    out = Outputs()
                    self._emit_examples(examples, out)
                    results.append(out.row())
                    results.extend(self._hand_over())
                self.users.put_all(users)
        yield from results

    def process_batch(self, batch: Row, watermark: int, timers=None) -> list:
        """Everything one batch produces: side outputs for the ItemStage and merger, then this stage's row."""
        results: list = []
        out = Outputs()
        users: dict[str, dict] = {}
        events = self.admit(batch, watermark, users, out)
        if events:
            by_item_shard: dict[int, list[Event]] = {}
            inputs = self.featurise(events, users, out, by_item_shard)
            for shard, item_events in by_item_shard.items():
                results.append((TO_ITEMS, Row(shard, Row(shard, item_events))))
            if self.learner is not None:
                self.learn_and_score(inputs, users, out, timers)
                results.extend(self._hand_over())
            now = int(time.time() * 1000)
            self.freshness_ms.set(now - max(e.ts for e in events))
        self.users.put_all(users)
        if out:
            results.append(out.row())
        return results

    def learn_and_score(self, inputs: list, users: dict[str, dict], out: Outputs, timers) -> None:
        learner = self.learner
        models = {}
        for u, s in users.items():
            if s["model"] is None:
                s["model"] = torch_call(learner.new_user, u)
            models[u] = s["model"]
        result = torch_call(learner.process, inputs, models)
        self._emit_examples(result.examples, out)
        version = learner.version
        for r in result.recommendations:
            e = r.event
            out.recommendations.append(e.user_id, orjson.dumps({
                "user_id": e.user_id, "event_id": e.event_id, "ts": e.ts, "items": r.items, "scores": r.scores,
                "model_version": version, "feature_ts": e.ts,
                **({"request": "search", "query": e.query} if e.type == "search" and e.candidates
                   else {"request": "candidates" if e.candidates else "refresh"}),
            }))
        if timers is not None:
            due: dict[int, list] = {}
            for x in inputs:
                e = x.event
                if e.type == "impression" and e.item_id is not None:
                    due.setdefault(e.ts + self.attribution_ms, []).append((e.user_id, e.item_id, e.event_id))
            for at, entries in due.items():
                self.impressions.put(at, (self.impressions.get(at) or []) + entries)
                timers.register_event_time_timer(at)

    def _emit_examples(self, examples: list, out: Outputs) -> None:
        version = self.learner.version
        self.m_examples.inc(len(examples))
        for x in examples:
            out.predictions.append(x.user_id, orjson.dumps({
                "event_id": x.event_id, "user_id": x.user_id, "item_id": x.item_id, "ts": x.ts, "type": x.type,
                "label": x.label, "model_version": version, "scores": x.scores, "fused": x.fused,
                "heldout": x.heldout, "trainer": self.info.index,
            }, option=orjson.OPT_SERIALIZE_NUMPY))

    def _hand_over(self) -> list:
        """This trainer's change since the last hand-over, for the merger (every batch: nothing
        learned is left outside a checkpoint)."""
        message = torch_call(self._delta_message)
        return [] if message is None else [(TO_MERGER, Row(0, message))]

    def _delta_message(self):
        handed = self.learner.take_delta()
        if handed is None:
            return None
        seq, delta, heldout = handed
        # Everything as bytes made here: pickling a tensor on a task thread would hang (models/worker.py).
        return ("delta", self.learner.trainer_id, seq, to_bytes(delta_to_plain(delta)), to_bytes(heldout))

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
        self.fault.count(len(values))
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
                  by_item_shard: dict[int, list[Event]]) -> list:
        """Fold events into user features in arrival order; group them by item shard for the ItemStage.

        With models on, returns per event what the models need of its user's
        features before (and, where the top-k is refreshed, after) it.
        """
        engine, shards, emit, item_shards = self.engine, self.shards, self.emit_features, self.item_shards
        learning = self.learner is not None
        inputs = []
        if learning:
            ui = self.inputs
        for e in events:
            u = e.user_id
            user = users[u]
            if learning:
                state = user["features"]
                x = Inputs(e, ui.dense(state, e.ts), ui.buckets(state), id_code(u))
                engine.update(state, e)
                if e.candidates or e.type in REFRESH_TYPES:
                    x.dense_after, x.buckets_after = ui.dense(state, e.ts), ui.buckets(state)
                inputs.append(x)
            else:
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
        return inputs

    def load_user(self, user_id: str, forget_before: int) -> dict:
        """The user's state entry (a new one if none), with ids older than the dedup window forgotten."""
        user = self.users.get(user_id)
        if user is None:
            return {
                "features": self.engine.new_state(),
                "model": torch_call(self.learner.new_user, user_id) if self.learner is not None else None,
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


class UserFeatureStage(KeyedProcessFunction):
    """The UserStage without models (``model.enabled: false``): one input, no broadcast."""

    def __init__(self, cfg: RtrecConfig):
        self.stage = UserStage(cfg)

    def open(self, ctx: RuntimeContext):
        self.stage.open(ctx)

    def close(self):
        self.stage.close()

    def process_element(self, batch: Row, ctx: KeyedProcessFunction.Context):
        yield from self.stage.process_element(batch, ctx)
