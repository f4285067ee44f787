"""Kafka topics: check the broker, create what is missing, count and read outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from rtrec import kafka_clients
from rtrec.config import KafkaConfig

# Model versions carry whole parameter sets, in chunks of kafka.version_chunk_bytes (under the
# brokers' usual 1 MB limit: rtrec.model_updates); compaction keeps the newest version's chunks.
MODEL_TOPIC_CONFIG = {"cleanup.policy": "compact"}
#: Headers of a model-updates record: its version number and creation time (decimal strings), so a
#: reader can tell which version a record holds without loading it.
VERSION_HEADER, CREATED_HEADER = "rtrec.version", "rtrec.created_ms"
#: Headers of a dead-letter record: why it was refused, by which stage, and where it came from
#: (topic/partition@offset). Its key is the user id when known, its value the original bytes.
REASON_HEADER, STAGE_HEADER, SOURCE_HEADER = "rtrec.reason", "rtrec.stage", "rtrec.source"


log = logging.getLogger(__name__)
#: librdkafka's log lines (a "Connection refused" every few milliseconds while a broker is away) go
#: through Python logging here instead of straight to stderr: the commands show each distinct one
#: once (rtrec.cli), the job's Python workers log them as any other warning.
KAFKA_LOG = logging.getLogger("rtrec.kafka")
# check_broker turns what it hears into its one-line error; its client's log is dropped.
_PROBE_LOG = logging.getLogger("rtrec.kafka.probe")
_PROBE_LOG.propagate = False
_PROBE_LOG.addHandler(logging.NullHandler())


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the configured address."""


class TopicError(RuntimeError):
    """A topic that is missing and may not be created (kafka.create_topics), or that the broker would not create."""


def client_config(kafka: KafkaConfig, **settings) -> dict:
    """Properties of every confluent-kafka client rtrec makes (see rtrec.kafka_clients.settings): the
    broker, its security settings, librdkafka's log through :data:`KAFKA_LOG`, then ``settings``."""
    return kafka_clients.settings(kafka, **settings)


def admin(kafka: KafkaConfig) -> AdminClient:
    return kafka_clients.admin(kafka)


class KafkaAccessDenied(RuntimeError):
    """The broker answered but refused rtrec: credentials, TLS trust or an ACL."""


def check_broker(kafka: KafkaConfig, timeout_s: float = 5.0) -> None:
    """Raise :class:`BrokerUnavailable` or :class:`KafkaAccessDenied` naming the fix.

    A refused login or TLS handshake ends the wait at once (librdkafka itself would retry
    until the timeout and only say that no broker answered); when librdkafka reports every
    broker down (a refused connection, an unknown host) it gives up after about a second,
    else after ``timeout_s``. Logs nothing itself.
    """
    errors: list = []
    client = kafka_clients.admin(kafka, logger=_PROBE_LOG, error_cb=errors.append)
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        try:
            client.list_topics(timeout=max(0.05, min(0.5, deadline - time.monotonic())))
            return
        except KafkaException as e:
            errors.append(e.args[0])
        client.poll(0)  # serves error_cb
        for err in errors:
            if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL):
                raise KafkaAccessDenied(refusal(kafka, err)) from None
        now = time.monotonic()
        down = any(err.code() == KafkaError._ALL_BROKERS_DOWN for err in errors)
        if now >= deadline or (down and now - start >= 1.0):
            break
    raise BrokerUnavailable(
        f"no Kafka broker at {kafka.bootstrap_servers} ({_why(errors)}): run `make kafka-up` to start the "
        "local one, or point kafka.bootstrap_servers (or $RTREC_BOOTSTRAP_SERVERS) at yours"
    )


def refusal(kafka: KafkaConfig, err: KafkaError) -> str:
    """What a refused login or TLS handshake means, naming the settings to check (never a secret's value)."""
    reason = err.str()
    if err.code() == KafkaError._SSL:
        return (f"TLS with the Kafka brokers at {kafka.bootstrap_servers} failed ({reason}): check "
                "kafka.security_protocol and that kafka.ssl_ca_file holds the CA that signed their certificates")
    if kafka.sasl_password_env:
        where = f"the password in ${kafka.sasl_password_env} (kafka.sasl_password_env)"
    elif kafka.sasl_password_file:
        where = f"the password in {kafka.sasl_password_file} (kafka.sasl_password_file)"
    else:
        where = "sasl.jaas.config in kafka.properties"
    who = f" as {kafka.sasl_username!r}" if kafka.sasl_username else ""
    return (f"the Kafka brokers at {kafka.bootstrap_servers} refused rtrec's login ({kafka.sasl_mechanism}{who}: "
            f"{reason}): check kafka.sasl_mechanism, kafka.sasl_username and {where}")


