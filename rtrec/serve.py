"""``rtrec serve``: materialise the job's outputs into a local store and answer lookups over HTTP.

A confluent-kafka consumer reads the ``features`` and ``recommendations``
topics with ``isolation.level=read_committed`` (so only what the job's
checkpoints committed, never an aborted transaction) and applies them to the
RocksDB store of :mod:`rtrec.store`: per user the newest features and the
newest recommendations, per item the newest features.

Exactly once into the store: the consumer never uses consumer-group offsets.
Each consumed batch (up to ``serve.batch_size`` records) goes into one atomic
RocksDB write together with the next offset of every partition it advanced;
on start the consumer is assigned every partition at the offset the store
holds (the beginning for partitions it has never seen). A restart, or a
crash at any point, therefore neither loses nor re-applies a record.

"Newest" is last-write-wins in offset order per partition (see
:mod:`rtrec.store`): the job keys both topics by entity id, so one entity's
records are in one partition in the order the job wrote them.

HTTP JSON API (aiohttp), on ``serve.host:serve.port`` (127.0.0.1:8090):

    GET /users/{id}/recommendations   the user's newest top-k record (?request=candidates: newest ranked request)
    GET /users/{id}/features          the user's newest features record
    GET /items/{id}/features          the item's newest features record
    GET /health                       consumer lag, applied offsets, records applied; 503 if the consumer failed
    GET /metrics                      Prometheus text format

Unknown ids answer 404 with ``{"error": ...}``.

With a bearer token (``serve.token_env`` or ``serve.token_file``, required when ``serve.host``
is not a loopback address), every request must carry ``Authorization: Bearer <token>``;
others get 401.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from rtrec import kafka_clients, topics
from rtrec.config import ConfigError, RtrecConfig, is_loopback
from rtrec.store import (
    CANDIDATES,
    ITEM_FEATURES,
    RECOMMENDATIONS,
    USER_FEATURES,
    Record,
    ServeStore,
    StoreError,
)

PARTITION_REFRESH_S = 10.0


@dataclass
class ServeStats:
    """What /health and /metrics report. The consumer thread replaces fields whole; readers copy."""

    started: float = field(default_factory=time.time)
    applied_session: int = 0
    skipped_session: int = 0
    batches: int = 0
    last_batch_at: float | None = None
    # (topic, partition) -> end offset (last stable offset) and consumer position.
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    lag_at: float | None = None
    caught_up_once: bool = False
    error: str | None = None
    lookups: Counter = field(default_factory=Counter)

    start_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def lag(self) -> dict[tuple[str, int], int]:
        """Committed records not yet applied, per partition (a partition not read yet counts from its start)."""
        ends, pos, starts = self.end_offsets, self.positions, self.start_offsets
        return {tp: max(0, end - pos.get(tp, starts.get(tp, 0))) for tp, end in ends.items()}


def _consumer(cfg: RtrecConfig) -> Consumer:
    return kafka_clients.consumer(
        cfg.kafka,
        **{
            # Required by the client; the consumer only ever uses assign(), never joins
            # the group and never commits: its offsets live in the store.
            "group.id": f"{cfg.kafka.consumer_group}-serve",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # The broker answers an idle fetch after at most this long; lower than the
            # default 500 ms so that a commit reaches the store sooner.
            "fetch.wait.max.ms": 100,
        },
    )


class Materializer:
    """Consumes the two topics into ``store``, one atomic write per batch."""

    def __init__(self, cfg: RtrecConfig, store: ServeStore, stats: ServeStats | None = None):
        self.cfg = cfg
        self.store = store
        self.stats = stats or ServeStats()
        k = cfg.kafka
        self.kinds = {k.features_topic: "features", k.recommendations_topic: "recommendations"}
        self.batch_size = cfg.serve.batch_size
        self.poll_timeout_s = cfg.serve.poll_timeout_ms / 1000
        self.lag_interval_s = cfg.serve.lag_interval_ms / 1000
        self.consumer: Consumer | None = None
        # Metadata and end offsets come from a second client without assignments: on the
        # consumer's own connection they would queue behind its long-polling fetches.
        self.meta: Consumer | None = None
        self.assigned: list[TopicPartition] = []
        self._next_lag = 0.0
        self._next_partitions = 0.0

    # -- start -----------------------------------------------------------------------
    def open(self) -> None:
        """Check the broker and that the store follows these topics; assign at the stored offsets."""
        k = self.cfg.kafka
        topics.ensure_topics(k, list(self.kinds))
        cluster = topics.admin(k).list_topics(timeout=10).cluster_id
        source = {"cluster_id": cluster, "features_topic": k.features_topic,
                  "recommendations_topic": k.recommendations_topic}
        held = self.store.source()
        if held is None:
            self.store.set_source(source)
        elif held != source:
            raise StoreError(
                f"serve store {self.store.path} holds {held['features_topic']!r} and "
                f"{held['recommendations_topic']!r} of Kafka cluster {held['cluster_id']}, not {k.features_topic!r} "
                f"and {k.recommendations_topic!r} of cluster {cluster}: give this one its own "
                "--store (serve.store_dir), or rebuild it with `rtrec serve --reset`"
            )
        self.consumer = _consumer(self.cfg)
        self.meta = _consumer(self.cfg)
        self._assign_new_partitions()

    def _assign_new_partitions(self) -> None:
        md = self.meta.list_topics(timeout=10).topics
        stored = self.store.offsets()
        have = {(tp.topic, tp.partition) for tp in self.assigned}
        new = []
        for topic in self.kinds:
            t = md.get(topic)
            if t is None or t.error:
                raise KafkaException(t.error if t else f"topic {topic} not found")
            for p in sorted(t.partitions):
                if (topic, p) not in have:
                    new.append(TopicPartition(topic, p, stored.get((topic, p), OFFSET_BEGINNING)))
        if new:
            self.consumer.incremental_assign(new)
            self.stats.positions = self.stats.positions | {
                (tp.topic, tp.partition): tp.offset for tp in new if tp.offset >= 0}
            self.assigned = self.assigned + [TopicPartition(tp.topic, tp.partition) for tp in new]
        self._next_partitions = time.monotonic() + PARTITION_REFRESH_S

    # -- the loop --------------------------------------------------------------------
    def step(self) -> int:
        """Consume one batch and apply it; returns the records consumed."""
        # Wait for the first record only, then take what the client has fetched already: a
        # lone record is applied at once, and under load batches fill up to batch_size.
        first = self.consumer.poll(self.poll_timeout_s)
        msgs = [] if first is None else [first]
        if first is not None and self.batch_size > 1:
            msgs.extend(self.consumer.consume(self.batch_size - 1, timeout=0))
        records = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    print(f"serve: consumer: {err}", file=sys.stderr, flush=True)
                continue
            records.append(Record(self.kinds[m.topic()], m.topic(), m.partition(), m.offset(), m.value()))
        # The position moves past transaction markers and aborted records too.
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(self.assigned)}
        applied, skipped = self.store.apply(records, positions)
        s = self.stats
        if records:
            s.applied_session += applied
            s.skipped_session += skipped
            s.batches += 1
            s.last_batch_at = time.time()
        s.positions = s.positions | {tp: off for tp, off in positions.items() if off >= 0}
        now = time.monotonic()
        if now >= self._next_lag:
            self.refresh_lag()
        if now >= self._next_partitions:
            self._assign_new_partitions()
        return len(records)

    def refresh_lag(self) -> None:
        """End offsets from the broker: under read_committed, the last stable offset (the cached
        high watermark would count records of open transactions as lag); asked again while a partition's
        leader is being elected (a topic just created, a broker restarting), which stopped `rtrec serve`."""
        ends, starts = {}, {}
        for tp in self.assigned:
            low, high = topics.watermarks(self.meta, tp)
            ends[(tp.topic, tp.partition)] = high
            starts[(tp.topic, tp.partition)] = low
        s = self.stats
        s.end_offsets = ends
        s.start_offsets = starts
        s.lag_at = time.time()
        self._next_lag = time.monotonic() + self.lag_interval_s
        if not s.caught_up_once and sum(s.lag().values()) == 0:
            s.caught_up_once = True

    def run(self, stop: threading.Event, max_records: int | None = None, until_caught_up: bool = False,
            log=None) -> None:
        """Apply batches until ``stop`` is set, ``max_records`` were consumed, or (``until_caught_up``) no lag is left."""
        log_every = 10.0
        next_log = time.monotonic() + log_every
        was_caught_up = False
        try:
            while not stop.is_set():
                self.step()
                s = self.stats
                if max_records is not None and s.applied_session + s.skipped_session >= max_records:
                    break
                if s.caught_up_once and not was_caught_up:
                    was_caught_up = True
                    if log:
                        log(f"serve: caught up: {self.store.counters()['applied']:,} records applied in all")
                    if until_caught_up:
                        break
                if log and time.monotonic() >= next_log:
                    next_log = time.monotonic() + log_every
                    log(f"serve: {self.store.counters()['applied']:,} records applied, lag {sum(s.lag().values()):,}")
        except Exception as e:
            self.stats.error = f"{type(e).__name__}: {e}"
            raise

    def close(self) -> None:
        for client in (self.consumer, self.meta):
            if client is not None:
                client.close()
        self.consumer = self.meta = None


# -- HTTP ------------------------------------------------------------------------------
def _tp_label(tp: tuple[str, int]) -> str:
    return f"{tp[0]}/{tp[1]}"


def health(store: ServeStore, stats: ServeStats) -> tuple[int, dict]:
    lag = stats.lag()
    status = "failed" if stats.error else ("ok" if stats.caught_up_once else "catching-up")
    now = time.time()
    body = {
        "status": status,
        "error": stats.error,
        "records_applied": store.counters()["applied"],
        "records_skipped": store.counters()["skipped"],
        "records_applied_since_start": stats.applied_session,
        "applied_by_kind": {k: v for k, v in store.counters().items() if k not in ("applied", "skipped")},
        "lag": sum(lag.values()),
        "lag_by_partition": {_tp_label(tp): n for tp, n in sorted(lag.items())},
        "offsets": {_tp_label(tp): n for tp, n in sorted(store.offsets().items())},
        "last_batch_age_s": round(now - stats.last_batch_at, 3) if stats.last_batch_at else None,
        "lag_age_s": round(now - stats.lag_at, 3) if stats.lag_at else None,
        "uptime_s": round(now - stats.started, 3),
        "store": str(store.path),
    }
    return (503 if stats.error else 200), body


def metrics_text(store: ServeStore, stats: ServeStats) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    c = store.counters()
    lines = [
        "# HELP rtrec_serve_records_applied_total Records written to the serve store, by kind (since the store was created).",
        "# TYPE rtrec_serve_records_applied_total counter",
    ]
    for kind in ("user_features", "item_features", "recommendations", "candidates"):
        lines.append(f'rtrec_serve_records_applied_total{{kind="{kind}"}} {c[kind]}')
    lines += [
        "# HELP rtrec_serve_records_skipped_total Consumed records that are not features or recommendations records.",
        "# TYPE rtrec_serve_records_skipped_total counter",
        f"rtrec_serve_records_skipped_total {c['skipped']}",
        "# HELP rtrec_serve_batches_total Atomic write batches applied since this process started.",
        "# TYPE rtrec_serve_batches_total counter",
        f"rtrec_serve_batches_total {stats.batches}",
        "# HELP rtrec_serve_lookups_total Lookups served, by endpoint and result (hit or miss).",
        "# TYPE rtrec_serve_lookups_total counter",
    ]
    for (endpoint, result), n in sorted(stats.lookups.items()):
        lines.append(f'rtrec_serve_lookups_total{{endpoint="{endpoint}",result="{result}"}} {n}')
    lag = stats.lag()
    lines += [
        "# HELP rtrec_serve_consumer_lag Committed records not yet applied, by partition.",
        "# TYPE rtrec_serve_consumer_lag gauge",
    ]
    for (topic, part), n in sorted(lag.items()):
        lines.append(f'rtrec_serve_consumer_lag{{topic="{topic}",partition="{part}"}} {n}')
    lines += [
        "# HELP rtrec_serve_consumer_lag_records Committed records not yet applied, all partitions.",
        "# TYPE rtrec_serve_consumer_lag_records gauge",
        f"rtrec_serve_consumer_lag_records {sum(lag.values())}",
        "# HELP rtrec_serve_up 1 while the consumer runs, 0 after it failed.",
        "# TYPE rtrec_serve_up gauge",
        f"rtrec_serve_up {0 if stats.error else 1}",
    ]
    return "\n".join(lines) + "\n"


def bearer_token(cfg: RtrecConfig) -> str | None:
    """The token HTTP requests must carry (from serve.token_env or serve.token_file), or None for none."""
    s = cfg.serve
    if s.token_env:
        token = os.environ.get(s.token_env, "").strip()
        if not token:
            raise ConfigError(f"serve.token_env: the environment variable {s.token_env} is not set or empty "
                              "(it holds the HTTP API's bearer token)")
        return token
    if s.token_file:
        path = cfg.resolve_path(s.token_file)
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"serve.token_file: cannot read {path} ({e.strerror})") from None
        if not token:
            raise ConfigError(f"serve.token_file: {path} is empty")
        return token
    return None


def make_app(store: ServeStore, stats: ServeStats, token: str | None = None):
    """The aiohttp application over ``store`` (lookups read it directly; RocksDB reads are thread-safe).

    With ``token``, a request without ``Authorization: Bearer <token>`` gets 401.
    """
    from aiohttp import web

    expected = token.encode() if token else None

    @web.middleware
    async def bearer(request, handler):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return await handler(request)
        return web.json_response({"error": "this API needs Authorization: Bearer <token> (serve.token_env or "
                                  "serve.token_file)"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="rtrec"'})

    @web.middleware
    async def json_errors(request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return web.json_response({"error": e.reason, "path": request.path}, status=e.status)

    def lookup(endpoint: str, prefix: bytes, what: str, entity: str):
        async def handler(request):
            ident = request.match_info["id"]
            raw = store.get_raw(prefix, ident)
            stats.lookups[(endpoint, "miss" if raw is None else "hit")] += 1
            if raw is None:
                return web.json_response({"error": f"no {what} for {entity} {ident!r}", entity + "_id": ident},
                                         status=404)
            return web.Response(body=raw, content_type="application/json")

        return handler

    user_recs = lookup("user_recommendations", RECOMMENDATIONS, "recommendations", "user")
    user_cands = lookup("user_candidates", CANDIDATES, "ranked candidates", "user")

    async def recommendations(request):
        request_kind = request.query.get("request", "refresh")
        if request_kind not in ("refresh", "candidates"):
            return web.json_response({"error": "request must be refresh or candidates"}, status=400)
        return await (user_cands if request_kind == "candidates" else user_recs)(request)

    async def get_health(_request):
        status, body = health(store, stats)
        return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())

    async def get_metrics(_request):
        return web.Response(text=metrics_text(store, stats), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    app = web.Application(middlewares=([bearer] if expected else []) + [json_errors])
    app.add_routes([
        web.get("/users/{id}/recommendations", recommendations),
        web.get("/users/{id}/features", lookup("user_features", USER_FEATURES, "features", "user")),
        web.get("/items/{id}/features", lookup("item_features", ITEM_FEATURES, "features", "item")),
        web.get("/health", get_health),
        web.get("/metrics", get_metrics),
    ])
    return app


# -- the command -----------------------------------------------------------------------
def _log(text: str) -> None:
    print(text, flush=True)


def serve(cfg: RtrecConfig, *, http: bool = True, stop: threading.Event | None = None,
          max_records: int | None = None, until_caught_up: bool = False, reset: bool = False,
          on_ready=None, log=_log) -> ServeStats:
    """Run the materialiser (and the HTTP API) until ``stop``, a signal, ``max_records`` or catching up.

    ``on_ready(port)`` is called once the HTTP API listens (port 0 in the
    configuration picks a free one).
    """
    token = bearer_token(cfg) if http else None  # before anything starts: a missing token fails at once
    if http and token is None and not is_loopback(cfg.serve.host):
        raise ConfigError(f"serve.host={cfg.serve.host!r} needs a bearer token: set serve.token_env or serve.token_file")
    path = cfg.resolve_path(cfg.serve.store_dir)
    if reset and path.exists():
        shutil.rmtree(path)
    stop = stop or threading.Event()
    store = ServeStore(path)
    stats = ServeStats()
    mat = Materializer(cfg, store, stats)
    try:
        mat.open()
        offsets = store.offsets()
        log(f"serve: store {path} ({store.counters()['applied']:,} records applied so far"
            + (f", resuming {len(offsets)} partitions at their stored offsets)" if offsets else ", from the beginning)"))
        if not http:
            mat.run(stop, max_records, until_caught_up, log)
            if on_ready:
                on_ready(None)
        else:
            asyncio.run(_serve_http(cfg, token, store, stats, mat, stop, max_records, until_caught_up, on_ready, log))
    finally:
        mat.close()
        store.close()
    return stats


async def _serve_http(cfg, token, store, stats, mat, stop, max_records, until_caught_up, on_ready, log) -> None:
    from aiohttp import web

    runner = web.AppRunner(make_app(store, stats, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.serve.host, cfg.serve.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise StoreError(
            f"cannot listen on {cfg.serve.host}:{cfg.serve.port} ({e.strerror}): pick another with --port "
            "(serve.port; 0 picks a free one)"
        ) from None
    port = runner.addresses[0][1]
    log(f"serve: HTTP API at http://{cfg.serve.host}:{port} (/users/ID/recommendations, /users/ID/features, "
        "/items/ID/features, /health, /metrics)" + (", bearer token required" if token else ""))
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    failure: list[BaseException] = []

    def consume():
        try:
            mat.run(stop, max_records, until_caught_up, log)
        except BaseException as e:  # reported by /health; ends serve below
            failure.append(e)

    thread = threading.Thread(target=consume, name="rtrec-serve-consumer", daemon=True)
    thread.start()
    if on_ready:
        on_ready(port)
    try:
        while not stop.is_set() and thread.is_alive():
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)
        await runner.cleanup()
    if failure:
        raise failure[0]


def lookup(cfg: RtrecConfig, entity: str, ident: str) -> dict | None:
    """A user's features and recommendations or an item's features, read from the store directly.

    Opens the store read-only, which works while ``rtrec serve`` writes it.
    """
    with ServeStore(cfg.resolve_path(cfg.serve.store_dir), read_only=True) as store:
        return store.lookup(entity, ident)
