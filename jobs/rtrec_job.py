"""The rtrec job: Kafka events in; features, recommendations, predictions and dead letters out.

    events ─(SQL: shard users, micro-batch)─► UserStage ──────────────────────────┐
            kafka_tables.event_batches        admit, user features,               ├─(SQL: unnest)─► Kafka
                                              predict, learn, top-k               │  kafka_tables.insert_outputs
                                                 │ accepted events by item shard  │
                                                 ├─► ItemStage ───────────────────┘
                                                 │   item features, event-time order
                                                 │       │ item features for the models
                                                 ▼       ▼
                                                ModelMerger (parallelism 1) ─► model-updates (Kafka)
                                                 parameter deltas -> versions         │
    UserStage ◄── broadcast state ◄─────────────────────────────────────────────────────┘

Run it with ``rtrec run`` (a local MiniCluster) or submit this file with
``flink run --python jobs/rtrec_job.py``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from jobs import kafka_tables
from jobs.environment import create_environments, warm_embedded_python
from rtrec import topics
from rtrec.config import RtrecConfig
from rtrec.flink_rest import FlinkRest
from rtrec.progress import fatal_failure, find_vertices, read_to_its_end
from rtrec.sharding import FatalFailure
from udfs.event_time import BATCH, never_holding_back, with_batch_event_time
from udfs.item_stage import ITEM_EVENTS, ITEMS_TO_MERGER, ItemStage
from udfs.keying import keyed_on_first_field
from udfs.merger import MODEL_UPDATE, ModelMerger
from udfs.records import STAGE_OUTPUT
from udfs.user_stage import MODEL_STATE, TO_ITEMS, TO_MERGER, VERSION_NOTICE, UserFeatureStage, UserStage


def build(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, cfg: RtrecConfig) -> None:
    """Add the whole pipeline to ``env``."""
    partitions = len(topics.end_offsets(cfg.kafka, cfg.kafka.events_topic))
    batches = with_batch_event_time(t_env.to_data_stream(kafka_tables.event_batches(t_env, cfg)), cfg, partitions)

    keyed = keyed_on_first_field(batches, Types.INT(), BATCH)
    if cfg.model.enabled:
        notices = t_env.to_data_stream(kafka_tables.model_updates_source(t_env, cfg, int(time.time() * 1000) - 1000))
        keyed = keyed.connect(never_holding_back(notices, VERSION_NOTICE).broadcast(MODEL_STATE))
    users = (
        keyed.process(UserStage(cfg) if cfg.model.enabled else UserFeatureStage(cfg), output_type=STAGE_OUTPUT)
        .uid("user-stage")
        .name("UserStage")
        # PyTorch must be the only Python operator on its task thread: pemja
        # gives each Python operator its own thread state, and when torch
        # re-acquires the GIL (pybind11) under the thread's first-made state
        # while another one holds it, the thread deadlocks on itself.
        .disable_chaining()
    )
    items = (
        keyed_on_first_field(users.get_side_output(TO_ITEMS), Types.INT(), ITEM_EVENTS)
        .process(ItemStage(cfg), output_type=STAGE_OUTPUT)
        .uid("item-stage")
        .name("ItemStage")
    )

    sinks = kafka_tables.register_sinks(t_env, cfg)
    t_env.create_temporary_view("rtrec_outputs", t_env.from_data_stream(users.union(items)))
    statements = t_env.create_statement_set()
    kafka_tables.insert_outputs(statements, "rtrec_outputs", sinks)
    if cfg.model.enabled:
        updates = users.get_side_output(TO_MERGER).union(items.get_side_output(ITEMS_TO_MERGER))
        merged = (
            keyed_on_first_field(updates, Types.INT(), Types.PICKLED_BYTE_ARRAY())
            .process(ModelMerger(cfg), output_type=MODEL_UPDATE)
            .uid("model-merger")
            .name("ModelMerger")
            .set_parallelism(1)
            .set_max_parallelism(1)
            .disable_chaining()  # PyTorch: alone on its task thread (see above)
        )
        t_env.create_temporary_view("rtrec_model_versions", t_env.from_data_stream(merged))
        kafka_tables.insert_model_updates(statements, "rtrec_model_versions",
                                          kafka_tables.register_model_updates_sink(t_env, cfg))
    statements.attach_as_datastream()


@dataclass
class BoundedResult:
    """How a bounded run went: its job id and the job time until every output was committed."""

    job_id: str
    net_runtime_ms: int
    #: task failures the job recovered from during the run (Flink's exception history)
    failures: int = 0

    def get_net_runtime(self) -> int:
        return self.net_runtime_ms


def _vertices_upstream_of_user_stage(rest: FlinkRest, job_id: str) -> list[str] | None:
    """The vertices before the UserStage; None while the job's plan does not show it yet (a job
    still initialising answers with an empty plan)."""
    plan = rest.get(f"/jobs/{job_id}/plan").get("plan", {}).get("nodes", [])
    by_id = {n["id"]: n for n in plan}
    user = next((n for n in plan if "UserStage" in n["description"]), None)
    if user is None:
        return None
    seen, todo = set(), [i["id"] for i in user.get("inputs", [])]
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        todo.extend(i["id"] for i in by_id[v].get("inputs", []))
    # The model-updates reader never finishes; only the event path does.
    return [v for v in seen if "model_updates" not in by_id[v]["description"]
            and "SideInputTime" not in by_id[v]["description"]]


def _trigger_checkpoint(rest: FlinkRest, job_id: str) -> None:
    """Ask for a checkpoint now rather than at the next interval (Flink's REST API, 1.19 on); the
    periodic ones come anyway if this fails."""
    try:
        rest.post(f"/jobs/{job_id}/checkpoints", {})
    except (OSError, ValueError) as e:
        print(f"rtrec: could not trigger a checkpoint ({e}); waiting for the next periodic one", flush=True)


#: Polls (0.5 s apart) that a restored bounded source must have read to its end, with nothing more
#: coming in, before the job is drained (see :func:`finish_bounded`).
DRAIN_AFTER_POLLS = 6


def finish_bounded(cfg: RtrecConfig, client, timeout_s: float = 3600, ends: dict[int, int] | None = None
                   ) -> BoundedResult:
    """Wait until a bounded run has committed every output, then cancel it.

    With models on, the job also reads the model-updates topic, which never
    ends, so the job does not finish by itself. Its events path does: once
    every vertex before the UserStage has finished, the UserStage has taken
    all events in, and the next checkpoint that completes covers all their
    outputs (its barrier follows them); one more completed checkpoint makes
    sure the sinks' transactions of the first one are committed. Both are
    triggered at once through the REST API, not waited for.

    A bounded Kafka source restored from a checkpoint or savepoint (``rtrec run --bounded --resume``)
    reads to its end, the ``ends`` of the run that took the state (its splits keep them), and then never
    finishes (FLINK-31006, open in flink-connector-kafka 5.0.0: the restored enumerator never tells its
    readers that no more splits come). So a restored run whose source has read everything up to
    ``ends`` (:func:`rtrec.progress.read_to_its_end` for :data:`DRAIN_AFTER_POLLS` polls; without
    ``ends``, the topic's end now) is stopped with a savepoint and ``drain``: the sources end with the
    final watermark, as a bounded source's end does, and the savepoint commits every output.
    """
    rest = FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}")
    job_id = str(client.get_job_id())
    deadline = time.time() + timeout_s
    upstream = None
    answered = time.time()
    restored = "execution.state-recovery.path" in cfg.flink.options
    end_total = sum((ends or topics.end_offsets(cfg.kafka, cfg.kafka.events_topic)).values()) if restored else 0
    read_polls, last_in, vertices = 0, None, None
    while time.time() < deadline:
        try:
            job = rest.get(f"/jobs/{job_id}")
            answered = time.time()
        except OSError:
            if time.time() - answered > 60:
                raise RuntimeError(f"the Flink REST API at {rest.url} stopped answering (did the JVM die? "
                                   "look for hs_err_pid*.log)") from None
            time.sleep(0.5)
            continue
        if job["state"] in ("FAILED", "CANCELED", "FINISHED"):
            fatal = fatal_failure(rest, job_id)
            if fatal:
                raise FatalFailure(fatal)
            raise RuntimeError(f"job {job_id} ended as {job['state']} before its input was consumed")
        upstream = upstream or _vertices_upstream_of_user_stage(rest, job_id)
        status = {v["id"]: v["status"] for v in job["vertices"]}
        if upstream and all(status.get(v) == "FINISHED" for v in upstream):
            break
        if restored and upstream:
            vertices = vertices or _vertices_or_none(rest, job_id)
            read_polls, last_in = _poll_restored_source(rest, cfg, job_id, vertices, end_total, read_polls, last_in)
            if read_polls >= DRAIN_AFTER_POLLS:
                return _drain(rest, job_id, job["start-time"])
        time.sleep(0.5)
    else:
        raise TimeoutError(f"the events of job {job_id} were not consumed within {timeout_s:.0f} s")
    finished_ms = int(time.time() * 1000)
    start_ms = job["start-time"]
    done_at = None
    completed = 0
    last_id = None
    _trigger_checkpoint(rest, job_id)
    triggered = time.monotonic()
    while time.time() < deadline and completed < 2:
        stats = rest.checkpoints(job_id)
        latest = stats.get("latest", {}).get("completed") or {}
        if latest and latest["id"] != last_id and latest["trigger_timestamp"] > finished_ms:
            last_id = latest["id"]
            completed += 1
            if completed == 1:
                done_at = latest["latest_ack_timestamp"]
                _trigger_checkpoint(rest, job_id)
                triggered = time.monotonic()
        elif stats.get("counts", {}).get("in_progress", 0) == 0 and time.monotonic() - triggered > 1.0:
            # Nothing running a second after asking: the checkpoint asked for failed, or was folded into
            # one that did (a periodic one that began as the sources finished). Ask again rather than
            # wait for the next interval.
            _trigger_checkpoint(rest, job_id)
            triggered = time.monotonic()
        time.sleep(0.2)
    time.sleep(1.0)
    failures = len(rest.get(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"])
    client.cancel().result()
    return BoundedResult(job_id, (done_at or int(time.time() * 1000)) - start_ms, failures)


def _vertices_or_none(rest: FlinkRest, job_id: str) -> dict[str, str] | None:
    try:
        return find_vertices(rest, job_id)
    except (OSError, KeyError):
        return None


def _poll_restored_source(rest: FlinkRest, cfg: RtrecConfig, job_id: str, vertices: dict[str, str] | None,
                          end_total: int, polls: int, last_in: float | None) -> tuple[int, float | None]:
    """One poll of a restored bounded run's events source (``vertices``: rtrec.progress.find_vertices'), which
    reads to ``end_total`` records of the topic (summed over partitions): (polls in a row it has read to its
    end, the UserStage's events in now)."""
    if vertices is None:
        return 0, None
    try:
        lags = rest.metrics(job_id, vertices["source"], ".pendingRecords")
        events_in = sum(rest.metrics(job_id, vertices["user"], "rtrec.events_in").values())
        appended = sum(topics.end_offsets(cfg.kafka, cfg.kafka.events_topic).values()) - end_total
    except (OSError, KeyError, RuntimeError):
        return 0, None
    done = read_to_its_end(sum(lags.values()) if lags else None, appended, events_in, last_in)
    return (polls + 1 if done else 0), events_in


def _drain(rest: FlinkRest, job_id: str, start_ms: int) -> BoundedResult:
    """Stop the job with a drained savepoint (see :func:`finish_bounded`) and wait until it finished."""
    print("rtrec: the restored events source read to its end but does not finish by itself (FLINK-31006): "
          "stopping the job with a drained savepoint", flush=True)
    failures = len(rest.get(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"])
    try:
        location = rest.stop_with_savepoint(job_id, drain=True, timeout_s=600)
    except OSError:  # (the job finished, and a MiniCluster with it, before the savepoint's status was read)
        location = "(its path was not read: the job had finished)"
    done_at = int(time.time() * 1000)
    print(f"rtrec: drained savepoint {location}", flush=True)
    return BoundedResult(job_id, done_at - start_ms, failures)


def run(cfg: RtrecConfig, wait: bool = True, on_start=None, local: bool = True, ends: dict[int, int] | None = None):
    """Build and start the job; returns the JobExecutionResult (or the JobClient when not waiting).

    ``on_start`` is called once the job is built, just before it is submitted.
    ``local``: on a MiniCluster in this process (rtrec run), or else submitted
    by `flink run` to the cluster its configuration names.
    """
    env, t_env = create_environments(cfg, local)
    # A MiniCluster's TaskManager is in this process's JVM: its Python gets ready while the job is built.
    warming = warm_embedded_python(cfg) if local else None
    build(env, t_env, cfg)
    if warming is not None:
        warming.join(timeout=300)
        if warming.is_alive():
            print("rtrec: the TaskManager's Python is still being prepared after 300 s; submitting the job anyway",
                  file=sys.stderr, flush=True)
    if on_start is not None:
        on_start()
    if not wait:
        return env.execute_async(cfg.flink.job_name)
    if cfg.flink.bounded and (cfg.model.enabled or "execution.state-recovery.path" in cfg.flink.options):
        return finish_bounded(cfg, env.execute_async(cfg.flink.job_name), ends=ends)
    return env.execute(cfg.flink.job_name)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``flink run --python``: ``[--config FILE] [--set key=value ...] [--bootstrap-servers HOST:PORT]``,
    as every rtrec command takes them (deploy/flink/bin/cluster.sh checks them with ``rtrec config`` first)."""
    import argparse

    from rtrec.cli import config_arguments, config_from

    ap = argparse.ArgumentParser(prog="rtrec_job")
    config_arguments(ap)
    cfg = config_from(ap.parse_args(argv))
    # A missing broker, a topic the job may not write or an unsuitable model-updates topic: one clear
    # line now, rather than a job restarting on the cluster.
    topics.prepare_job_topics(cfg.kafka, cfg.model.enabled)
    run(cfg, local=False)


if __name__ == "__main__":
    main(sys.argv[1:])
