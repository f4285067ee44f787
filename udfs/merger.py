"""ModelMerger: folds the trainers' deltas into numbered versions (models.merger.MergerCore in Flink).

One subtask (parallelism 1, keyed by a constant) receives

- ``("delta", trainer, seq, delta bytes, held-out examples)`` from every
  UserStage subtask after each batch it learned from, and
- ``("items", {item id: dense features})`` from the ItemStage,

and emits a new version every ``model.merge_examples`` examples or
``model.merge_interval_ms`` after the first pending update, whichever comes
first. Versions go to the model-updates topic, their number in a header
(every UserStage gets a notice of each and loads it from there), and to files
under ``model.versions_dir``.

Its state is the newest version (all parameters and optimiser state) and the
updates not merged yet, both checkpointed. After a restore, version numbers go
on after the newest one on the topic, so a number the failed attempt published
after the checkpoint never names other parameters. A job that starts without
state warm-starts from the newest version on the model-updates topic, or
failing that from the newest file.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from models.device import resolve_device
from models.merger import MergerCore, read_message
from models.params import ModelShapeMismatch, Version, from_bytes, to_bytes
from models.worker import torch_call
from rtrec import topics
from rtrec.config import RtrecConfig
from rtrec.model_updates import VersionReader, split
from udfs.faults import FaultInjector
from udfs.metrics import Level
from udfs.records import BYTES
from udfs.runtime import subtask_info

log = logging.getLogger(__name__)

#: What to do about a restored model that does not fit the job's (models.params.ModelShapeMismatch).
RESTORE_WITH_ITS_SETTINGS = ("resume with the model settings of the run that took that state, or start without it "
                             "(no --from-savepoint or --resume)")

#: What trainers and the ItemStage send: Row(0, pickled message), keyed in Java on the 0.
MERGER_INPUT = Types.ROW_NAMED(["key", "value"], [Types.INT(), Types.PICKLED_BYTE_ARRAY()])
#: What the merger emits, one row per chunk of a version (rtrec.model_updates.VersionChunk): the
#: model-updates topic's key and value, and the version's number, creation time, the chunk's index
#: and the number of chunks for the record's headers (jobs/kafka_tables.insert_model_updates).
MODEL_UPDATE = Types.ROW_NAMED(["k", "v", "number", "created_ms", "chunk", "chunks"],
                               [Types.STRING(), BYTES, Types.LONG(), Types.LONG(), Types.INT(), Types.INT()])


def versions_dir(cfg: RtrecConfig) -> Path:
    d = cfg.model.versions_dir or str(Path(cfg.flink.checkpoint_dir).parent / "models")
    return cfg.resolve_path(d) / cfg.flink.job_name


def write_version(directory: Path, version: Version, data: bytes, keep: int) -> Path:
    """Write a version file atomically; keep the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"v{version.number:09d}.pt"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    for old in sorted(directory.glob("v*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def newest_version_file(directory: Path) -> Version | None:
    for path in sorted(directory.glob("v*.pt"), reverse=True):
        try:
            return Version.from_bytes(path.read_bytes())
        except Exception as e:  # a torn or foreign file: try the next
            log.warning("skipping model version file %s: %s", path, e)
    return None


def _newest_published(cfg: RtrecConfig, load: bool) -> tuple[object, bytes | None] | None:
    """The newest version's last record on the model-updates topic, and (with ``load``) its bytes."""
    reader = VersionReader(cfg.kafka, cfg.kafka.model_updates_topic)
    try:
        head = reader.newest()
        return None if head is None else (head, reader.data(head) if load else None)
    except Exception as e:  # no broker or no topic: fall back to files
        log.warning("could not read %s: %s", cfg.kafka.model_updates_topic, e)
        return None
    finally:
        reader.close()


def newest_published_version(cfg: RtrecConfig) -> Version | None:
    """The newest version on the model-updates topic, if any."""
    found = _newest_published(cfg, load=True)
    if found is None or found[1] is None:
        return None
    return Version.from_bytes(found[1])


def newest_published_number(cfg: RtrecConfig) -> int | None:
    """The number of the newest version on the model-updates topic, from its header (without loading
    the parameters; a record written without the header is loaded)."""
    found = _newest_published(cfg, load=False)
    if found is None:
        return None
    number = topics.header_int(found[0], topics.VERSION_HEADER)
    return number if number is not None else Version.from_bytes(found[0].value()).number


class ModelMerger(KeyedProcessFunction):
    def __init__(self, cfg: RtrecConfig):
        self.cfg = cfg

    def open(self, ctx: RuntimeContext):
        torch_call(torch.set_num_threads, 1)
        torch_call(lambda: from_bytes(to_bytes({"x": torch.zeros(1)})))  # lazy torch imports, now
        self.version_state = ctx.get_state(ValueStateDescriptor("version", Types.PICKLED_BYTE_ARRAY()))
        self.pending_state = ctx.get_list_state(ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        self.core: MergerCore | None = None
        self.timer_at: int | None = None
        self.dir = versions_dir(self.cfg)
        metrics = ctx.get_metrics_group().add_group("rtrec")
        self.m_versions = metrics.counter("model_versions")
        self.m_rollbacks = metrics.counter("model_rollbacks")
        self.m_rejected = metrics.counter("model_deltas_rejected")
        self.version_merged = Level(metrics, "model_version_merged")
        info = subtask_info(ctx)
        self.attempt = info.attempt
        self.fault = FaultInjector(self.cfg, "model-merger", info.index)

    def _restore(self) -> list:
        """Build the core from state (after a restore) or by a warm start; returns versions to emit."""
        cfg = self.cfg
        self.core = core = torch_call(MergerCore, cfg.model, resolve_device(cfg.model.device))
        data = self.version_state.value()
        warm = False
        if data is not None:
            v = torch_call(Version.from_bytes, bytes(data))
            try:
                torch_call(core.start_from, v)
            except ModelShapeMismatch as e:  # (no restart mends it: the job is ended and this said, one line)
                raise ModelShapeMismatch(f"the restored state holds {e}: {RESTORE_WITH_ITS_SETTINGS}") from None
            core.merged_upto = dict(v.merged_upto)
        elif cfg.model.warm_start:
            v = torch_call(lambda: newest_published_version(cfg) or newest_version_file(self.dir))
            if v is not None:
                log.info("warm start from model version %d", v.number)
                try:
                    torch_call(core.start_from, v)
                except ModelShapeMismatch as e:
                    raise ModelShapeMismatch(
                        f"the warm start from model version {v.number} (on '{cfg.kafka.model_updates_topic}' or "
                        f"in {self.dir}) found {e}: run with the settings that made it, or with --set "
                        "model.warm_start=false to start from new parameters") from None
                warm = True
        for message in self.pending_state.get() or []:
            self._add(message, store=False)
        if data is not None or (self.attempt > 0 and not warm):
            # The attempt that failed may have published versions after this checkpoint (the topic is
            # written at-least-once), and the scorers read them again from their restored offsets. Their
            # numbers must not be reused for other parameters: scorers skip a number they have seen.
            # So continue after the newest published one, and publish the checkpoint's line at once.
            # This holds too when the checkpoint came before the merger's first version (no version
            # in state, a failover: attempt > 0); numbering from 1 again went back under the failed
            # attempt's numbers.
            published = torch_call(newest_published_number, cfg)
            if published is not None and published > core.version:
                log.info("restored model version %d; the failed attempt had published up to %d: "
                         "republishing as %d", core.version, published, published + 1)
                core.version = published
                return self._merge()
            return []
        return self._merge() if warm else []  # a warm start publishes at once under the next number

    def _add(self, message: tuple, store: bool = True) -> None:
        before = self.core.rejected
        torch_call(self.core.add, read_message(message))
        if self.core.rejected > before:
            self.m_rejected.inc()
        if store:
            self.pending_state.add(message)

    def _merge(self) -> list:
        v = torch_call(self.core.merge)
        data = torch_call(v.to_bytes)
        self.version_state.update(data)
        self.pending_state.clear()
        self.version_merged.set(v.number)
        self.m_versions.inc()
        if v.rolled_back:
            self.m_rollbacks.inc()
        write_version(self.dir, v, data, self.cfg.model.keep_versions)
        return [Row(c.key, c.value, c.number, c.created_ms, c.chunk, c.chunks)
                for c in split(data, v.number, v.created_ms, self.cfg.kafka.version_chunk_bytes)]

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        self.fault.count(1)
        out = self._restore() if self.core is None else []
        self._add(pickle.loads(value) if isinstance(value, bytes | bytearray) else value)
        if self.core.due():
            out.extend(self._merge())
        elif self.timer_at is None:
            self.timer_at = ctx.timer_service().current_processing_time() + self.cfg.model.merge_interval_ms
            ctx.timer_service().register_processing_time_timer(self.timer_at)
        yield from out

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        out = self._restore() if self.core is None else []
        self.timer_at = None
        if self.core.has_work():
            out.extend(self._merge())
        yield from out
