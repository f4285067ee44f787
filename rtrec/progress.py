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

import dataclasses
import sys
import threading
import time
import urllib.error

from tqdm import tqdm

from rtrec.flink_rest import FlinkRest


@dataclasses.dataclass(frozen=True)
class Sample:
    """One reading of a job's progress metrics (None: not reported yet)."""

    at: float
    events_in: int
    lag: int | None
    model_version: int | None


def sample(rest: FlinkRest, job_id: str, vertices: dict[str, str], models: bool = True) -> Sample:
    """Read the metrics once; ``vertices`` maps "source", "user" to vertex ids (see :func:`find_vertices`);
    ``models``: whether the job learns (a feature job has no model version)."""
    events = rest.metrics(job_id, vertices["user"], "rtrec.events_in")
    versions = rest.metrics(job_id, vertices["user"], "rtrec.model_version") if models else {}
    lags = rest.metrics(job_id, vertices["source"], ".pendingRecords") if "source" in vertices else {}
    return Sample(time.monotonic(), int(sum(events.values())),
                  int(sum(lags.values())) if lags else None,
                  int(max(versions.values())) if versions else None)


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtrec-progress", daemon=True)

    def start(self, rest_url: str) -> JobProgress:
        """Follow the job at ``rest_url`` (known once the job's environment chose its REST port)."""
        self.rest = FlinkRest(rest_url)
        if self.enabled:
            self._thread.start()
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
                   bar_format=("{l_bar}{bar}| {n_fmt}/{total_fmt} ev [{elapsed}, {postfix}]" if self.total
                               else "{desc}: {n_fmt} ev [{elapsed}, {postfix}]"))
        vertices = None
        try:
            while not self._stop.wait(self.interval_s):
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
