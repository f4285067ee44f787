"""Bounded runs of the whole job over MovieLens-100K ratings mixed with bad, duplicate and late records.

Real broker, real Flink MiniCluster (parallelism 2). The run is shared by the
tests of this module; each checks one promise against the committed output
topics, read with isolation.level=read_committed. The UserStage fails on
purpose three times, at three points of the replay (faults.times), and the
job recovers from its last checkpoint each time, so every promise below also
holds across failures. A second, uninterrupted run of the same records is the
reference for features and learning.
"""

from __future__ import annotations

from collections import Counter

import jsonschema
import orjson
import pytest

from models.params import Version
from rtrec import topics
from rtrec.config import ModelConfig
from rtrec.datasets import movielens_events
from rtrec.events import Event
from rtrec.features.backfill import snapshots
from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES
from rtrec.metrics import auc
from rtrec.model_updates import whole_versions
from rtrec.records import schema
from rtrec.replay import replay
from rtrec.topics import VERSION_HEADER
from tests.conftest import fresh_config, run_job, same_values
from tests.integration.bad_inputs import CATALOGUE
from udfs.faults import fired_count

N = 45_000  # the first MovieLens ratings (the whole 100,000 took 344 s of the suite for two runs, 60,000 took 293 s;
# with 30,000 the watermark had not yet passed 1970 when the late events came)
DUPLICATES = 50
FAULT_AFTER = 5_000  # records into the first UserStage subtask since the job (re)started (7,000 left room for only one
# failure once in three fresh-clone runs, after RocksDB got more memory and the backlog went faster)
# ... three times, each once a checkpoint has completed after the restart. Catching up on the whole
# replay as a backlog, the job completes few checkpoints, so the third failure sometimes finds no
# checkpoint before the input is consumed: at least two must happen.
FAULTS = 3
MIN_FAULTS = 2
LATE_USERS = ["1", "2", "3"]
LATE_IDS = {f"late-{n}" for n in range(len(LATE_USERS))}


def _records(events):
    records = [(e.user_id, e.to_json(), e.ts) for e in events]
    # Bad records spread through the stream, stamped like their neighbours.
    step = len(records) // (len(CATALOGUE) + 1)
    for i, (key, value, _) in enumerate(CATALOGUE):
        at = step * (i + 1) + i
        records.insert(at, (key, value, records[at][2]))
    # Exact re-sends, right behind the originals (same key, so the same partition).
    for e in reversed(events[1000 : 1000 + DUPLICATES]):
        at = next(i for i, r in enumerate(records) if r[1] == e.to_json())
        records.insert(at + 1, (e.user_id, e.to_json(), e.ts))
    # Events from 1970 after everything else: far behind the watermark by then.
    for n, user in enumerate(LATE_USERS):
        # (an item of their own: taken in after a restore, they must not change MovieLens items' features)
        late = orjson.dumps({"event_id": f"late-{n}", "user_id": user, "item_id": "late-item", "type": "click",
                             "ts": 1000 + n})
        records.append((user, late, 1000 + n))
    return records


def _run(kafka, name, records, overrides):
    # No warm start from the model-updates topic: after a failure, only the checkpoint can give the
    # job back its model.
    # A feature snapshot after every event (not per micro-batch, the default): micro-batches are cut
    # differently in a run with failures, and the features of the two runs are compared event by event.
    cfg = fresh_config(kafka, name, ["flink.parallelism=2", "model.warm_start=false", "features.snapshots=event",
                                     *overrides])
    cfg.flink.options["restart-strategy.fixed-delay.attempts"] = str(FAULTS + 2)
    replay(records, cfg.kafka, progress=False)
    proc = run_job(cfg, timeout_s=500)

    def read(topic):
        return [(m.key().decode() if m.key() else None, m.value(), dict(m.headers() or []))
                for m in topics.read_topic(cfg.kafka, topic)]

    # In offset order per partition, with the partition.
    predictions = [(m.partition(), orjson.loads(m.value()))
                   for m in topics.read_topic(cfg.kafka, cfg.kafka.predictions_topic)]
    # Each version's number, as its record's header says and as its parameters say.
    published = [(topics.header_int(head, VERSION_HEADER), Version.from_bytes(data).number) for head, data in
                 whole_versions(topics.read_topic(cfg.kafka, cfg.kafka.model_updates_topic, idle_s=0.5))]

    # Flink does not checkpoint watermarks: after a restore the job's starts again from nothing,
    # so the 1970 events may reach the UserStage before it has caught up and be taken in.
    features = [(k, orjson.loads(v)) for k, v, _ in read(cfg.kafka.features_topic)]
    late_taken = sum(f["entity"] == "user" and f["event_id"] in LATE_IDS for _, f in features)
    return {
        "cfg": cfg,
        "stdout": proc.stdout,
        "records_in": len(records),
        "late_taken": late_taken,
        "features": [(k, f) for k, f in features if f["event_id"] not in LATE_IDS],
        "recommendations": [(k, r) for k, r in (
            (k, orjson.loads(v)) for k, v, _ in read(cfg.kafka.recommendations_topic)) if r["event_id"] not in LATE_IDS],
        "predictions": [p for _, p in predictions if p["event_id"] not in LATE_IDS],
        "dead": read(cfg.kafka.dead_letter_topic),
        # (partition, trainer, model version) of each prediction
        "scored": [(part, p["trainer"], p["model_version"]) for part, p in predictions],
        "published": published,
    }


