"""UserStage: the keyed operator that admits events, keeps user state, and scores and learns.

Keyed by user shard (jobs/kafka_tables.py). Each user's state is one entry of
a MapState, so it has its own TTL and moves with its shard on rescale. The
per-batch logic is rtrec.core.user.UserCore; this operator adapts it to
Flink: per micro-batch it admits the records on the task thread (that reads
the users' state), processes them in one call on the torch thread
(models/worker.py), then writes the users' state back, registers the
impressions' timers and routes the outputs: the events per item shard to the
ItemStage, the parameter delta to the ModelMerger (udfs/merger.py), the
records to the output topics.

Merged model versions are announced on a broadcast input (a notice per
record of the model-updates topic: its offset and version number); the
subtask loads a newer version from the broker by its offset, keeps it in
broadcast state and swaps its global parameters to it between two batches,
so every output of a batch carries one version. Notices queue behind the
events while the job works through a backlog, so between two batches (at
most every ``model.version_check_ms``) the subtask also asks the broker for
the topic's end and adopts a newer version at once; ``model_staleness_ms``
is the age of the newest version it had not adopted when it asked. An impression is learned as a 0
when it comes; its record, a 0, is written when ``model.attribution_window_ms`` of event time passes
without a click, cart or purchase of its item (an event-time timer per shard).
"""

from __future__ import annotations

import logging
import time

import torch
from pyflink.common import Row, Types
from pyflink.datastream import KeyedBroadcastProcessFunction, KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from models.device import resolve_device
from models.online import OnlineLearner
from models.params import ModelShapeMismatch, Version, from_bytes, to_bytes
from models.search import SearchRanker
from models.worker import torch_call
from rtrec import topics
from rtrec.config import RtrecConfig
from rtrec.core import heap
from rtrec.core.user import DueTimes, UserBatch, UserCore, batch_parts
from rtrec.events import pack_events
from rtrec.model_updates import VersionReader
from rtrec.profiling import OperatorProfile
from rtrec.sharding import ShardCountMismatch, state_shard_error
from udfs.faults import FaultInjector
from udfs.item_stage import KEYED_ITEM_EVENTS
from udfs.merger import MERGER_INPUT, RESTORE_WITH_ITS_SETTINGS
from udfs.metrics import Level
from udfs.records import stage_row
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

# A user's entry in the "users" MapState: rtrec.core.user.UserState.to_state().

