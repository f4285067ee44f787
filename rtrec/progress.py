"""Progress of a running job: events in, events/s, consumer lag and model version, every few seconds.

`rtrec run` and `rtrec demo` start a :class:`JobProgress` beside the job. It
polls the job's REST API (the MiniCluster's or a cluster's) and draws a
progress bar in the style of the replay's:

    rtrec job: 45%|████▌     | 135,112/300,000 ev [00:41, 3,310 ev/s, lag 164,888, model v23]

From the job's own metrics: events in is the UserStage's ``events_in``
counter summed over subtasks; lag is the Kafka source's ``pendingRecords``
(records between its position and the partitions' ends); the model version
is the newest any scorer holds. :func:`sample` reads them and
:func:`describe` words them; the thread only repeats the two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import time
import urllib.error

from tqdm import tqdm

from rtrec.flink_rest import FlinkRest
from rtrec.sharding import fatal_reason


@dataclasses.dataclass(frozen=True)
class Sample:
    """One reading of a job's progress metrics (None: not reported yet)."""

    at: float
    events_in: int
    lag: int | None
    model_version: int | None
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0


def sample(rest: FlinkRest, job_id: str, vertices: dict[str, str], models: bool = True) -> Sample:
    """Read the metrics once; ``vertices`` maps "source", "user" to vertex ids (see :func:`find_vertices`);
    ``models``: whether the job learns (a feature job has no model version)."""
    user = _by_suffix(rest, job_id, vertices["user"], [f"rtrec.{n}" for n in _COUNTERS] + ["rtrec.model_version"])
    lags = rest.metrics(job_id, vertices["source"], ".pendingRecords") if "source" in vertices else {}
    counts = {n: int(sum(user.get(f"rtrec.{n}", []))) for n in _COUNTERS}
    versions = user.get("rtrec.model_version") if models else None
    return Sample(time.monotonic(), counts["events_in"], int(sum(lags.values())) if lags else None,
                  int(max(versions)) if versions else None, counts["events_accepted"], counts["duplicates"],
                  counts["late_events"], counts["dead_letters"])


_COUNTERS = ("events_in", "events_accepted", "duplicates", "late_events", "dead_letters")


def _by_suffix(rest: FlinkRest, job_id: str, vertex_id: str, suffixes: list[str]) -> dict[str, list[float]]:
    """Suffix -> the values of a vertex's metrics (one per subtask) whose id ends with it: two requests."""
    path = f"/jobs/{job_id}/vertices/{vertex_id}/metrics"
    names = [m["id"] for m in rest.get(path) if any(m["id"].endswith(x) for x in suffixes)]
    out: dict[str, list[float]] = {}
    if names:
        for m in rest.get(f"{path}?get={','.join(names)}"):
            suffix = next(x for x in suffixes if m["id"].endswith(x))
            out.setdefault(suffix, []).append(float(m["value"]))
    return out


def find_vertices(rest: FlinkRest, job_id: str) -> dict[str, str]:
    """The vertex ids :func:`sample` reads: the UserStage's and the events source's."""
    out = {}
    for v in rest.get(f"/jobs/{job_id}")["vertices"]:
        if "UserStage" in v["name"]:
            out["user"] = v["id"]
        elif "rtrec_events" in v["name"] and "source" not in out:
            out["source"] = v["id"]
    if "user" not in out:
        raise KeyError(f"job {job_id} has no UserStage vertex")
    return out


def read_to_its_end(pending: float | None, appended: int, events_in: float, last_events_in: float | None) -> bool:
    """Whether a bounded events source has read all it will: what it has not read (``pending``, the
    source's pendingRecords) came after its start (``appended`` records since), and the UserStage took
    nothing more in since the last poll (``events_in`` against ``last_events_in``).

    >>> read_to_its_end(0, 0, 100, 100)
    True
    >>> read_to_its_end(5, 5, 100, 100), read_to_its_end(6, 5, 100, 100), read_to_its_end(0, 0, 101, 100)
    (True, False, False)
    >>> read_to_its_end(None, 0, 100, 100)
    False
    """
    return pending is not None and pending <= appended and last_events_in is not None and events_in == last_events_in


def rate(before: Sample | None, now: Sample) -> float:
    """Events per second between two samples (0 before the second one)."""
    if before is None or now.at <= before.at:
        return 0.0
    return max(0, now.events_in - before.events_in) / (now.at - before.at)


def describe(now: Sample, per_s: float) -> str:
    """The bar's postfix: ``3,310 ev/s, lag 164,888, model v23``."""
    parts = [f"{per_s:,.0f} ev/s"]
    if now.lag is not None:
        parts.append(f"lag {now.lag:,}")
    if now.model_version is not None:
        parts.append(f"model v{now.model_version}")
    return ", ".join(parts)