IMPRESSIONS = 40  # never clicked in time: each becomes one negative example, whether its timer fires mid-run or at the end
# Of those, the first CLICKED_LATE are clicked and the next SHOWN_AGAIN shown again, some thousand events
# (days of MovieLens' event time) later: after their attribution window, but before the watermark (which
# trails a backlog's batches) passes it. Still negatives, and a shown-again impression is one too.
CLICKED_LATE = SHOWN_AGAIN = 5


@pytest.fixture(scope="module")
def events():
    """The ratings with impressions spread among them, stamped like their neighbours."""
    ratings = movielens_events(N)
    out = list(ratings)
    step = N // (IMPRESSIONS + 1)
    for k in range(IMPRESSIONS):
        at = step * (k + 1) + k
        e = out[at]
        # (a user and an item of its own: features that depend on the order of equal timestamps stay apart)
        out.insert(at, Event(f"imp-{k}", f"imp-user-{k}", f"unclicked-{k}", "impression", e.ts))
    window = ModelConfig().attribution_window_ms
    for k in range(CLICKED_LATE + SHOWN_AGAIN):
        shown = next(i for i, e in enumerate(out) if e.event_id == f"imp-{k}")
        at = next(i for i in range(shown + 1000, len(out)) if out[i].ts > out[shown].ts + window)
        kind, event_id = ("click", f"late-click-{k}") if k < CLICKED_LATE else ("impression", f"imp-{k}-again")
        out.insert(at, Event(event_id, f"imp-user-{k}", f"unclicked-{k}", kind, out[at].ts))
    return out


@pytest.fixture(scope="module")
def run(kafka, events):
    faults = ["faults.operator=user-stage", f"faults.after_records={FAULT_AFTER}", f"faults.times={FAULTS}"]
    return {**_run(kafka, "ml", _records(events), faults), "events": events}


@pytest.fixture(scope="module")
def uninterrupted(kafka, events):
    return _run(kafka, "ml-ref", _records(events), [])


@pytest.mark.parametrize("which", ["run", "uninterrupted"])
def test_every_record_is_accounted_for(request, which):
    r = request.getfixturevalue(which)
    user_snapshots = [f for _, f in r["features"] if f["entity"] == "user"]
    stages = Counter(h["rtrec.stage"].decode() for _, _, h in r["dead"])
    assert stages["validate"] == len(CATALOGUE) and stages["dedup"] == DUPLICATES
    assert stages["lateness"] + r["late_taken"] == len(LATE_USERS)
    if which == "uninterrupted":  # the watermark was past 1970 when (some of) them came
        assert stages["lateness"] >= 1
    processed = len({f["event_id"] for f in user_snapshots})
    assert processed == len(user_snapshots) == len(request.getfixturevalue("events"))
    assert r["records_in"] == processed + r["late_taken"] + stages["dedup"] + stages["validate"] + stages["lateness"]


def test_each_bad_record_is_dead_lettered_with_its_reason_and_original_bytes(run):
    got = Counter((v, h["rtrec.reason"].decode()) for _, v, h in run["dead"] if h["rtrec.stage"] == b"validate")
    for _key, value, reason in CATALOGUE:
        matches = [r for (v, r) in got if v == (value or b"") and r.startswith(reason)]
        assert matches, f"no dead letter for {value[:60] if value else value!r} with reason {reason!r}"
    sources = {h["rtrec.source"].decode().split("/")[0] for _, _, h in run["dead"]}
    assert sources == {run["cfg"].kafka.events_topic}


