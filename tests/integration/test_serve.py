"""Serving-side tools against the real broker (no Flink): rtrec serve, lookup, replay pacing, eval.

Feature and recommendation records are produced in the job's formats by a
transactional producer, as the job's exactly-once sinks write them, including
aborted transactions that must never reach the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest
from confluent_kafka import Producer

from rtrec import topics
from rtrec.cli import main
from rtrec.events import Event
from rtrec.replay import replay
from rtrec.serve import serve
from rtrec.store import ServeStore
from tests.conftest import ROOT, fresh_config, wait_for, write_config
from tests.test_evaluation import PNG, PREDICTIONS, RECOMMENDATIONS

QUIET = lambda _text: None  # noqa: E731


@pytest.fixture
def cfg(kafka, tmp_path):
    c = fresh_config(kafka, "serve")
    c.serve.store_dir = str(tmp_path / "store")
    c.serve.batch_size = 40
    c.serve.lag_interval_ms = 200
    c.serve.port = 0
    return c


class TxWriter:
    """Writes feature and recommendation records in transactions; remembers what was committed, in order."""

    def __init__(self, cfg, name: str):
        self.k = cfg.kafka
        self.p = Producer({"bootstrap.servers": self.k.bootstrap_servers, "transactional.id": f"{name}-{time.time_ns()}",
                           "linger.ms": 5})
        self.p.init_transactions(30)
        self.committed: list[tuple[str, str, bytes]] = []  # (topic, key, value) in production order
        self.seq = 0

    def records(self, tag: str, n: int, users: int = 30, items: int = 20) -> list[tuple[str, str, bytes]]:
        out = []
        for _ in range(n):
            self.seq += 1
            s = self.seq
            if s % 3 == 0:
                user = f"u{(s // 3) % users}"
                out.append((self.k.recommendations_topic, user, orjson.dumps({
                    "user_id": user, "event_id": f"{tag}-{s}", "ts": s, "items": [f"i{s % items}", f"i{s % 7}"],
                    "scores": [0.9, 0.5], "model_version": 1, "feature_ts": s,
                    "request": "candidates" if s % 9 == 0 else "refresh", "tag": tag})))
            else:
                entity, ident = ("user", f"u{s % users}") if s % 3 == 1 else ("item", f"i{s % items}")
                out.append((self.k.features_topic, ident, orjson.dumps({
                    "entity": entity, "id": ident, "version": 1, "event_id": f"{tag}-{s}", "event_ts": s,
                    "events": s, "features": {"seq": s}, "tag": tag})))
        return out

    def _send(self, records):
        for topic, key, value in records:
            self.p.produce(topic, key=key.encode(), value=value)

    def commit(self, records):
        self.p.begin_transaction()
        self._send(records)
        self.p.commit_transaction(30)
        self.committed.extend(records)

    def abort(self, records):
        self.p.begin_transaction()
        self._send(records)
        self.p.flush(30)  # on the broker, then aborted: a read_committed reader must skip them
        self.p.abort_transaction(30)


def expected_state(records) -> dict[tuple[str, str], dict]:
    """What the store must hold after ``records`` (in order): the last value per kind and id."""
    out = {}
    for _topic, _key, value in records:
        d = orjson.loads(value)
        if "entity" in d:
            out[(f"{d['entity']}_features", d["id"])] = d
        else:
            out[("candidates" if d["request"] == "candidates" else "recommendations", d["user_id"])] = d
    return out


def store_state(path) -> dict[tuple[str, str], dict]:
    prefixes = {b"uf:": "user_features", b"if:": "item_features", b"ur:": "recommendations", b"uc:": "candidates"}
    out = {}
    with ServeStore(path, read_only=True) as s:
        for k, v in s.db.items():
            kind = prefixes.get(k[:3])
            if kind:
                out[(kind, k[3:].decode())] = orjson.loads(v)
    return out


def applied(path) -> int:
    with ServeStore(path, read_only=True) as s:
        return s.counters()["applied"]


def committed_below(cfg, offsets: dict[tuple[str, int], int]) -> list[tuple[str, str, bytes]]:
    """The committed records before the stored offsets, in partition order (what the store must reflect)."""
    out = []
    for topic in (cfg.kafka.features_topic, cfg.kafka.recommendations_topic):
        for m in topics.read_topic(cfg.kafka, topic, idle_s=0.5):
            if m.offset() < offsets.get((topic, m.partition()), 0):
                out.append((topic, m.key().decode(), m.value()))
    return out


def test_exactly_once_across_stops_crashes_and_aborted_transactions(cfg):
    path = cfg.resolve_path(cfg.serve.store_dir)
    w = TxWriter(cfg, "serve-eo")
    w.commit(w.records("a", 400))
    w.abort(w.records("aborted", 150, users=45, items=30))  # also ids (u30.., i20..) that exist nowhere else
    w.commit(w.records("b", 400))

    # 1. In-process, stopped part-way (at a batch boundary after 300 records).
    stats = serve(cfg, http=False, max_records=300, log=QUIET)
    with ServeStore(path, read_only=True) as s:
        first = s.counters()["applied"]
        offsets = s.offsets()
    assert 300 <= first < 800 and first == stats.applied_session
    assert len(committed_below(cfg, offsets)) == first

    # 2. A subprocess, killed with SIGKILL while the records keep coming.
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "serve", "--no-http", "--config", str(write_config(cfg))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for i in range(12):
            w.commit(w.records(f"c{i}", 250))
            if i % 4 == 1:
                w.abort(w.records(f"aborted-c{i}", 100, users=45, items=30))
            if i == 7:  # kill it as soon as it has applied something (read-only readers see each batch)
                wait_for(lambda: applied(path) > first, 60, 0.01, "the subprocess to apply records")
                os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    with ServeStore(path, read_only=True) as s:
        killed_at = s.counters()["applied"]
        offsets = s.offsets()
    below = committed_below(cfg, offsets)
    # Whatever the moment of the kill: exactly the records before the stored offsets are applied.
    assert killed_at == len(below) and first < killed_at < len(w.committed), (first, killed_at, len(w.committed))
    assert store_state(path) == expected_state(below)

    # 3. More, then a restart that runs until it has caught up.
    w.commit(w.records("d", 300))
    assert main(["serve", "--no-http", "--until-caught-up", "--config", str(write_config(cfg))]) == 0
    with ServeStore(path, read_only=True) as s:
        c = s.counters()
    assert c["applied"] == len(w.committed) and c["skipped"] == 0  # nothing lost, nothing applied twice
    state = store_state(path)
    assert state == expected_state(w.committed)
    assert not any(str(v.get("tag", "")).startswith("aborted") for v in state.values())
    assert not any(ident in ("u30", "u44", "i20", "i29") for _, ident in state)


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers.get_content_type(), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), e.read()


def test_http_api_health_metrics_and_lookup_while_serving(cfg, capsys):
    w = TxWriter(cfg, "serve-http")
    w.commit(w.records("a", 300))
    w.abort(w.records("aborted", 60, users=45))
    stop, ready = threading.Event(), []
    thread = threading.Thread(target=serve, args=(cfg,), kwargs={"stop": stop, "on_ready": ready.append, "log": QUIET})
    thread.start()
    try:
        wait_for(lambda: ready, 30, 0.05, "the HTTP API")
        port = ready[0]

        def caught_up(n):
            status, _, body = _get(port, "/health")
            h = json.loads(body)
            return status == 200 and h["records_applied"] == n and h["lag"] == 0 and h["status"] == "ok" and h

        h = wait_for(lambda: caught_up(300), 30, 0.1, "serve to apply 300 records")
        assert set(h["lag_by_partition"].values()) == {0} and len(h["offsets"]) == 2 * cfg.kafka.partitions
        want = expected_state(w.committed)

        status, ctype, body = _get(port, "/users/u1/features")
        assert (status, ctype) == (200, "application/json") and orjson.loads(body) == want[("user_features", "u1")]
        status, _, body = _get(port, "/users/u2/recommendations")
        assert status == 200 and orjson.loads(body) == want[("recommendations", "u2")]
        status, _, body = _get(port, "/users/u0/recommendations?request=candidates")
        assert status == 200 and orjson.loads(body) == want[("candidates", "u0")]
        status, _, body = _get(port, "/items/i3/features")
        assert status == 200 and orjson.loads(body) == want[("item_features", "i3")]
        for path in ("/users/u40/features", "/users/nobody/recommendations", "/items/i25/features"):
            status, ctype, body = _get(port, path)  # u40, i25: only in the aborted transaction
            assert (status, ctype) == (404, "application/json") and "error" in orjson.loads(body)

        # The CLI reads the store directly while serve holds it open.
        assert main(["lookup", "user", "u1", "--config", str(write_config(cfg))]) == 0
        got = orjson.loads(capsys.readouterr().out)
        assert got["features"] == want[("user_features", "u1")] and got["recommendations"] == want[("recommendations", "u1")]

        # New commits show up in lookups (and in the counters) without a restart.
        w.commit(w.records("b", 90))
        wait_for(lambda: caught_up(390), 30, 0.1, "serve to apply 90 more")
        want = expected_state(w.committed)
        assert orjson.loads(_get(port, "/users/u1/features")[2]) == want[("user_features", "u1")]

        status, ctype, body = _get(port, "/metrics")
        text = body.decode()
        assert status == 200 and ctype == "text/plain"
        total = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("rtrec_serve_records_applied_total{"))
        assert total == 390
        assert 'rtrec_serve_lookups_total{endpoint="user_features",result="hit"} 2' in text
        assert 'rtrec_serve_lookups_total{endpoint="user_features",result="miss"} 1' in text
        assert "rtrec_serve_consumer_lag_records 0" in text and "rtrec_serve_up 1" in text
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_a_store_of_other_topics_is_refused(cfg, kafka, capsys):
    serve(cfg, http=False, until_caught_up=True, log=QUIET)
    other = fresh_config(kafka, "serve-other")
    other.serve = cfg.serve
    assert main(["serve", "--no-http", "--until-caught-up", "--config", str(write_config(other))]) == 2
    err = capsys.readouterr().err
    assert "rtrec: error: serve store" in err and "rtrec serve --reset" in err
    assert main(["serve", "--no-http", "--until-caught-up", "--reset", "--config", str(write_config(other))]) == 0


def _events(ts: list[int]) -> list[Event]:
    return [Event(f"e{i}", f"u{i % 4}", f"i{i}", "click", t) for i, t in enumerate(ts)]


def _timestamps(cfg, topic: str) -> list[int]:
    return sorted(m.timestamp()[1] for m in topics.read_topic(cfg.kafka, topic, idle_s=0.5))


def test_replay_rate_control(cfg):
    ts = [1_700_000_000_000 + 1000 * i for i in range(60)]
    start = time.perf_counter()
    summary = replay(_events(ts), cfg.kafka, rate=100, progress=False)
    elapsed = time.perf_counter() - start
    assert 0.58 <= elapsed < 2.5 and summary.events == 60
    assert _timestamps(cfg, cfg.kafka.events_topic) == ts  # record timestamp = event time


def test_replay_speedup(cfg):
    # Three hours of event time at 4 x 3600: 0.75 s; two events out of order in between.
    base = 1_700_000_000_000
    ts = [base, base + 3_600_000, base + 1_000, base + 7_200_000, base + 10_800_000, base + 5_000]
    start = time.perf_counter()
    summary = replay(_events(ts), cfg.kafka, speedup=4 * 3600, progress=False)
    elapsed = time.perf_counter() - start
    assert 0.74 <= elapsed < 2.5
    assert summary.event_span_ms == 10_800_000 and "3.0 h of event time at 14400x" in str(summary)
    assert _timestamps(cfg, cfg.kafka.events_topic) == sorted(ts)


def test_eval_from_the_topics(cfg, tmp_path, capsys):
    p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for d in PREDICTIONS:
        p.produce(cfg.kafka.predictions_topic, key=d["user_id"].encode(), value=orjson.dumps(d))
    for d in RECOMMENDATIONS:
        p.produce(cfg.kafka.recommendations_topic, key=d["user_id"].encode(), value=orjson.dumps(d))
    p.flush(30)
    out = tmp_path / "eval"
    args = ["eval", "--config", str(write_config(cfg)), "--output-dir", str(out), "--k", "2", "--idle", "0.5",
            "--min-examples", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "eval: fused" in printed and "MAE 0.250" in printed and "recall@2 0.667" in printed
    m = orjson.loads((out / "metrics.json").read_bytes())
    fused = m["overall"]["models"]["fused"]
    assert fused["rating"]["mae"] == pytest.approx(0.25) and fused["rating"]["rmse"] == pytest.approx(0.125 ** 0.5)
    assert fused["rating"]["auc"] == 1.0 and m["overall"]["models"]["mf"]["rating"]["auc"] == 0.875
    assert m["overall"]["recall"]["hits"] == 2 and m["overall"]["recall"]["positives"] == 3
    assert m["counts"] == {"predictions": 7, "recommendations": 3, "prediction_records": 7, "repeated_records": 0,
                           "repeated_events": 0}
    for name in ("mae_over_time.png", "auc_over_time.png", "recall_over_time.png"):
        data = (out / name).read_bytes()
        assert len(data) > 0 and data.startswith(PNG)
    assert "![mae_over_time](mae_over_time.png)" in (out / "report.md").read_text()


def test_eval_with_nothing_to_read_names_the_fix(cfg, tmp_path, capsys):
    assert main(["eval", "--config", str(write_config(cfg)), "--output-dir", str(tmp_path), "--idle", "0.2"]) == 2
    assert "run the job first" in capsys.readouterr().err
