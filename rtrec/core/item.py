"""ItemCore: fold events into item features in event-time order, without Flink.

The ItemStage (udfs/item_stage.py) holds events back until the watermark
passes them; what is due comes here sorted by :func:`event_order`, so an
item's features as of an event are the ones the offline backfill computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rtrec.core.outputs import Outputs
from rtrec.events import Event
from rtrec.features.compiled import CompiledGroup, compilable
from rtrec.features.definitions import ITEM_FEATURES
from rtrec.features.engine import FeatureEngine
from rtrec.features.model_inputs import ItemInputs
from rtrec.records import encode_feature


@dataclass
class ItemBatch:
    states: dict[str, list | bytes]  # item id -> new feature state, as stored
    out: Outputs
    #: item id -> the models' dense view of it (rtrec.features.model_inputs.ITEM_DENSE), with models on
    model_inputs: dict[str, list[float]] = field(default_factory=dict)


class ItemCore:
    """Item features of one subtask; ``models``: also compute the models' view of each touched item;
    ``every_event``: a feature snapshot after every event (else one per item and call, after its last).

    Item features made only of numeric declarations (as defined) fold compiled
    (rtrec.features.compiled), with an item's state one vector, stored as bytes; item state of the
    engine's form (lists, as kept before) is read too. Other definitions run on the feature engine.
    """

    def __init__(self, emit_features: bool = True, models: bool = True, every_event: bool = False):
        self.engine = FeatureEngine(ITEM_FEATURES)
        self.compiled = CompiledGroup(ITEM_FEATURES) if compilable(ITEM_FEATURES) else None
        self.emit = emit_features
        self.every_event = every_event
        self.model_inputs = ItemInputs() if models else None
        self._dense_of_raw = (self.model_inputs.raw_reader(self.compiled)
                              if self.model_inputs is not None and self.compiled is not None else None)

    def warm_up(self) -> None:
        """Compile the compiled fold now (a thread Python made; from numba's cache after ``make setup``)."""
        if self.compiled is not None:
            self.compiled.warm_up()

    def fold(self, events: list[Event], load: Callable[[str], list | bytes | None]) -> ItemBatch:
        """Fold ``events`` (due, in :func:`event_order`) into their items' state, read through ``load``."""
        return self.fold_loaded(events, self.load(events, load))

    def load(self, events: list[Event], load: Callable[[str], list | bytes | None]) -> dict:
        """The stored state of the items of ``events`` that have one (the part that touches Flink state:
        the operator's task thread)."""
        out = {}
        for item in dict.fromkeys(e.item_id for e in events):
            stored = load(item)
            if stored is not None:
                out[item] = stored
        return out

    def fold_loaded(self, events: list[Event], stored: dict) -> ItemBatch:
        """:meth:`fold` with the items' stored state loaded already (compiled code: a thread Python made)."""
        if self.compiled is None:
            return self._fold_engine(events, stored)
        compiled, out = self.compiled, Outputs()
        states = {item: compiled.read_state(s) for item, s in stored.items()}
        vectors, ids, raw, reads, _ = compiled.fold(events, "item_id", states, self.every_event)
        if self.emit:
            snapshot, version, append = compiled.snapshot, compiled.version, out.features.append
            for item, row, i in zip(ids, raw.tolist(), reads.tolist(), strict=True):
                e = events[i]
                append(item, encode_feature("item", item, version, e.event_id, int(row[0]), int(row[1]),
                                            snapshot(row, e.ts)))
        store = compiled.store
        batch = ItemBatch({item: store(v) for item, v in vectors.items()}, out)
        if self._dense_of_raw is not None and vectors:
            dense = self._dense_of_raw(compiled.read_at(list(vectors.values()), events[-1].ts)).tolist()
            batch.model_inputs = dict(zip(vectors, dense, strict=True))
        return batch

    def _fold_engine(self, events: list[Event], stored: dict) -> ItemBatch:
        engine, out = self.engine, Outputs()
        states: dict[str, list] = {}
        newest: dict[str, Event] = {}  # item -> its last event here
        for e in events:
            item = e.item_id
            state = states.get(item)
            if state is None:
                s = stored.get(item)
                if s is not None and type(s) is not list:
                    raise ValueError("item state folded by compiled code, but the item features now declare "
                                     "kinds it does not run: start these definitions from empty item state")
                state = states[item] = s or engine.new_state()
            engine.update(state, e)
            if self.emit and self.every_event:
                out.features.append(item, engine.record(item, state, e))
            else:
                newest[item] = e
        if self.emit and not self.every_event:
            for item, e in newest.items():
                out.features.append(item, engine.record(item, states[item], e))
        batch = ItemBatch(states, out)
        if self.model_inputs is not None and states:
            at = events[-1].ts
            batch.model_inputs = {item: self.model_inputs.dense(state, at) for item, state in states.items()}
        return batch