def _why(errors: list) -> str:
    """The first transport error librdkafka gave, without its broker prefix and timing suffix.

    >>> from confluent_kafka import KafkaError
    >>> _why([KafkaError(KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
    ...                  "Connection refused (after 0ms in state CONNECT)")])
    'Connect to ipv4#127.0.0.1:1 failed: Connection refused'
    >>> _why([])
    'no answer'
    """
    for err in errors:
        if err.code() in (KafkaError._TRANSPORT, KafkaError._RESOLVE) and "/" in err.str():
            text = err.str().split(": ", 1)[-1]
            return re.sub(r"\s*\(after \d+ms in state \w+\)$", "", text)
    return "no answer"


def new_topic(kafka: KafkaConfig, name: str) -> NewTopic:
    """How rtrec creates ``name``: kafka.partitions (model-updates: one, compacted) and kafka.replication_factor.

    >>> t = new_topic(KafkaConfig(partitions=6, replication_factor=3), "events")
    >>> t.num_partitions, t.replication_factor
    (6, 3)
    """
    if name == kafka.model_updates_topic:
        # One partition: versions stay in order, and the job's reader of
        # this topic has no empty splits to hold its watermark back.
        return NewTopic(name, num_partitions=1, replication_factor=kafka.replication_factor, config=MODEL_TOPIC_CONFIG)
    return NewTopic(name, num_partitions=kafka.partitions, replication_factor=kafka.replication_factor)