def test_duplicates_and_late_events_name_why(uninterrupted):
    run = uninterrupted
    dedup = [h["rtrec.reason"].decode() for _, _, h in run["dead"] if h["rtrec.stage"] == b"dedup"]
    assert all(r.startswith("duplicate event_id 'ml100k-00") for r in dedup)
    late = {k: h["rtrec.reason"].decode() for k, _, h in run["dead"] if h["rtrec.stage"] == b"lateness"}
    # Usually all three. The watermark comes periodically (its timer shares the task with a Python operator),
    # and under load (make test runs two modules at once) it has been seen not yet past 1970 for some of the
    # last batches, which hold the late events: those are taken in, and counted as such above.
    assert late and set(late) <= set(LATE_USERS)
    assert all("behind the watermark" in r for r in late.values())


def test_a_top_k_per_user_and_batch_in_each_users_order(run):
    """The top-k is refreshed once per user and micro-batch, after the user's last event in it."""
    recs, events = run["recommendations"], run["events"]
    by_event = {r["event_id"]: (k, r) for k, r in recs}
    assert len(by_event) == len(recs), "no event recommended for twice"
    order = {e.event_id: i for i, e in enumerate(events)}
    last = {e.user_id: e.event_id for e in events if e.type != "impression"}  # (an impression refreshes nothing)
    # (a late click taken in after a restore is the last event of its user then: see LATE_USERS)
    assert {e for u, e in last.items() if u not in LATE_USERS} <= set(by_event), \
        "every user's very last event is the last of its batch"
    users = len(last)
    assert users <= len(recs) < len(events) / 2, "(MovieLens users rate in bursts: a batch holds many of a user's)"
    for e in events:
        if e.event_id not in by_event:
            continue
        key, r = by_event[e.event_id]
        assert key == r["user_id"] == e.user_id and r["ts"] == e.ts
        assert e.item_id not in r["items"] and len(r["items"]) <= run["cfg"].model.top_k
        assert r["scores"] == sorted(r["scores"], reverse=True)
    per_user: dict[str, list[int]] = {}
    for k, r in recs:
        per_user.setdefault(k, []).append(order[r["event_id"]])
    assert all(seq == sorted(seq) for seq in per_user.values())
    # Shorter lists only at the very start, while the catalogue holds fewer unrated items than top_k: of
    # the job, and of each attempt after a failure whose checkpoint came before the scorers' first model
    # version (they start again from an empty model, with the first small batches of the restart).
    fired = fired_count(run["cfg"].resolve_path(run["cfg"].flink.checkpoint_dir) / "fault-user-stage.fired")
    assert sum(len(r["items"]) < run["cfg"].model.top_k for _, r in recs) <= 5 * (1 + fired)