class UserStage(KeyedBroadcastProcessFunction):
    """Admit, featurise, learn and recommend, one micro-batch at a time."""

    def __init__(self, cfg: RtrecConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        cfg = self.cfg
        ttl = cfg.features.user_ttl_ms
        self.users = CachedMapState(ctx.get_map_state(entity_map("users", ttl)), ttl)
        # The key shard count this key's state was written with (rtrec.sharding.state_shard_error),
        # checked once per key and run against the core's (self.core.shards).
        self.max_batch = cfg.flink.max_batch_events
        self.shard_record = ctx.get_state(ValueStateDescriptor("key-shards", Types.INT()))
        self.checked_shards: set[int] = set()
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
            # Compile the sequential passes now (numba: on this thread, see models/worker.py).
            torch_call(self.learner.warm_up)
            if cfg.text.enabled:
                # The text encoder and the encoded item catalogue, on the torch thread: made by the
                # first subtask of this TaskManager to get here, shared with the others and kept
                # across restarts of the task.
                self.learner.search = torch_call(SearchRanker.shared, cfg.text)
            self.impressions = ctx.get_map_state(
                MapStateDescriptor("impressions-due", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
            # per key shard: the times "impressions-due" holds, built from its keys at first use
            self.due_times: dict[int, DueTimes] = {}
            self.versions = VersionReader(cfg.kafka, cfg.kafka.model_updates_topic)
        # Where the adopted version lies on the model-updates topic, and when to ask for a newer one.
        self.version_at = (0, -1)
        self._adopted: tuple[int, bytes] | None = None  # adopted between batches, not yet in broadcast state
        self.check_s = cfg.model.version_check_ms / 1000
        self._next_check = 0.0
        # A fresh start or a resume from a savepoint takes versions published before it only through
        # the merger (which warm-starts from the newest, or not: model.warm_start) or the restored
        # broadcast state. After a failover (attempt > 0) the newest on the topic is this job's own,
        # and may be newer than the broadcast state holds (a version adopted between batches reaches
        # it with the next notice): the scorer takes it at once rather than score on an older one.
        self.started_ms = 0 if self.info.attempt > 0 else int(time.time() * 1000) - 1000
        self.core = UserCore(cfg, self.learner, self.info.index)
        torch_call(self.core.features.compiled.warm_up)
        self._checked_broadcast = False
        self.broadcast_log = cfg.model.broadcast_log

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
        self.m_versions_skipped = metrics.counter("model_versions_skipped")
        self.model_version = Level(metrics, "model_version")
        # From a version's creation by the merger to this scorer using it.
        self.broadcast_latency_ms = Level(metrics, "broadcast_latency_ms")
        # At a check between batches: the age of the newest version this scorer had not adopted (0: none).
        self.staleness_ms = Level(metrics, "model_staleness_ms")
        self.profile = OperatorProfile("UserStage", self.info.index)
        self.fault = FaultInjector(cfg, "user-stage", self.info.index)
        heap.settle()  # the text model, torch, numba: out of the collector's walks from now on

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
        with self.profile:
            self._notice(value, ctx)

    def _notice(self, value, ctx) -> None:
        partition, offset, number = value[0], value[1], value[2]
        if number is not None and number <= self.learner.version:
            # (after a restore, the versions the checkpoint already covered come again; or this
            # scorer found the version between two batches: keep it in broadcast state now)
            self._keep(ctx, *(self._adopted or (0, b"")))
            self._adopted = None
            return
        try:
            # The newest version on the topic, not just the announced one: while the job is busy,
            # notices queue up, and the scorer then skips every version between (each costs a load).
            record = torch_call(self.versions.head, partition, offset, newest=True)
            data = None if record is None else torch_call(self.versions.data, record)
        except Exception as e:  # the broker is away: the next notice tries again
            log.warning("could not load model version %s at offset %s: %s", number, offset, e)
            return
        if data is None:
            log.warning("model version %s at offset %s is no longer on the topic", number, offset)
            return
        try:
            version = torch_call(Version.from_bytes, data)
        except Exception as e:  # not ours; never fail the task on it
            log.warning("ignoring a record on the model-updates topic that is no rtrec version: %s", e)
            return
        self.version_at = (record.partition(), record.offset())
        if self._made_elsewise(version):
            return
        self._keep(ctx, version.number, data)
        self._apply(version)

    def _keep(self, ctx, number: int, data: bytes) -> None:
        """Version ``number`` (``data``) into broadcast state, if newer than what it holds."""
        state = ctx.get_broadcast_state(MODEL_STATE)
        # (get() of a missing key fails in PyFlink 2.2 for byte-array values: ask contains() first)
        if data and (not state.contains("number") or int(bytes(state.get("number"))) < number):
            state.put("latest", data)
            state.put("number", str(number).encode())

    def _check_for_newer(self) -> None:
        """Between two batches, at most every ``model.version_check_ms``: adopt the newest version on
        the topic if this scorer does not hold it, without waiting for its notice (which queues behind
        the events while the job works through a backlog)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_s
        partition, offset = self.version_at
        try:
            record = torch_call(self.versions.newer, partition, offset)
        except Exception as e:  # the broker is away: notices and the next check try again
            log.warning("could not check for a newer model version: %s", e)
            return
        number = None if record is None else topics.header_int(record, topics.VERSION_HEADER)
        if (record is None or record.timestamp()[1] < self.started_ms
                or (number is not None and number <= self.learner.version)):
            self.staleness_ms.set(0)
            if record is not None and record.timestamp()[1] >= self.started_ms:
                self.version_at = (partition, record.offset())
            return
        created = topics.header_int(record, topics.CREATED_HEADER)
        if created is not None:
            self.staleness_ms.set(max(0, int(time.time() * 1000) - created))
        try:
            data = torch_call(self.versions.data, record)
            if data is None:  # a chunk is gone (compacted: a newer version is out), the next check finds that
                return
            version = torch_call(Version.from_bytes, data)
        except Exception as e:  # not ours (or the broker is away): skip past it
            log.warning("ignoring a record on the model-updates topic that is no rtrec version: %s", e)
            self.version_at = (partition, record.offset())
            return
        self.version_at = (partition, record.offset())
        if self._made_elsewise(version):
            return
        if self._apply(version, "checked"):
            self._adopted = (version.number, data)

    def _made_elsewise(self, version) -> bool:
        """True (and a warning) for a version on the topic made with other model settings: a run's before
        the settings changed, read again after a failover (which reads the topic from its start). Skipped,
        never adopted nor kept in broadcast state: the merger's warm start refuses the same version and
        says what to do, and a scorer failing on it first hid that message behind its own."""
        try:
            torch_call(self.learner.models.params.check_shapes, version.state)
        except ModelShapeMismatch as e:
            log.warning("skipping model version %d on the model-updates topic: %s", version.number, e)
            self.m_versions_skipped.inc()
            return True
        return False

    def _apply(self, version, how: str = "broadcast") -> bool:
        """Swap to ``version`` if it is newer; ``how`` it came: "broadcast", "checked" between batches,
        or "restored" from state. True if it swapped."""
        if torch_call(self.learner.apply_version, version):
            now = int(time.time() * 1000)
            if how == "broadcast":  # (a restored version is as old as the outage)
                self.broadcast_latency_ms.set(now - version.created_ms)
            self.model_version.set(version.number)
            self.m_versions.inc()
            if self.broadcast_log:
                with open(self.broadcast_log, "a") as f:
                    f.write(f"{version.number},{self.info.index},{version.created_ms},{now},{how}\n")
            return True
        return False

    def _restore_version(self, ctx) -> None:
        """After a restart, take the version the broadcast state holds (it was checkpointed)."""
        self._checked_broadcast = True
        state = ctx.get_broadcast_state(MODEL_STATE)
        if state.contains("latest"):
            data = state.get("latest")
            try:
                self._apply(torch_call(Version.from_bytes, bytes(data)), "restored")
            except ModelShapeMismatch as e:  # (no restart mends it: the job is ended and this said, one line)
                raise ModelShapeMismatch(f"the restored state holds {e}: {RESTORE_WITH_ITS_SETTINGS}") from None

    # -- per batch -------------------------------------------------------------
    def process_element(self, batch: Row, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext):
        with self.profile:
            if self.learner is not None:
                if not self._checked_broadcast:
                    self._restore_version(ctx)
                if self.check_s:
                    self._check_for_newer()
            results = self.process_batch(batch, ctx.timer_service().current_watermark(), ctx.timer_service())
        yield from results

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext):
        """Impressions whose attribution window closed: their 0s' records."""
        with self.profile:
            # Every timer of this shard the watermark has passed, in one expiry: a backlog's watermark
            # jumps over many at once, and each expiry is a learning step and a delta of its own. The
            # timers whose entries this takes find nothing when they fire.
            watermark = max(timestamp, ctx.timer_service().current_watermark())
            ready = self._due_times(ctx.get_current_key()).take(watermark)
            due = []
            for at in ready:
                due.extend(self.impressions.get(at))
                self.impressions.remove(at)
            results = []
            if due:
                users = self.core.users_of(due, self.users.get)
                # (no hand-over: a timer here cannot emit to the merger's side output, in thread mode
                # PyFlink reads whatever it yields as main-output Rows; the next batch hands it over)
                result = torch_call(self.core.expire_loaded, due, users, False)
                results = self._route(result, None)
        yield from results

    def process_batch(self, batch: Row, watermark: int, timers=None) -> list:
        """Everything one batch produces: side outputs for the ItemStage and merger, then this stage's rows.
        A batch of more than ``flink.max_batch_events`` goes in parts, with a check for a newer model
        version between them."""
        values, partitions, offsets = batch[1], batch[2], batch[3]
        if batch[0] not in self.checked_shards:
            self._check_shards(batch[0])
        parts = batch_parts(len(values), self.max_batch)
        shard = batch[0]
        if len(parts) == 1:
            return self._process_part(shard, values, partitions, offsets, watermark, timers)
        results = []
        for k, part in enumerate(parts):
            if k and self.learner is not None and self.check_s:
                self._check_for_newer()
            results.extend(self._process_part(shard, values[part], partitions[part], offsets[part], watermark,
                                              timers))
        return results

    def _process_part(self, shard: int, values, partitions, offsets, watermark: int, timers) -> list:
        self.fault.count(len(values))
        admitted = self.core.admit(values, partitions, offsets, watermark, self.users.get)
        # (each inc crosses into the JVM, and may wait there for the GIL on the way back: not for nothing)
        for counter, n in ((self.m_events, admitted.records), (self.m_duplicates, admitted.duplicates),
                           (self.m_late, admitted.late), (self.m_dead, len(admitted.out.dead_keys)),
                           (self.m_accepted, len(admitted.events))):
            if n:
                counter.inc(n)
        # (compiled code and torch run on a thread Python made: models/worker.py)
        result = torch_call(self.core.process, admitted) if admitted.events else self.core.process(admitted)
        if result.newest_ts is not None:
            self.freshness_ms.set(int(time.time() * 1000) - result.newest_ts)
        return self._route(result, timers, shard)

    def _check_shards(self, shard: int) -> None:
        """Refuse state written with another key shard count (its users would silently start from
        nothing); record the count with new state."""
        recorded = self.shard_record.value()
        legacy = recorded is None and not self.users.state.is_empty()
        error = state_shard_error(recorded, legacy, self.core.shards, self.cfg.flink.shards != 0)
        if error:
            log.error("rtrec: %s", error)
            raise ShardCountMismatch(error)
        if recorded is None:
            self.shard_record.update(self.core.shards)
        self.checked_shards.add(shard)

    def _due_times(self, shard: int) -> DueTimes:
        """The times this shard's impressions fall due; the first call since the task (re)started reads
        them from the state's keys (the only scan of them)."""
        times = self.due_times.get(shard)
        if times is None:
            times = self.due_times[shard] = DueTimes(self.impressions.keys())  # noqa: SIM118 (a MapState)
        return times

    def _route(self, result: UserBatch, timers, shard: int | None = None) -> list:
        """The outputs of ``result``; its users' state written, and (``timers``: a batch of key ``shard``)
        its impressions' due times registered."""
        results: list = [(TO_ITEMS, Row(item_shard, Row(item_shard, pack_events(events))))
                         for item_shard, events in result.item_events.items()]
        if result.delta is not None:
            results.append((TO_MERGER, Row(0, result.delta.as_message())))
        if result.examples:
            self.m_examples.inc(result.examples)
        self.users.put_all({u: s.to_state() for u, s in result.users.items()})
        if timers is not None and result.impressions_due:
            due_times = self._due_times(shard)
            for at, entries in result.impressions_due.items():
                if due_times.add(at):
                    self.impressions.put(at, entries)
                    timers.register_event_time_timer(at)
                else:
                    self.impressions.put(at, self.impressions.get(at) + entries)
        if result.out:
            results.append(stage_row(result.out))
        return results


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