def ensure_topics(kafka: KafkaConfig, names: list[str] | None = None, timeout_s: float = 30.0) -> list[str]:
    """Create the rtrec topics that do not exist yet (:func:`new_topic`); returns the ones created.

    With ``kafka.create_topics`` false, a missing topic is a :class:`TopicError` naming it.
    """
    check_broker(kafka)
    client = admin(kafka)
    names = names or [kafka.events_topic, *kafka.output_topics()]
    existing = set(client.list_topics(timeout=timeout_s).topics)
    missing = [name for name in dict.fromkeys(names) if name not in existing]
    if not missing:
        return []
    if not kafka.create_topics:
        raise TopicError(
            f"no topic {', '.join(repr(n) for n in missing)} at {kafka.bootstrap_servers}, and kafka.create_topics "
            "is false: create it, or check the kafka.*_topic settings (and --topic)"
        )
    created = []
    for name, future in client.create_topics([new_topic(kafka, n) for n in missing],
                                             operation_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as e:
            err = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise KafkaAccessDenied(
                    f"topic '{name}' is not visible to rtrec at {kafka.bootstrap_servers}, and it may not create it "
                    f"({err.name()}): have it created, or grant rtrec's principal access to it (DESCRIBE, and "
                    f"READ or WRITE); the name comes from {_topic_setting(kafka, name)}"
                ) from None
            raise TopicError(
                f"the broker at {kafka.bootstrap_servers} would not create topic {name!r} ({err.str()}); "
                f"rtrec asked for kafka.partitions={kafka.partitions}, "
                f"kafka.replication_factor={kafka.replication_factor}"
            ) from None
    _wait_for_metadata(client, created, timeout_s)
    return created


def prepare_job_topics(kafka: KafkaConfig, models: bool) -> list[str]:
    """What a job needs before it starts (``rtrec run``, a cluster submission): every topic exists
    (:func:`ensure_topics`) and suits it (:func:`check_topics`). Returns the topics created."""
    created = ensure_topics(kafka)
    model = [kafka.model_updates_topic] if models else []
    check_topics(kafka, reads=[kafka.events_topic, *model],
                 writes=[kafka.features_topic, kafka.recommendations_topic, kafka.predictions_topic,
                         kafka.dead_letter_topic, *model])
    return created


#: What a record of model_updates_topic carries besides its chunk (key, headers, batch framing).
CHUNK_OVERHEAD = 64 * 1024


def check_topics(kafka: KafkaConfig, reads: list[str], writes: list[str], timeout_s: float = 30.0) -> None:
    """Before a job starts: rtrec's principal may read ``reads`` and write ``writes``, and an existing
    model-updates topic (made beforehand by an administrator, say) suits the job. Raises
    :class:`KafkaAccessDenied` or :class:`TopicError` naming what to change; a Flink job would
    otherwise restart over and over on a refused write."""
    client = admin(kafka)
    names = list(dict.fromkeys([*reads, *writes]))
    need = {n: [op for op, group in (("READ", reads), ("WRITE", writes)) if n in group] for n in names}
    futures = client.describe_topics(TopicCollection(names), request_timeout=timeout_s,
                                     include_authorized_operations=True)
    for name, future in futures.items():
        try:
            described = future.result()
        except KafkaException as e:
            raise TopicError(f"could not describe topic {name!r} at {kafka.bootstrap_servers} "
                             f"({e.args[0].str()}); the name comes from {_topic_setting(kafka, name)}") from None
        allowed = {op.name for op in described.authorized_operations or []}
        missing = [op for op in need[name] if op not in allowed]
        if described.authorized_operations is not None and missing:
            raise KafkaAccessDenied(
                f"rtrec's principal may not {' and '.join(missing)} topic {name!r} at {kafka.bootstrap_servers} "
                f"(its ACLs allow {', '.join(sorted(allowed)) or 'nothing'}): grant it {' and '.join(missing)} on "
                f"the topic, or check {_topic_setting(kafka, name)}")
        if name == kafka.model_updates_topic:
            _check_model_topic(client, kafka, name, len(described.partitions), timeout_s)


def _check_model_topic(client: AdminClient, kafka: KafkaConfig, name: str, partitions: int, timeout_s: float) -> None:
    """model-updates: one partition (versions in order), compacted (the newest version's chunks stay),
    records large enough for a chunk."""
    if partitions != 1:
        raise TopicError(f"topic {name!r} has {partitions} partitions; model versions need exactly one (in order): "
                         f"recreate it with one partition, or name another in kafka.model_updates_topic")
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    try:
        config = client.describe_configs([resource], request_timeout=timeout_s)[resource].result()
    except KafkaException as e:  # (DESCRIBE_CONFIGS may be withheld: nothing to check then)
        log.warning("could not read the settings of topic %r (%s): not checked", name, e.args[0].str())
        return
    policy = config["cleanup.policy"].value if "cleanup.policy" in config else "delete"
    if "compact" not in policy.split(","):
        raise TopicError(
            f"topic {name!r} has cleanup.policy={policy}; model versions need compaction (else the newest "
            f"version expires with the retention time and no job can warm-start from it): "
            f"kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config cleanup.policy=compact")
    if "max.message.bytes" in config:
        limit = int(config["max.message.bytes"].value)
        if limit < kafka.version_chunk_bytes + CHUNK_OVERHEAD:
            raise TopicError(
                f"topic {name!r} takes records of at most {limit:,} bytes (max.message.bytes); model versions go in "
                f"chunks of kafka.version_chunk_bytes={kafka.version_chunk_bytes:,} plus up to {CHUNK_OVERHEAD:,} "
                f"of headers: set kafka.version_chunk_bytes to at most {max(1024, limit - CHUNK_OVERHEAD):,}")


def _topic_setting(kafka: KafkaConfig, name: str) -> str:
    """The setting that names topic ``name`` (kafka.events_topic, ...)."""
    for field in dataclasses.fields(kafka):
        if field.name.endswith("_topic") and getattr(kafka, field.name) == name:
            return f"kafka.{field.name}"
    return "the command line"


def delete_topics(kafka: KafkaConfig, names: list[str], timeout_s: float = 30.0) -> None:
    client = admin(kafka)
    existing = set(client.list_topics(timeout=timeout_s).topics)
    doomed = [n for n in names if n in existing]
    if not doomed:
        return
    for future in client.delete_topics(doomed, operation_timeout=timeout_s).values():
        future.result()
    deadline = time.time() + timeout_s
    while time.time() < deadline and set(doomed) & set(client.list_topics(timeout=timeout_s).topics):
        time.sleep(0.2)


def _wait_for_metadata(client: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while names and time.time() < deadline:
        topics = client.list_topics(timeout=timeout_s).topics
        if all(n in topics and not topics[n].error and topics[n].partitions for n in names):
            return
        time.sleep(0.1)


def _consumer(kafka: KafkaConfig, group: str | None = None, **settings) -> Consumer:
    return kafka_clients.consumer(
        kafka,
        **{
            "group.id": group or f"rtrec-reader-{time.time_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            **settings,
        },
    )


#: Errors a partition answers with while its leader is being elected (a topic just created, a broker
#: restarting).
_ELECTING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                       KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                       KafkaError._TRANSPORT, KafkaError._TIMED_OUT})
#: Errors of a group coordinator a broker just started is still loading.
_COORDINATOR_BUSY = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                               KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT,
                               KafkaError.REQUEST_TIMED_OUT})


