"""How `rtrec run` starts and ends its local Flink: signals, the MiniCluster's JVM, temporary files.

PyFlink runs the MiniCluster in a JVM it starts as a child process (the py4j
gateway). Killed by SIGTERM with Python's default handler, `rtrec run` used
to die at once and leave that JVM behind: parent PID 1, holding its REST
port, stuck in its shutdown hooks. Now SIGTERM and SIGINT raise
:class:`StopRequested` in the main thread; the command then cancels the job
(or stops it with a savepoint when ``flink.savepoint_on_stop`` says so),
ends the JVM (SIGTERM, then SIGKILL after a grace period) and removes the
folder it gave the JVM for temporary files (``java.io.tmpdir``: the
MiniCluster's working folders and the RPC jar it unpacks, about 50 MB).

While it runs, `rtrec run` records its REST address in ``var/run/<job>.json``
(beside the checkpoint folder), so `rtrec stop` finds the job without being
told where it is. Each run also gives its job an id of its own choosing and
adds it to ``var/run/<job>.runs.json`` (kept after the run), so that `rtrec
run --resume` finds the newest checkpoint or savepoint those runs left
(:func:`resume_point`): Flink names their folders by job id only.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from rtrec.config import RtrecConfig


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived while a job ran.

    A BaseException, like KeyboardInterrupt: py4j, blocked in a call to the
    JVM when the signal arrives, turns any Exception into a network error and
    logs it with a traceback."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_stop_signals() -> None:
    """From now on SIGTERM and SIGINT raise :class:`StopRequested` in the main thread (once each:
    a second signal while stopping is ignored, so the clean-up is not cut short)."""

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise StopRequested(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def jvm_in_its_own_session() -> None:
    """From now on PyFlink starts its JVM in a session (and process group) of its own.

    In rtrec's process group, a signal sent to the whole group (``timeout``
    without ``--foreground``, a shell's job control) reached the JVM at the
    same moment as `rtrec run`: the MiniCluster ended at once and the savepoint
    that ``flink.savepoint_on_stop`` asks for failed ("Connection reset by
    peer"). Apart, only `rtrec run` gets it, and it ends the JVM itself, after
    the savepoint. (The JVM still exits when rtrec dies: PyFlink's gateway
    ends when its standard input closes.)
    """
    import subprocess

    import pyflink.pyflink_gateway_server as server

    if getattr(server.Popen, "own_session", False):
        return

    def popen(*args, **kwargs):
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)

    popen.own_session = True  # type: ignore[attr-defined]
    server.Popen = popen


def jvm_tmp_dir() -> Path:
    """A fresh folder for the MiniCluster JVM's temporary files; it must be called before PyFlink starts
    its JVM (the first environment made), which reads ``JVM_ARGS``."""
    d = Path(tempfile.mkdtemp(prefix="rtrec-flink-"))
    os.environ["JVM_ARGS"] = f"{os.environ.get('JVM_ARGS', '')} -Djava.io.tmpdir={d}".strip()
    return d


def gateway_pids() -> list[int]:
    """This process's child JVMs running PyFlink's gateway (the MiniCluster)."""
    me = str(os.getpid())
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = stat.rsplit(")", 1)[1].split()[1]
            if ppid == me and b"PythonGatewayServer" in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return out


def end_processes(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL those still alive after ``grace_s``; returns the ones that needed it."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    return alive


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # (a zombie has ended)
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """Where a running `rtrec run` serves its job's REST API (var/run/<job name>.json)."""

    version: int
    job_name: str
    rest_url: str
    pid: int
    started_ms: int

    def alive(self) -> bool:
        return _alive(self.pid)


def run_record_path(cfg: RtrecConfig, job_name: str | None = None) -> Path:
    return cfg.resolve_path(cfg.flink.checkpoint_dir).parent / "run" / f"{job_name or cfg.flink.job_name}.json"


def _write_json(path: Path, data) -> None:
    """Write ``data`` as JSON whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def write_run_record(cfg: RtrecConfig, rest_url: str) -> Path:
    path = run_record_path(cfg)
    _write_json(path, dataclasses.asdict(RunRecord(1, cfg.flink.job_name, rest_url, os.getpid(), int(time.time() * 1000))))
    return path


def read_run_record(cfg: RtrecConfig, job_name: str | None = None) -> RunRecord | None:
    """The record of a `rtrec run` of ``job_name`` whose process is still alive, else None."""
    path = run_record_path(cfg, job_name)
    try:
        data = json.loads(path.read_text())
        record = RunRecord(**{f.name: data[f.name] for f in dataclasses.fields(RunRecord)})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.alive() else None


def hold_job_name(cfg: RtrecConfig):
    """Claim the job name for this process: an open file holding an exclusive lock (var/run/<job name>.lock),
    released when it is closed or the process ends, however it ends; None if another process holds it.

    Two runs of one job name at once read the same events (Flink's Kafka source assigns every partition to
    each job itself, whatever the consumer group) and write every output twice, under the same transactional
    ids."""
    path = run_record_path(cfg).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    held = open(path, "a")  # noqa: SIM115 (kept open for the run)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        return None
    return held


def remove_run_record(cfg: RtrecConfig) -> None:
    path = run_record_path(cfg)
    try:
        record = json.loads(path.read_text())
        if record.get("pid") == os.getpid():  # (not another run's of the same name)
            path.unlink()
    except (OSError, ValueError):
        pass


@dataclasses.dataclass(frozen=True)
class PastRun:
    """A `rtrec run` of a job name, as var/run/<job name>.runs.json lists it (newest first)."""

    job_id: str  # the Flink job id the run gave its job (32 hex digits)
    bounded: bool  # `rtrec run --bounded`: another source and windows, so another kind of state
    started_ms: int
    #: A bounded run's end: the events topic's end offsets (partition -> offset) its source reads to. A
    #: bounded run resumed from its state reads to the same end: the restored source keeps it.
    ends: dict[str, int] | None = None


#: How many past runs var/run/<job name>.runs.json keeps (Flink retains one checkpoint per job).
RUNS_KEPT = 20
#: The Flink option that fixes a submitted job's id (PipelineOptionsInternal.PIPELINE_FIXED_JOB_ID).
FIXED_JOB_ID = "$internal.pipeline.job-id"


def runs_path(cfg: RtrecConfig) -> Path:
    return run_record_path(cfg).with_suffix(".runs.json")


def past_runs(cfg: RtrecConfig) -> list[PastRun]:
    """The job name's runs, newest first (none if the file is missing or unreadable)."""
    try:
        data = json.loads(runs_path(cfg).read_text())
        return [PastRun(str(r["job_id"]), bool(r["bounded"]), int(r["started_ms"]),
                        {str(p): int(o) for p, o in r["ends"].items()} if r.get("ends") else None)
                for r in data["runs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def record_run(cfg: RtrecConfig, bounded: bool, ends: dict[int, int] | None = None) -> str:
    """Choose the id of the job this run submits (set in ``cfg.flink.options``), list the run first
    in var/run/<job name>.runs.json (with a bounded run's ``ends``, see :class:`PastRun`) and return the id."""
    job_id = uuid.uuid4().hex
    cfg.flink.options[FIXED_JOB_ID] = job_id
    kept = {str(p): int(o) for p, o in ends.items()} if ends is not None else None
    runs = [PastRun(job_id, bounded, int(time.time() * 1000), kept), *past_runs(cfg)][:RUNS_KEPT]
    _write_json(runs_path(cfg), {"version": 1, "runs": [dataclasses.asdict(r) for r in runs]})
    return job_id


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """A retained checkpoint or a savepoint of an earlier run, for ``execution.state-recovery.path``."""

    path: Path  # its folder (chk-N or savepoint-...)
    kind: str  # "checkpoint" or "savepoint"
    job_id: str
    taken_ms: int
    ends: dict[str, int] | None = None  # the run's end, if bounded (PastRun.ends)

    def describe(self) -> str:
        taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.taken_ms / 1000))
        return f"{self.kind} {self.path} (taken {taken})"


def resume_point(cfg: RtrecConfig, bounded: bool) -> ResumePoint | None:
    """The newest state an earlier run of this job name and kind (bounded or not) left in the local
    flink.checkpoint_dir and the savepoints folder beside it: a retained checkpoint (Flink keeps a
    job's newest when it is cancelled or fails) or a savepoint (``savepoint-<first 6 digits of the job
    id>-...``). None if there is none, or the checkpoints are on a cluster's storage (a URI)."""
    if "://" in cfg.flink.checkpoint_dir:
        return None
    checkpoints = cfg.resolve_path(cfg.flink.checkpoint_dir)
    best: ResumePoint | None = None
    for run in past_runs(cfg):
        if run.bounded != bounded:
            continue
        found = [("checkpoint", m) for m in checkpoints.glob(f"{run.job_id}/chk-*/_metadata")]
        found += [("savepoint", m) for m in (checkpoints.parent / "savepoints").glob(f"savepoint-{run.job_id[:6]}-*/_metadata")]
        for kind, metadata in found:
            try:
                taken_ms = int(metadata.stat().st_mtime * 1000)
            except OSError:
                continue
            if best is None or taken_ms > best.taken_ms:
                best = ResumePoint(metadata.parent, kind, run.job_id, taken_ms, run.ends)
    return best


class LocalRun:
    """One `rtrec run` (or demo) of a job on a MiniCluster in this process; see :func:`local_run`."""

    def __init__(self, cfg: RtrecConfig):
        self.cfg = cfg
        self.rest_url: str | None = None
        self.stopped: StopRequested | None = None
        self.savepoint: str | None = None
        # Seconds the REST API stays up after the job ended by itself: an unbounded job ends when
        # `rtrec stop` stopped it with a savepoint, and that command still reads the savepoint's path.
        self.linger_s = 0.0

    def started(self, rest_url: str) -> None:
        """The job was submitted: record where its REST API is."""
        self.rest_url = rest_url
        write_run_record(self.cfg, rest_url)

    def stop_job(self, log) -> None:
        """Cancel the job, or stop it with a savepoint if ``flink.savepoint_on_stop``."""
        import urllib.error

        from rtrec.flink_rest import FlinkRest

        if self.rest_url is None:
            return
        rest = FlinkRest(self.rest_url)
        try:
            jobs = [j for j in rest.running_jobs() if j["name"] == self.cfg.flink.job_name]
        except (urllib.error.URLError, OSError):
            return
        for job in jobs:
            if self.cfg.flink.savepoint_on_stop:
                try:
                    self.savepoint = rest.stop_with_savepoint(job["jid"], timeout_s=120)
                    log(f"savepoint at {self.savepoint}")  # (the command says how to resume from it)
                    continue
                except (RuntimeError, TimeoutError, urllib.error.URLError, OSError) as e:
                    log(f"the savepoint failed ({str(e).splitlines()[0][:200]}); cancelling the job")
            try:
                rest.cancel(job["jid"])
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and rest.get(f"/jobs/{job['jid']}")["state"] != "CANCELED":
                    time.sleep(0.2)
            except (urllib.error.URLError, OSError):
                pass


class local_run:
    """``with local_run(cfg) as run:`` around starting a job on a MiniCluster in this process.

    SIGTERM and SIGINT inside the block stop the job (see :class:`LocalRun`) and
    end the block; ``run.stopped`` then says which. On leaving the block, in
    every case, the MiniCluster's JVM is ended and its temporary files and the
    run record removed.
    """

    def __init__(self, cfg: RtrecConfig, name: str = "rtrec"):
        self.cfg, self.name = cfg, name

    def _log(self, text: str) -> None:
        import sys

        print(f"{self.name}: {text}", file=sys.stderr, flush=True)

    def __enter__(self) -> LocalRun:
        self.tmp = jvm_tmp_dir()
        jvm_in_its_own_session()
        raise_on_stop_signals()
        self.run = LocalRun(self.cfg)
        # The JVM stays until the command has read what it needs through py4j (a bounded run's
        # JobExecutionResult), so the normal path ends it when the interpreter exits.
        atexit.register(self.cleanup)
        return self.run

    def cleanup(self) -> None:
        """End the MiniCluster's JVM, remove its temporary files and the run record (idempotent)."""
        if self.run.linger_s and not self.run.stopped and gateway_pids():
            time.sleep(self.run.linger_s)
        close_gateway()
        end_processes(gateway_pids())
        remove_tree(self.tmp)
        remove_run_record(self.cfg)

    def __exit__(self, kind, error, tb) -> bool:
        try:
            if isinstance(error, StopRequested):
                self.run.stopped = error
                self._log(f"{error} received: stopping job '{self.cfg.flink.job_name}'")
                self.run.stop_job(self._log)
                self.cleanup()
                self._log("stopped")
        finally:
            # From here on a stop signal just exits, so that cleanup() still runs (at exit).
            signal.signal(signal.SIGTERM, _exit_on_signal)
            signal.signal(signal.SIGINT, _exit_on_signal)
        return isinstance(error, StopRequested)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def close_gateway() -> None:
    """Close PyFlink's py4j connections to its JVM, so that nothing tries them again once it has ended."""
    try:
        from pyflink import java_gateway
    except ImportError:
        return
    gateway = getattr(java_gateway, "_gateway", None)
    if gateway is not None:
        with contextlib.suppress(Exception):
            gateway.close()
        # py4j tells the JVM about every Java object Python garbage-collects, on a new connection if
        # need be; once the JVM has ended, each try logged two tracebacks (dozens at exit, after a bounded
        # run's summary). A client marked disconnected sends no such notices.
        gateway._gateway_client.is_connected = False
        with contextlib.suppress(Exception):
            from py4j.finalizer import clear_finalizers

            clear_finalizers(clear_all=True)
        java_gateway._gateway = None


@dataclasses.dataclass(frozen=True)
class StartPosition:
    """Where a job started without a savepoint will begin on the events topic."""

    to_read: int  # events between there and the topic's current end
    where: str  # in words, for the start-up line
    from_beginning: bool  # it reads from the start of the topic (events an existing model may have learned)


def start_position(mode: str, end: dict[int, int], committed: dict[int, int | None]) -> StartPosition:
    """``mode``: flink.startup_mode; ``end``: partition -> end offset; ``committed``: partition -> the
    consumer group's committed offset or None (see topics.committed_offsets)."""
    total = sum(end.values())
    if mode == "latest":
        return StartPosition(0, "from its end (new events only)", False)
    if mode == "earliest":
        return StartPosition(total, "from the beginning", True)
    known = {p: o for p, o in committed.items() if o is not None}
    if not known:
        return StartPosition(total, "from the beginning (the consumer group has committed no offsets)", True)
    to_read = sum(max(0, e - known.get(p, 0)) for p, e in end.items())
    # (a partition the group never committed on is read from its start)
    unread = any(e > 0 and p not in known for p, e in end.items())
    return StartPosition(to_read, f"from the consumer group's committed offsets ({to_read:,} events behind)", unread)


def run_locally(cfg: RtrecConfig, progress, name: str = "rtrec", ends: dict[int, int] | None = None):
    """The job on a MiniCluster in this process (jobs.rtrec_job.run) inside :class:`local_run`, with
    ``progress`` (a rtrec.progress.JobProgress) following it; returns ``(result, run)``: the job's
    result (None when a signal stopped it) and the :class:`LocalRun`. ``ends``: a bounded run's end
    (:class:`PastRun`), which a restored one needs (jobs.rtrec_job.finish_bounded)."""
    from jobs import rtrec_job

    result = None
    with local_run(cfg, name) as run:
        def started():
            url = f"http://127.0.0.1:{cfg.flink.rest_port}"
            print(f"{name}: Flink web UI and REST API at http://localhost:{cfg.flink.rest_port}", flush=True)
            run.started(url)
            progress.start(url)

        try:
            result = rtrec_job.run(cfg, on_start=started, ends=ends)
        finally:
            progress.stop()
    return result, run
