"""The job's per-batch path in one process, without Flink or Kafka: for benchmarks, tests and tuning.

:class:`LocalPipeline` cuts a stream the way the job does (every batch
interval, the records that arrived, one micro-batch per user key shard) and
runs the same cores the operators run: :class:`~rtrec.core.user.UserCore`
per shard batch, then :class:`~rtrec.core.item.ItemCore` over the window's
accepted events in event-time order (the ItemStage folds them once the
watermark passes, so the models see item features a batch late, as in the
job), then the :class:`~models.merger.MergerCore` with one new version per
window. Keyed state is a dict of the entries the operators would store.
Impressions' attribution timers fire as the job's event-time timers do: once
the watermark passes them, before the next window's batches, and all of them
at the end of the stream (a bounded source's last watermark); each still open
impression's 0 is recorded through the same UserCore.expire.

At ``flink.parallelism`` N > 1 there are N UserCores, each with its own
trainer, and each shard batch goes to the subtask Flink would give its shard
(rtrec.sharding.subtask_of_shard); the merger then merges the N trainers'
changes once per window and every trainer adopts the version, as the job's
do when it reaches them (here at once: the merge's effect on quality without
the broadcast's timing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from models.merger import ItemFeaturesMessage, MergerCore, read_message
from models.online import OnlineLearner, Predictions
from rtrec.config import RtrecConfig
from rtrec.core import heap
from rtrec.core.item import ItemCore
from rtrec.core.user import DueTimes, UserCore, batch_parts
from rtrec.events import Event
from rtrec.features.backfill import event_order
from rtrec.sharding import default_max_parallelism, shard_of, subtask_of_shard


@dataclass
class Timings:
    """CPU seconds (process time) spent per part, and what went through."""

    user: float = 0.0
    item: float = 0.0
    merge: float = 0.0
    events: int = 0
    batches: int = 0
    outputs: dict[str, int] = field(default_factory=lambda: {"features": 0, "recommendations": 0,
                                                            "predictions": 0, "dead_letters": 0})


class LocalPipeline:
    """UserCore + ItemCore (+ MergerCore with models on) over windows of records, in one process."""

    def __init__(self, cfg: RtrecConfig, search=None, trainer: int = 0):
        self.cfg = cfg
        self.parallelism = cfg.flink.parallelism
        self.learners: list[OnlineLearner] = []
        if cfg.model.enabled:
            for k in range(self.parallelism):
                learner = OnlineLearner(cfg.model, trainer + k)
                learner.search = search
                learner.warm_up()
                self.learners.append(learner)
        self.learner = self.learners[0] if self.learners else None
        self.user_cores = [UserCore(cfg, self.learners[k] if self.learners else None, trainer + k)
                           for k in range(self.parallelism)]
        self.user_core = self.user_cores[0]
        self._max_parallelism = default_max_parallelism(self.parallelism)
        self.item_core = ItemCore(cfg.features.emit_item_features, cfg.model.enabled, cfg.features.snapshots == "event")
        self.item_core.warm_up()  # (as the stages do in open())
        self.user_core.features.compiled.warm_up()
        self.merger = MergerCore(cfg.model) if self.learner is not None else None
        self.users: dict[str, dict] = {}  # the "users" MapState: user id -> stored entry
        self.items: dict[str, list] = {}  # the "items" MapState
        self.shards = cfg.flink.key_shards
        self.max_batch = cfg.flink.max_batch_events
        self.predictions = Predictions()
        self.recommendations: list = []
        #: per subtask: event time -> the impressions due then, and those times in order (the UserStage's
        #: timers, their state and its index)
        self.due: list[dict[int, list[tuple[str, str, str]]]] = [{} for _ in range(self.parallelism)]
        self.due_times = [DueTimes() for _ in range(self.parallelism)]
        self.timings = Timings()
        self.keep_outputs = True
        heap.settle()  # as the operators do once open

    def run(self, events: list[Event], window: int, freeze_at: int | None = None) -> LocalPipeline:
        """Feed ``events`` in order, ``window`` records per batch interval; from ``freeze_at`` on nothing learns."""
        encoded = [e.to_json() for e in events]
        watermark = -(2**62)
        for start in range(0, len(events), window):
            if freeze_at is not None and start >= freeze_at:
                for learner in self.learners:
                    learner.learning = False
            chunk = events[start : start + window]
            self.window(chunk, encoded[start : start + window], watermark)
            watermark = max(watermark, max(e.ts for e in chunk) - self.cfg.events.watermark_out_of_orderness_ms)
            self.expire(watermark)
        self.expire(2**63 - 1)
        return self

    def expire(self, watermark: int) -> None:
        """Fire every impression timer at or before ``watermark``: per subtask, the impressions of all of
        them in time order through one UserCore.expire. (The UserStage's timers are per key shard: its
        first timer to fire takes that shard's due impressions, so a subtask makes one expiry per shard.)"""
        for k, due in enumerate(self.due):
            ready = self.due_times[k].take(watermark)
            if not ready:
                continue
            c0 = time.process_time()
            # (as the UserStage's timer: what they taught goes to the merger with the subtask's next batch)
            batch = self.user_cores[k].expire([x for at in ready for x in due.pop(at)], self.users.get, False)
            self.users.update({u: s.to_state() for u, s in batch.users.items()})
            self.timings.user += time.process_time() - c0
            self._collect(batch)

    def window(self, events: list[Event], values: list[bytes], watermark: int) -> None:
        """One batch interval: each user shard's batch (in parts of at most flink.max_batch_events), then
        the item features, then a merge."""
        by_shard: dict[int, list[int]] = {}
        for i, e in enumerate(events):
            by_shard.setdefault(shard_of(e.user_id, self.shards), []).append(i)
        t = self.timings
        accepted: list[Event] = []
        clock = time.process_time
        parts = [(shard, idx[part]) for shard, idx in sorted(by_shard.items())
                 for part in batch_parts(len(idx), self.max_batch)]
        for shard, idx in parts:
            c0 = clock()
            k = subtask_of_shard(shard, self.parallelism, self._max_parallelism)
            core = self.user_cores[k]
            batch = core.step([values[i] for i in idx], [shard] * len(idx), idx, watermark, self.users.get)
            self.users.update({u: s.to_state() for u, s in batch.users.items()})
            t.user += clock() - c0
            t.batches += 1
            for evs in batch.item_events.values():
                accepted.extend(evs)
            for at, entries in batch.impressions_due.items():
                self.due[k].setdefault(at, []).extend(entries)
                self.due_times[k].add(at)
            self._collect(batch)
        t.events += len(events)
        items = None
        if accepted:  # (a window whose every event was refused has none for the item stage)
            c0 = clock()
            items = self.item_core.fold(sorted(accepted, key=event_order), self.items.get)
            self.items.update(items.states)
            t.item += clock() - c0
            self._count(items.out)
        if self.merger is not None and self.learner.learning:
            c0 = clock()
            if items is not None:
                self.merger.add(ItemFeaturesMessage(items.model_inputs))
            version = self.merger.merge()
            for learner in self.learners:
                learner.apply_version(version)
            t.merge += clock() - c0

    def _collect(self, batch) -> None:
        """A UserCore batch's outputs counted (and kept), its delta to the merger."""
        self._count(batch.out)
        if self.keep_outputs:
            if batch.predictions is not None:
                self.predictions.extend(batch.predictions)
            self.recommendations.extend(batch.recommendations)
        if batch.delta is not None:
            c0 = time.process_time()
            self.merger.add(read_message(batch.delta.as_message()))  # as the ModelMerger gets it
            self.timings.merge += time.process_time() - c0

    def _count(self, out) -> None:
        o = self.timings.outputs
        o["features"] += len(out.features)
        o["recommendations"] += len(out.recommendations)
        o["predictions"] += len(out.predictions)
        o["dead_letters"] += len(out.dead_keys)