def _retrying(call, transient: frozenset, timeout_s: float, pause_s: float = 0.2):
    """``call()``, again while it raises a KafkaException whose error is retriable or in ``transient``,
    for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as e:
            err = e.args[0]
            if not (err.retriable() or err.code() in transient) or time.monotonic() > deadline:
                raise
            time.sleep(pause_s)


def watermarks(c: Consumer, tp: TopicPartition, timeout_s: float = 30.0, pause_s: float = 0.2) -> tuple[int, int]:
    """A partition's (low, high) offsets fresh from the broker (under read_committed, high is the last
    stable offset), asked again while its leader is being elected or moved (a topic just created, a
    broker restarting), for up to ``timeout_s``."""
    return _retrying(lambda: c.get_watermark_offsets(tp, timeout=min(timeout_s, 10.0), cached=False), _ELECTING,
                     timeout_s, pause_s)


def _partitions(c: Consumer, topic: str) -> list[int]:
    md = c.list_topics(topic, timeout=10).topics[topic]
    if md.error:
        raise KafkaException(md.error)
    return list(md.partitions)


def committed_offsets(kafka: KafkaConfig, topic: str, group: str, timeout_s: float = 30.0) -> dict[int, int | None]:
    """Partition -> the offset consumer group ``group`` committed on ``topic`` (None: nothing committed)."""
    c = _consumer(kafka, group)

    def committed():
        parts = c.committed([TopicPartition(topic, p) for p in _partitions(c, topic)], timeout=10)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in parts}

    try:
        return _retrying(committed, _COORDINATOR_BUSY | _ELECTING, timeout_s, pause_s=0.5)
    finally:
        c.close()


def commit_forward(kafka: KafkaConfig, topic: str, group: str, offsets: dict[int, int],
                   timeout_s: float = 30.0) -> dict[int, int]:
    """Commit ``offsets`` for consumer group ``group`` where it has committed less (never moves one back);
    returns the partitions moved, with their new offsets."""
    behind = {p: o for p, o in offsets.items()
              if (committed_offsets(kafka, topic, group, timeout_s).get(p) or 0) < o}
    if not behind:
        return {}
    c = _consumer(kafka, group)
    try:
        _retrying(lambda: c.commit(offsets=[TopicPartition(topic, p, o) for p, o in behind.items()],
                                   asynchronous=False), _COORDINATOR_BUSY | _ELECTING, timeout_s, pause_s=0.5)
    finally:
        c.close()
    return behind


def end_offsets(kafka: KafkaConfig, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Partition -> end offset as a read_committed consumer sees it (the last stable offset).

    Retries while the broker answers with a retriable error (a partition whose
    leader is still being elected, just after the topic was created or the
    broker restarted) for up to ``timeout_s``.
    """
    c = _consumer(kafka)
    try:
        return _retrying(lambda: {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                                  for p in _partitions(c, topic)}, _ELECTING, timeout_s)
    finally:
        c.close()