def test_the_job_writes_records_that_match_their_schemas(run):
    for topic, records in (("predictions", run["predictions"]), ("recommendations", [r for _, r in run["recommendations"]]),
                           ("features", [f for _, f in run["features"]])):
        validator = jsonschema.Draft202012Validator(schema(topic))
        assert records
        for r in records[:: max(1, len(records) // 5_000)]:  # (5,000 of each, spread over the run)
            validator.validate(r)
    # Every prediction carries the like head's probability (models.like), ratings and impressions alike, and
    # it ranks the ratings: higher for the 4s and 5s.
    assert all(p.get("like") is not None for p in run["predictions"])
    ratings = [p for p in run["predictions"] if p["type"] == "rating"]
    assert auc([p["like"] for p in ratings], [int(p["label"] >= 4) for p in ratings]) > 0.65


@pytest.mark.parametrize("group", [USER_FEATURES, ITEM_FEATURES], ids=["user", "item"])
def test_streamed_features_equal_the_offline_engine(run, group):
    online = {(f["id"], f["event_id"]): (k, f) for k, f in run["features"] if f["entity"] == group.entity}
    offline = list(snapshots(run["events"], group, as_of="after"))
    assert len(online) == len(offline) == len(run["events"])
    equal = 0
    for row in offline:
        key, f = online[(row.id, row.event_id)]
        assert key == row.id and f["version"] == group.version and f["event_ts"] >= row.ts
        equal += all(same_values(f["features"][n], row.features[n]) for n in row.features)
    assert equal >= 0.999 * len(offline), f"{len(offline) - equal} of {len(offline)} rows differ"


def test_the_injected_failures_happened_and_each_rating_is_predicted_exactly_once(run):
    cfg = run["cfg"]
    marker = cfg.resolve_path(cfg.flink.checkpoint_dir) / "fault-user-stage.fired"
    fired = fired_count(marker)
    assert MIN_FAULTS <= fired <= FAULTS, f"the UserStage failed {fired} times; {MIN_FAULTS} to {FAULTS} were meant"
    assert f"task failures recovered from during the run: {fired}" in run["stdout"]
    counts = Counter(p["event_id"] for p in run["predictions"])
    assert set(counts) == {e.event_id for e in run["events"]}  # the impressions' negatives among them
    assert set(counts.values()) == {1}
    negatives = [p for p in run["predictions"] if p["type"] == "impression"]
    assert len(negatives) == IMPRESSIONS + SHOWN_AGAIN and {p["label"] for p in negatives} == {0}
    assert {p["event_id"]: p["label"] for p in run["predictions"] if p["event_id"].startswith("late-click")} == \
        {f"late-click-{k}": 1 for k in range(CLICKED_LATE)}


@pytest.mark.parametrize("entity", ["user", "item"])
def test_features_equal_those_of_an_uninterrupted_run(run, uninterrupted, entity):
    def table(r):
        return {(f["id"], f["event_id"]): f["features"] for _, f in r["features"] if f["entity"] == entity}

    faulty, reference = table(run), table(uninterrupted)
    assert faulty.keys() == reference.keys()
    differ = [k for k in reference if not same_values(faulty[k], reference[k])]
    assert len(differ) <= 0.001 * len(reference), f"{len(differ)} rows differ, e.g. {differ[:3]}"


def _mae(predictions, score) -> float:
    errors = [abs(score(p) - p["label"]) for p in predictions if p["type"] == "rating"]
    return sum(errors) / len(errors)


#: How far the prequential MAE of the run with failures may be from the uninterrupted run's. Measured
#: over five pairs of runs (benchmarks/learning_recovery.py makes one): at most +0.006 fused, +0.003 MF,
#: +0.009 ranker and +0.017 FTRL. Had each failure lost the global parameters, MAE would rise by 0.029
#: fused, 0.023 MF, 0.060 ranker (offline, parameters reset at three points of the replay). FTRL moves
#: most, and not for want of its parameters: it takes one step per micro-batch, and a job catching up
#: after a restart makes bigger batches (offline, batches of 4,000 events instead of 500 cost it 0.006).
TOLERANCE = {"fused": 0.01, "mf": 0.01, "ranker": 0.02, "ftrl": 0.03}


def test_learning_resumes_from_the_checkpointed_parameters(run, uninterrupted):
    """Across the restarts the prequential error rises by at most a small tolerance over the uninterrupted run's.

    Before scorers loaded model versions by their offset (udfs/user_stage.py), a restored scorer went
    back to a version up to a minute old: fused MAE rose by 0.010 and the ranker's by up to 0.040.
    Learning lost in a restore shows as a higher error, so only a rise counts. At parallelism 2 the
    error also moves with timing (when each trainer adopts the merged versions): run alone, 0.7457
    with faults against 0.7472 without; in one `make test` under load (2026-12-03), 0.7371 with faults
    against 0.7484 without, a drop of 0.011 that a two-sided bound of 0.010 failed.
    """
    assert len(run["predictions"]) == len(uninterrupted["predictions"])
    for name, tolerance in TOLERANCE.items():
        def score(p, name=name):
            return p["fused"] if name == "fused" else p["scores"][name]

        faulty, reference = _mae(run["predictions"], score), _mae(uninterrupted["predictions"], score)
        assert faulty - reference <= tolerance, f"{name}: MAE {faulty:.4f} vs {reference:.4f} uninterrupted"


def test_model_versions_go_on_from_the_checkpoint(run):
    """After each restore the merger numbers on from its checkpointed version, past the versions the
    failed attempt published after that checkpoint (scorers skip a number they have seen, so a reused
    number would leave them on the failed attempt's parameters), and no scorer goes back to an older
    version than it had used. Without a warm start, a merger that lost its state would start from 1."""
    assert all(header == number for header, number in run["published"])
    published = [number for _, number in run["published"]]
    assert len(published) > 10
    assert all(a < b for a, b in zip(published, published[1:], strict=False)), (
        f"version numbers on model-updates not strictly increasing: "
        f"{[(a, b) for a, b in zip(published, published[1:], strict=False) if a >= b][:5]}")
    last: dict[tuple[int, int], int] = {}
    for partition, trainer, version in run["scored"]:
        assert version >= last.get((partition, trainer), 0), f"trainer {trainer} went back to version {version}"
        last[partition, trainer] = version
