"""ItemStage: per-item features, computed in event-time order.

Keyed by item shard (rtrec.sharding). It receives the events the UserStage
accepted, grouped by item shard, and holds each event back until the
watermark passes its timestamp; then it folds the due events in
``(ts, event_id)`` order. Items are touched by many users whose events arrive
through different partitions and subtasks, so arrival order is not event
order; sorting by event time makes an item's features as of an event the same
as the offline backfill computes (the price: item features lag by the
watermark delay). An event that arrives behind the watermark (late but within
the allowed lateness) is folded in at once.

Held-back events wait in state as they came, one MapState entry per batch,
so the state calls follow the batches, not the events (each costs a trip
into the JVM, and on the way back a wait for the interpreter's lock, which
the torch thread may hold). The entries this instance wrote are read back
from memory, not from state; state is read only after a restore. One timer
waits for the oldest held event, registered again only when that changes;
whenever the stage runs (a batch arrives or that timer fires) it folds
everything the watermark has passed.
"""

from __future__ import annotations

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from models.merger import ItemFeaturesMessage
from models.worker import torch_call
from rtrec.config import RtrecConfig
from rtrec.core.item import ItemCore
from rtrec.events import Event, pack_events, unpack_events
from rtrec.features.backfill import event_order
from rtrec.profiling import OperatorProfile
from udfs.faults import FaultInjector
from udfs.records import stage_row
from udfs.runtime import subtask_info
from udfs.state import CachedMapState, entity_map

#: What the UserStage sends here: (item shard, accepted events of that shard as rtrec.events.pack_events
#: columns) ...
ITEM_EVENTS = Types.ROW_NAMED(["shard", "events"], [Types.INT(), Types.PICKLED_BYTE_ARRAY()])
#: ... keyed by the shard in Java (udfs/keying.py).
KEYED_ITEM_EVENTS = Types.ROW_NAMED(["key", "value"], [Types.INT(), ITEM_EVENTS])
#: Side output (model.enabled): the models' view of the items just updated, for the ModelMerger,
#: which ships it to every scorer with the next version. Row(0, ("items", {item id: dense features})).
ITEMS_TO_MERGER = OutputTag("items-to-merger", Types.ROW_NAMED(["key", "value"], [Types.INT(), Types.PICKLED_BYTE_ARRAY()]))


class ItemStage(KeyedProcessFunction):
    """Fold events into item feature state once the watermark passes them."""

    def __init__(self, cfg: RtrecConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        self.core = ItemCore(self.cfg.features.emit_item_features, self.cfg.model.enabled,
                             self.cfg.features.snapshots == "event")
        torch_call(self.core.warm_up)
        self.items = CachedMapState(
            ctx.get_map_state(entity_map("items", self.cfg.features.item_ttl_ms)), self.cfg.features.item_ttl_ms
        )
        # sequence number -> events of one batch held back until the watermark passes them (pack_events
        # columns; a list of events as releases up to 0.1.0 kept them)
        self.pending = ctx.get_map_state(MapStateDescriptor("pending", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
        # shard -> {sequence number: oldest event time} of what `pending` holds (rebuilt after a restore)
        self.held: dict[int, dict[int, int]] = {}
        # (shard, sequence number) -> the events `pending` holds there, as this instance wrote them
        self.written: dict[tuple[int, int], list[Event]] = {}
        # shard -> the event time of its timer registered last (Flink restores timers with the state)
        self.timer_at: dict[int, int] = {}
        self.profile = OperatorProfile("ItemStage", subtask_info(ctx).index)
        self.fault = FaultInjector(self.cfg, "item-stage", subtask_info(ctx).index)

    def close(self):
        if hasattr(self, "profile"):  # not when open() failed: let its error be the one reported
            self.profile.dump()

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context):
        events = unpack_events(value[1])
        self.fault.count(len(events))
        with self.profile:
            results = self.advance(value[0], events, ctx.timer_service(), packed=value[1])
        yield from results

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        with self.profile:
            results = self.advance(ctx.get_current_key(), [], ctx.timer_service())
        yield from results

    def advance(self, shard: int, events: list[Event], timers, packed: tuple | None = None) -> list:
        """Hold back ``events`` the watermark has not passed; fold everything it has, oldest first.
        ``packed``: ``events`` as they came (pack_events), kept as they are when all of them wait."""
        watermark = timers.current_watermark()
        held = self.held.get(shard)
        if held is None:  # first call for this shard since (re)start
            held = self.held[shard] = {seq: min(e.ts for e in unpack_events(evs))
                                       for seq, evs in self.pending.items()}
        due = [e for e in events if e.ts <= watermark]
        written = self.written
        for seq in [s for s, oldest in held.items() if oldest <= watermark]:
            waiting = written.pop((shard, seq), None)
            if waiting is None:  # (held since before a restore)
                waiting = unpack_events(self.pending.get(seq) or [])
            rest = [e for e in waiting if e.ts > watermark]
            due.extend(e for e in waiting if e.ts <= watermark)
            if rest:
                self._hold(shard, seq, rest)
            else:
                self.pending.remove(seq)
                del held[seq]
        later = [e for e in events if e.ts > watermark]
        if later:  # (on a backlog usually all of them: then stored as they came, not packed again)
            self._hold(shard, max(held, default=0) + 1, later, packed if len(later) == len(events) else None)
        if held:
            at = min(held.values())
            if self.timer_at.get(shard) != at:
                timers.register_event_time_timer(at)
                self.timer_at[shard] = at
        return self.fold(sorted(due, key=event_order)) if due else []

    def _hold(self, shard: int, seq: int, events: list[Event], packed: tuple | None = None) -> None:
        self.pending.put(seq, pack_events(events) if packed is None else packed)
        self.written[(shard, seq)] = events
        self.held[shard][seq] = min(e.ts for e in events)

    def fold(self, events: list[Event]) -> list:
        # (state on this task thread; the compiled fold on a thread Python made: models.worker)
        batch = torch_call(self.core.fold_loaded, events, self.core.load(events, self.items.get))
        self.items.put_all(batch.states)
        results: list = [stage_row(batch.out)] if batch.out else []
        if batch.model_inputs:
            results.append((ITEMS_TO_MERGER, Row(0, ItemFeaturesMessage(batch.model_inputs).as_message())))
        return results
