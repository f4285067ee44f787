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
from rtrec.features.definitions import ITEM_FEATURES
from rtrec.features.engine import FeatureEngine
from rtrec.features.model_inputs import ItemInputs


@dataclass
class ItemBatch:
    states: dict[str, list]  # item id -> new feature state
    out: Outputs
    #: item id -> the models' dense view of it (rtrec.features.model_inputs.ITEM_DENSE), with models on
    model_inputs: dict[str, list[float]] = field(default_factory=dict)


class ItemCore:
    """Item features of one subtask; ``models``: also compute the models' view of each touched item;
    ``every_event``: a feature snapshot after every event (else one per item and call, after its last)."""

    def __init__(self, emit_features: bool = True, models: bool = True, every_event: bool = False):
        self.engine = FeatureEngine(ITEM_FEATURES)
        self.emit = emit_features
        self.every_event = every_event
        self.model_inputs = ItemInputs() if models else None

    def fold(self, events: list[Event], load: Callable[[str], list | None]) -> ItemBatch:
        """Fold ``events`` (due, in :func:`event_order`) into their items' state, read through ``load``."""
        engine, out = self.engine, Outputs()
        states: dict[str, list] = {}
        newest: dict[str, Event] = {}  # item -> its last event here
        for e in events:
            item = e.item_id
            state = states.get(item)
            if state is None:
                state = states[item] = load(item) or engine.new_state()
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