def summary(events_in: int, duplicates: int, dead_by_reason: dict[str, int], outputs: dict[str, int],
            duplicates_dead: bool = True) -> str:
    """The run's summary line: what came in and what became of it, and the records written per topic.
    Records in = accepted + dead letters (late events and, with ``duplicates_dead``, the
    features.dead_letter_duplicates default, duplicates are dead letters too) + duplicates not dead-lettered.

    >>> summary(100, 2, {"malformed JSON": 3, "late": 1, "duplicate event_id": 2}, {"predictions": 94})
    'events in 100: accepted 94, duplicates 2, dead letters 6 (malformed JSON 3, duplicate event_id 2, late 1); outputs: predictions 94'
    >>> summary(100, 2, {"late": 1}, {}, duplicates_dead=False).split(";")[0]
    'events in 100: accepted 97, duplicates 2, dead letters 1 (late 1)'
    """
    dead = sum(dead_by_reason.values())
    accepted = events_in - dead - (0 if duplicates_dead else duplicates)
    head = f"events in {events_in:,}: accepted {max(0, accepted):,}, duplicates {duplicates:,}, " \
           f"dead letters {dead:,}"
    if dead_by_reason:
        ranked = sorted(dead_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        head += " (" + ", ".join(f"{r} {n:,}" for r, n in ranked) + ")"
    return head + "; outputs: " + ", ".join(f"{t} {n:,}" for t, n in outputs.items())


def bar_format(total: int | None) -> str:
    """tqdm's format of the bar: with a percentage when the total is known. tqdm puts ", " before a
    postfix itself (and nothing when there is none)."""
    if total:
        return "{l_bar}{bar}| {n_fmt}/{total_fmt} ev [{elapsed}{postfix}]"
    return "{desc}: {n_fmt} ev [{elapsed}{postfix}]"


def fatal_failure(rest: FlinkRest, job_id: str) -> str | None:
    """Why the job failed, if on something no restart can mend (rtrec.sharding.fatal_reason), from its
    exception history."""
    return fatal_reason(json.dumps(rest.get(f"/jobs/{job_id}/exceptions?maxExceptions=5")))


class JobProgress:
    """A thread that shows a job's progress until :meth:`stop` (or the job is gone).

    ``total``: the events the job will read, when known (a bounded run), for a
    bar with a percentage; else a running count.
    """

    def __init__(self, job_name: str, total: int | None = None, interval_s: float = 2.0,
                 file=None, enabled: bool = True, models: bool = True):
        self.models = models
        self.rest: FlinkRest | None = None
        self.job_name, self.total, self.interval_s = job_name, total, interval_s
        self.file = file or sys.stderr
        self.enabled = enabled
        self.last: Sample | None = None
        #: Set when the job failed on something a restart cannot mend (rtrec.sharding.FatalFailure):
        #: the reason, in words; the job was cancelled.
        self.fatal: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtrec-progress", daemon=True)

    def start(self, rest_url: str) -> JobProgress:
        """Follow the job at ``rest_url`` (known once the job's environment chose its REST port)."""
        self.rest = FlinkRest(rest_url)
        self._thread.start()  # (without the bar too: the run's summary takes the last sample)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            job_id = self.rest.job_id(self.job_name, timeout_s=600)
        except (TimeoutError, OSError):
            return
        bar = tqdm(total=self.total, unit="ev", desc="rtrec job", file=self.file, mininterval=0,
                   disable=not self.enabled, bar_format=bar_format(self.total))
        vertices = None
        try:
            while not self._stop.wait(self.interval_s):
                if self._fatal(job_id):
                    break
                try:
                    vertices = vertices or find_vertices(self.rest, job_id)
                    now = sample(self.rest, job_id, vertices, self.models)
                except (urllib.error.URLError, OSError, KeyError):
                    continue  # the job is deploying, restarting or gone; stop() ends the loop
                bar.n = now.events_in
                bar.set_postfix_str(describe(now, rate(self.last, now)), refresh=False)
                bar.refresh()
                self.last = now
        finally:
            bar.close()

    def _fatal(self, job_id: str) -> bool:
        """The job failed on something every restart would fail on again: note it and cancel the job."""
        try:
            self.fatal = fatal_failure(self.rest, job_id)
        except (urllib.error.URLError, OSError):
            return False
        if self.fatal is None:
            return False
        with contextlib.suppress(urllib.error.URLError, OSError):
            self.rest.cancel(job_id)
        return True