def read_topic(kafka: KafkaConfig, topic: str, idle_s: float = 2.0, max_s: float = 120.0) -> Iterator:
    """Yield every committed record of ``topic`` from the beginning (read_committed).

    Stops when every partition reached its end and nothing new came for ``idle_s``.
    """
    c = _consumer(kafka)
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in md.partitions]
        c.assign(parts)
        at_end: set[int] = set()
        deadline = time.time() + max_s
        last = time.time()
        while time.time() < deadline:
            msgs = c.consume(10_000, timeout=0.2)
            for m in msgs:
                if m.error():
                    if m.error().code() == -191:  # _PARTITION_EOF
                        at_end.add(m.partition())
                        continue
                    raise KafkaException(m.error())
                at_end.discard(m.partition())
                last = time.time()
                yield m
            if len(at_end) == len(parts) and time.time() - last >= idle_s:
                return
    finally:
        c.close()


def partition_records(c: Consumer, topic: str, partition: int, start: int, timeout_s: float) -> Iterator:
    """One partition's records from offset ``start`` on, over consumer ``c`` (made with
    ``enable.partition.eof``), until the partition's end or ``timeout_s``; unassigned after."""
    c.assign([TopicPartition(topic, partition, start)])
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = c.poll(min(0.5, max(0.01, deadline - time.monotonic())))
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return
                raise KafkaException(m.error())
            yield m
    finally:
        c.unassign()


class RecordFetcher:
    """Fetches single records by partition and offset, over one consumer kept open.

    The scorers use it to load a model version that the job announced by its
    offset (see udfs/user_stage.py): the parameters come straight from the
    broker instead of crossing Flink's network stack.
    """

    def __init__(self, kafka: KafkaConfig, topic: str):
        self.kafka, self.topic = kafka, topic
        self._consumer: Consumer | None = None

    def fetch(self, partition: int, offset: int, newest: bool = False, timeout_s: float = 10.0):
        """The record at ``offset`` or, if compaction removed it, the first one after it; with
        ``newest``, the partition's last record if that is further on. None if the partition ends
        before it or nothing arrives within ``timeout_s``."""
        if newest:
            offset = max(offset, self._end(self.consumer(), partition, timeout_s) - 1)
        with contextlib.closing(self.records(partition, offset, timeout_s)) as records:
            # (unassigned after: no fetch left waiting at the partition's end to hold up the next call)
            return next((m for m in records if m.offset() >= offset), None)

    def _end(self, c: Consumer, partition: int, timeout_s: float) -> int:
        """The partition's end offset (:func:`watermarks`: waiting out a leader election)."""
        return watermarks(c, TopicPartition(self.topic, partition), timeout_s, pause_s=0.1)[1]

    def newer(self, partition: int, offset: int, timeout_s: float = 1.0):
        """The partition's last record if it lies past ``offset``, else None: one round trip to the
        broker when nothing is newer (the scorers ask between batches)."""
        end = self._end(self.consumer(), partition, timeout_s)
        if end - 1 <= offset:
            return None
        return self.fetch(partition, end - 1, timeout_s=timeout_s)

    def records(self, partition: int, start: int, timeout_s: float = 10.0) -> Iterator:
        """The partition's records from offset ``start`` on, until its end or ``timeout_s``."""
        return partition_records(self.consumer(), self.topic, partition, start, timeout_s)

    def consumer(self) -> Consumer:
        if self._consumer is None:
            # A fetch at the partition's end would wait up to fetch.wait.max.ms (500 ms) for more.
            self._consumer = _consumer(self.kafka, **{"fetch.wait.max.ms": 10})
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def header_int(record, name: str) -> int | None:
    """An integer header of ``record`` (such as VERSION_HEADER), or None if it has none."""
    value = dict(record.headers() or []).get(name)
    return None if value is None else int(value)


def count_committed(kafka: KafkaConfig, topic: str) -> int:
    """Number of committed records in ``topic`` (reads them; transaction markers are not counted)."""
    return sum(1 for _ in read_topic(kafka, topic, idle_s=0.5))


def read_last(kafka: KafkaConfig, topic: str, timeout_s: float = 10.0):
    """The newest record of ``topic`` (over all partitions, by timestamp), or None if it is empty."""
    fetcher = RecordFetcher(kafka, topic)
    try:
        md = fetcher.consumer().list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is None or md.error:
            return None
        last = [fetcher.fetch(p, 0, newest=True, timeout_s=timeout_s) for p in md.partitions]
        return max((m for m in last if m is not None), key=lambda m: m.timestamp()[1], default=None)
    finally:
        fetcher.close()
