"""The feature definitions: the one place that says which features exist.

The streaming job (udfs/), the offline backfill (rtrec.features.backfill) and
the tests all read these two groups. Change a declaration here and both sides
change together; the definition version in every output changes with it.
"""

from __future__ import annotations

from rtrec.events import EVENT_TYPES, INTERACTION_TYPES
from rtrec.features.engine import FeatureGroup
from rtrec.features.spec import (
    DAY,
    ONE_DAY,
    ONE_HOUR,
    DecayedAffinity,
    LastN,
    RatingStats,
    Recency,
    Session,
    SmoothedCTR,
    Trend,
    Window,
    WindowedCount,
)

#: Types that show interest in an item (rtrec.events.EventType.interaction), in schema order.
INTERACTIONS = tuple(t for t in EVENT_TYPES if t in INTERACTION_TYPES)
ONE_WEEK = Window("7d", 7 * DAY, 28)

USER_FEATURES = FeatureGroup(
    entity="user",
    key="user_id",
    features=(
        WindowedCount("count", event_types=EVENT_TYPES),  # 5 min, 1 h, 24 h per type
        DecayedAffinity("category_affinity", field="category", half_life_ms=7 * DAY),
        LastN("last_items", field="item_id", n=10),
        Session("session", gap_ms=30 * 60_000),
        Recency("since", event_types=EVENT_TYPES),
        SmoothedCTR("ctr", prior=0.05, prior_weight=20.0),
        RatingStats("rating"),
    ),
)

ITEM_FEATURES = FeatureGroup(
    entity="item",
    key="item_id",
    features=(
        WindowedCount("popularity", event_types=INTERACTIONS, windows=(ONE_HOUR, ONE_DAY, ONE_WEEK), per_type=False),
        SmoothedCTR("ctr", prior=0.05, prior_weight=20.0),
        RatingStats("rating"),
        Trend("trend", source="popularity", short=ONE_DAY, long=ONE_WEEK),
    ),
)

GROUPS = {g.entity: g for g in (USER_FEATURES, ITEM_FEATURES)}
