"""A small client for Flink's REST API (the MiniCluster's, or a cluster's JobManager)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class FlinkRest:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.loads(r.read())

    def answers(self) -> bool:
        try:
            self.get("/overview")
            return True
        except (urllib.error.URLError, OSError):
            return False

    def job_id(self, name: str, timeout_s: float = 60) -> str:
        """Id of the running job called ``name`` (waits for it to appear)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                for job in self.get("/jobs/overview")["jobs"]:
                    if job["name"] == name and job["state"] == "RUNNING":
                        return job["jid"]
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no running job {name!r} at {self.url} after {timeout_s:.0f} s")

    def vertex_id(self, job_id: str, name_part: str) -> str:
        for v in self.get(f"/jobs/{job_id}")["vertices"]:
            if name_part in v["name"]:
                return v["id"]
        raise KeyError(f"no vertex named like {name_part!r} in job {job_id}")

    def metrics(self, job_id: str, vertex_id: str, suffix: str) -> dict[str, float]:
        """Metrics of a vertex (all subtasks) whose id ends with ``suffix``, e.g. ``rtrec.freshness_ms``."""
        names = [m["id"] for m in self.get(f"/jobs/{job_id}/vertices/{vertex_id}/metrics")]
        wanted = [n for n in names if n.endswith(suffix)]
        if not wanted:
            return {}
        values = self.get(f"/jobs/{job_id}/vertices/{vertex_id}/metrics?get={','.join(wanted)}")
        return {m["id"]: float(m["value"]) for m in values}

    def checkpoints(self, job_id: str) -> dict:
        return self.get(f"/jobs/{job_id}/checkpoints")

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def cancel(self, job_id: str) -> None:
        """Cancel the job (no savepoint)."""
        req = urllib.request.Request(f"{self.url}/jobs/{job_id}?mode=cancel", method="PATCH")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def running_jobs(self) -> list[dict]:
        return [j for j in self.get("/jobs/overview")["jobs"] if j["state"] == "RUNNING"]

    def stop_with_savepoint(self, job_id: str, target_dir: str | None = None, timeout_s: float = 300,
                            drain: bool = False) -> str:
        """Take a savepoint and stop the job (sinks commit what they hold); returns the savepoint's path.

        Without ``target_dir`` the cluster's ``state.savepoints.dir`` is used. ``drain``: the sources end
        first, with the final watermark, as a bounded source's end does (every event-time timer fires).
        """
        body: dict = {"drain": drain}
        if target_dir:
            body["targetDirectory"] = target_dir
        trigger = self.post(f"/jobs/{job_id}/stop", body)["request-id"]
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status = self.get(f"/jobs/{job_id}/savepoints/{trigger}")
            if status["status"]["id"] == "COMPLETED":
                op = status.get("operation", {})
                if "failure-cause" in op:
                    raise RuntimeError(f"savepoint of job {job_id} failed: {op['failure-cause'].get('stack-trace', '')[:2000]}")
                return op["location"]
            time.sleep(0.5)
        raise TimeoutError(f"savepoint of job {job_id} not done after {timeout_s:.0f} s")
