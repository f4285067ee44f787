"""Serving: records/s materialised by `rtrec serve`, lookups/s from its store, and over HTTP.

    .venv/bin/python benchmarks/serving.py [--records 200000] [--batch-size 5000] [--concurrency 32]

1. Materialise: the job's feature records for MovieLens-100K (a user and an
   item record per rating, computed by the offline feature engine, so the
   values have the real size and shape; repeated a year later with new ids
   beyond 200,000 records) are produced in transactions of 10,000 (as the
   job's exactly-once sink writes them) into a fresh features topic. Then the
   serve materialiser (in-process, no HTTP) consumes them from the beginning
   into an empty store, read_committed, one atomic write per batch with its
   offsets: records/s from the first consume to the last record applied.
2. Direct lookups: random user and item ids read from the store
   (``ServeStore.get_raw``, one thread), with and without decoding the JSON.
3. HTTP: ``rtrec serve`` in a subprocess on that store; an aiohttp client in
   this process keeps ``--concurrency`` requests in flight on
   /users/{id}/features and /items/{id}/features: requests/s and latency.
   Then freshness: one record committed at a time, the time until the HTTP
   API returns it.

Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from benchmarks.common import RESULTS, fresh, movielens_times, write_results  # noqa: E402
from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES  # noqa: E402
from rtrec.features.engine import FeatureEngine  # noqa: E402
from rtrec.serve import Materializer, ServeStats  # noqa: E402
from rtrec.store import ITEM_FEATURES as ITEM_PREFIX  # noqa: E402
from rtrec.store import USER_FEATURES as USER_PREFIX  # noqa: E402
from rtrec.store import ServeStore  # noqa: E402


def feature_records(n: int) -> tuple[list[tuple[bytes, bytes]], list[str], list[str]]:
    """``n`` (key, value) feature records in the job's format, with the user and item ids they cover."""
    events = movielens_times(max(1, -(-n // 200_000)))[: -(-n // 2)]
    engines = {"user": FeatureEngine(USER_FEATURES), "item": FeatureEngine(ITEM_FEATURES)}
    states: dict[tuple[str, str], list] = {}
    out = []
    for e in events:
        for entity, engine in engines.items():
            ident = engine.key(e)
            s = states.get((entity, ident))
            if s is None:
                s = states[(entity, ident)] = engine.new_state()
            engine.update(s, e)
            out.append((ident.encode(), engine.record(ident, s, e)))
    users = sorted({i for (ent, i) in states if ent == "user"})
    items = sorted({i for (ent, i) in states if ent == "item"})
    return out[:n], users, items


def produce(cfg, records, per_transaction: int = 10_000) -> float:
    p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "transactional.id": f"bench-serve-{time.time_ns()}",
                  "linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000})
    p.init_transactions(30)
    start = time.perf_counter()
    for i in range(0, len(records), per_transaction):
        p.begin_transaction()
        for key, value in records[i:i + per_transaction]:
            while True:
                try:
                    p.produce(cfg.kafka.features_topic, key=key, value=value)
                    break
                except BufferError:
                    p.poll(0.05)
        p.commit_transaction(60)
    return time.perf_counter() - start


def materialise(cfg, n: int) -> dict:
    path = cfg.resolve_path(cfg.serve.store_dir)
    shutil.rmtree(path, ignore_errors=True)
    store = ServeStore(path)
    mat = Materializer(cfg, store, ServeStats())
    mat.open()
    cpu0 = time.process_time()
    start = time.perf_counter()
    first = None
    while mat.stats.applied_session < n:
        if mat.step() and first is None:
            first = time.perf_counter()
        if time.perf_counter() - start > 600:
            raise RuntimeError(f"only {mat.stats.applied_session} of {n} records after 600 s")
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    batches = mat.stats.batches
    mat.close()
    store.close()
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "records": n,
        "batch_size": cfg.serve.batch_size,
        "batches": batches,
        "seconds_first_consume_to_last_applied": round(end - start, 3),
        "records_per_s": round(n / (end - start)),
        "records_per_s_after_first_batch": round(n / (end - first)) if first and end > first else None,
        "cpu_s_per_1k_records": round(1000 * cpu / n, 4),
        "store_bytes_on_disk": size,
    }


def direct_lookups(path: Path, users: list[str], items: list[str], n: int) -> dict:
    rng = random.Random(7)
    keys = [(USER_PREFIX, rng.choice(users)) if i % 2 else (ITEM_PREFIX, rng.choice(items)) for i in range(n)]
    out = {}
    with ServeStore(path) as store:
        get = store.get_raw
        for name, decode in (("raw", False), ("decoded", True)):
            start = time.perf_counter()
            hits = 0
            for prefix, ident in keys:
                v = get(prefix, ident)
                if v is not None:
                    hits += 1
                    if decode:
                        orjson.loads(v)
            s = time.perf_counter() - start
            out[f"lookups_per_s_{name}"] = round(n / s)
            out[f"us_per_lookup_{name}"] = round(1e6 * s / n, 2)
            if hits != n:
                raise RuntimeError(f"{n - hits} of {n} lookups missed")
    out["lookups"] = n
    return out


async def http_load(port: int, users, items, n: int, concurrency: int) -> dict:
    import aiohttp

    rng = random.Random(11)
    paths = [f"/users/{rng.choice(users)}/features" if i % 2 else f"/items/{rng.choice(items)}/features"
             for i in range(n)]
    latencies: list[float] = []
    errors = 0
    it = iter(paths)
    base = f"http://127.0.0.1:{port}"

    async def worker(session):
        nonlocal errors
        for path in it:
            t0 = time.perf_counter()
            async with session.get(base + path) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(200):  # warm-up: connections, and the server's first requests
            async with session.get(f"{base}/items/{items[0]}/features") as r:
                await r.read()
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    latencies.sort()
    q = lambda f: round(1000 * latencies[min(len(latencies) - 1, int(f * len(latencies)))], 2)  # noqa: E731
    return {"requests": n, "concurrency": concurrency, "errors": errors, "requests_per_s": round(n / seconds),
            "latency_ms_p50": q(0.5), "latency_ms_p99": q(0.99), "latency_ms_max": round(1000 * latencies[-1], 2)}


def freshness(cfg, port: int, samples: int) -> dict:
    """Commit one feature record at a time; time until GET returns it."""
    import urllib.error
    import urllib.request

    p = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "transactional.id": f"bench-fresh-{time.time_ns()}"})
    p.init_transactions(30)
    times = []
    for i in range(samples):
        ident = f"fresh-{i}"
        value = orjson.dumps({"entity": "user", "id": ident, "version": 1, "event_id": ident, "event_ts": i,
                              "events": 1, "features": {}})
        p.begin_transaction()
        p.produce(cfg.kafka.features_topic, key=ident.encode(), value=value)
        p.commit_transaction(30)
        t0 = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/users/{ident}/features", timeout=5):
                    break
            except urllib.error.HTTPError:
                time.sleep(0.002)
            if time.perf_counter() - t0 > 30:
                raise RuntimeError(f"{ident} not visible after 30 s")
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"samples": samples, "commit_to_visible_ms_p50": round(1000 * times[len(times) // 2], 1),
            "commit_to_visible_ms_max": round(1000 * times[-1], 1)}


def serve_subprocess(cfg) -> tuple[subprocess.Popen, int]:
    import yaml

    config_file = RESULTS.parent / "out" / "serving.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "serve", "--config", str(config_file), "--port", "0"],
                            cwd=RESULTS.parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "HTTP API at http://" in line:
            return proc, int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("rtrec serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000, help="feature records to materialise")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[5_000], help="serve.batch_size values to time")
    ap.add_argument("--lookups", type=int, default=200_000, help="direct store lookups")
    ap.add_argument("--http-requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32, help="HTTP requests in flight")
    ap.add_argument("--freshness-samples", type=int, default=20)
    args = ap.parse_args()

    cfg = fresh("bench.serve.")
    cfg.serve.store_dir = str(RESULTS.parent / "out" / "serve-store")
    records, users, items = feature_records(args.records)
    mean_bytes = sum(len(v) for _, v in records) / len(records)
    seconds = produce(cfg, records)
    print(f"produced {len(records):,} feature records ({mean_bytes:.0f} B mean) in {seconds:.1f} s", flush=True)

    runs = []
    for b in args.batch_size:
        cfg.serve.batch_size = b
        r = materialise(cfg, len(records))
        print(r, flush=True)
        runs.append(r)
    cfg.serve.batch_size = args.batch_size[-1]
    path = cfg.resolve_path(cfg.serve.store_dir)
    direct = direct_lookups(path, users, items, args.lookups)
    print(direct, flush=True)

    proc, port = serve_subprocess(cfg)
    try:
        http = asyncio.run(http_load(port, users, items, args.http_requests, args.concurrency))
        print(http, flush=True)
        fresh_ = freshness(cfg, port, args.freshness_samples)
        print(fresh_, flush=True)
    finally:
        proc.terminate()
        proc.wait(30)

    payload = {
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:]),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "feature_records": {"count": len(records), "mean_value_bytes": round(mean_bytes), "users": len(users),
                            "items": len(items), "produce_seconds": round(seconds, 2)},
        "materialise": runs,
        "direct_lookups": direct,
        "http_lookups": http,
        "freshness": fresh_,
    }
    print(write_results("serving", payload))


if __name__ == "__main__":
    main()
