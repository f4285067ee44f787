"""The serve store and HTTP API without Kafka: atomic batches, offsets, last-write-wins, read-only readers."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest

from rtrec.cli import main
from rtrec.config import ConfigError, load_config
from rtrec.serve import ServeStats, health, make_app, metrics_text
from rtrec.store import Record, ServeStore, StoreError, classify


def feat(entity: str, ident: str, n: int) -> bytes:
    return orjson.dumps({"entity": entity, "id": ident, "version": 1, "event_id": f"e{n}", "event_ts": n,
                         "events": n, "features": {"n": n}})


def rec(user: str, items: list[str], ts: int, request: str = "refresh") -> bytes:
    return orjson.dumps({"user_id": user, "event_id": f"e{ts}", "ts": ts, "items": items,
                         "scores": [1.0] * len(items), "model_version": 3, "feature_ts": ts, "request": request})


def F(partition: int, offset: int, value: bytes) -> Record:
    return Record("features", "f", partition, offset, value)


def R(partition: int, offset: int, value: bytes) -> Record:
    return Record("recommendations", "r", partition, offset, value)


@pytest.fixture
def store(tmp_path):
    s = ServeStore(tmp_path / "store")
    yield s
    s.close()


def test_classify_keys_by_entity_and_request():
    assert classify("features", feat("user", "42", 1)) == ("user_features", b"uf:42")
    assert classify("features", feat("item", "42", 1)) == ("item_features", b"if:42")
    assert classify("recommendations", rec("42", ["a"], 1)) == ("recommendations", b"ur:42")
    assert classify("recommendations", rec("42", ["a"], 1, "candidates")) == ("candidates", b"uc:42")
    for bad in (None, b"", b"[1]", b'{"entity": "shop", "id": "1"}', b'{"user_id": "1"}', b"\xff"):
        assert classify("features", bad) is None and classify("recommendations", bad) is None


def test_last_write_wins_in_offset_order_and_offsets_advance(store):
    applied = store.apply([F(0, 0, feat("user", "u", 1)), F(0, 1, feat("user", "u", 2)),
                           F(1, 0, feat("item", "u", 9)), R(0, 5, rec("u", ["a", "b"], 7))])
    assert applied == (4, 0)
    assert store.user_features("u")["features"] == {"n": 2}
    assert store.item_features("u")["features"] == {"n": 9}  # same id, other entity: its own entry
    assert store.recommendations("u")["items"] == ["a", "b"]
    assert store.offsets() == {("f", 0): 2, ("f", 1): 1, ("r", 0): 6}
    store.apply([F(0, 2, feat("user", "u", 1))])  # an older snapshot later in the partition still wins
    assert store.user_features("u")["features"] == {"n": 1}
    c = store.counters()
    assert (c["applied"], c["user_features"], c["item_features"], c["recommendations"]) == (5, 3, 1, 1)


def test_candidates_rankings_do_not_replace_the_top_k(store):
    store.apply([R(0, 0, rec("u", ["a"], 1)), R(0, 1, rec("u", ["x", "y"], 2, "candidates"))])
    assert store.recommendations("u")["items"] == ["a"]
    assert store.recommendations("u", "candidates")["items"] == ["x", "y"]


def test_unusable_records_are_skipped_but_their_offsets_count(store):
    assert store.apply([F(0, 0, b"garbage"), F(0, 1, None)]) == (0, 2)
    assert store.offsets() == {("f", 0): 2}
    assert store.counters()["skipped"] == 2 and store.counters()["applied"] == 0


def test_positions_skip_markers_and_never_move_back(store):
    store.apply([F(0, 0, feat("user", "u", 1))], positions={("f", 0): 2, ("f", 1): 7, ("f", 2): -1001})
    assert store.offsets() == {("f", 0): 2, ("f", 1): 7}
    store.apply([], positions={("f", 1): 3})
    assert store.offsets()[("f", 1)] == 7
    assert store.apply([], positions={("f", 1): 7}) == (0, 0)


def test_state_survives_reopening(tmp_path):
    with ServeStore(tmp_path / "s") as s:
        s.apply([F(3, 10, feat("user", "u", 1)), R(2, 4, rec("u", ["a"], 1))])
    with ServeStore(tmp_path / "s") as s:
        assert s.offsets() == {("f", 3): 11, ("r", 2): 5}
        assert s.counters()["applied"] == 2
        s.apply([F(3, 11, feat("user", "u", 2))])
        assert s.counters()["applied"] == 3


def test_read_only_reader_beside_the_writer(store, tmp_path):
    """`rtrec lookup` opens the store read-only while `rtrec serve` writes it; it sees every applied batch."""
    store.apply([F(0, 0, feat("user", "7", 1))])
    with ServeStore(store.path, read_only=True) as ro:
        assert ro.user_features("7")["features"] == {"n": 1}
        assert ro.offsets() == {("f", 0): 1}
    store.apply([F(0, 1, feat("user", "7", 2)), R(0, 0, rec("7", ["a"], 1))])  # not flushed: in the WAL only
    # Another process, as the CLI would be.
    code = ("import sys; from rtrec.store import ServeStore; s = ServeStore(sys.argv[1], read_only=True); "
            "print(s.lookup('user', '7')['features']['features']['n'], s.counters()['applied'])")
    out = subprocess.run([sys.executable, "-c", code, str(store.path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "3"]


def test_lookup_command(store, capsys):
    store.apply([F(0, 0, feat("user", "7", 1)), R(0, 0, rec("7", ["a", "b"], 1)), F(1, 0, feat("item", "i", 4))])
    assert main(["lookup", "user", "7", "--store", str(store.path)]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["user_id"] == "7" and out["features"]["features"] == {"n": 1}
    assert out["recommendations"]["items"] == ["a", "b"] and out["candidates"] is None
    assert main(["lookup", "item", "i", "--store", str(store.path)]) == 0
    assert orjson.loads(capsys.readouterr().out)["features"]["features"] == {"n": 4}
    assert main(["lookup", "item", "nope", "--store", str(store.path)]) == 1
    assert "unknown item 'nope'" in orjson.loads(capsys.readouterr().out)["error"]


def test_missing_or_locked_store_names_the_fix(tmp_path, store, capsys):
    assert main(["lookup", "user", "1", "--store", str(tmp_path / "none")]) == 2
    assert "run `rtrec serve` first" in capsys.readouterr().err
    with pytest.raises(StoreError, match="open in another process"):
        ServeStore(store.path)


def test_serve_config_defaults_and_validation():
    cfg = load_config()
    assert (cfg.serve.host, cfg.serve.port) == ("127.0.0.1", 8090)
    assert cfg.serve.store_dir.startswith("var/serve") and cfg.serve.batch_size > 0
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(overrides=["serve.batch_size=0"])


def _http(store: ServeStore, stats: ServeStats, requests: list[str]) -> list[tuple[int, str, bytes]]:
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        out = []
        async with TestClient(TestServer(make_app(store, stats))) as client:
            for path in requests:
                r = await client.get(path)
                out.append((r.status, r.content_type, await r.read()))
        return out

    return asyncio.run(go())


def test_http_api(store):
    store.apply([F(0, 0, feat("user", "7", 1)), F(0, 1, feat("user", "7", 2)), F(1, 0, feat("item", "i 1", 4)),
                 R(0, 0, rec("7", ["a", "b"], 1)), R(0, 1, rec("7", ["c"], 2, "candidates"))])
    stats = ServeStats(end_offsets={("f", 0): 2, ("f", 1): 3}, positions={("f", 0): 2, ("f", 1): 1},
                       caught_up_once=True)
    got = _http(store, stats, ["/users/7/features", "/users/7/recommendations",
                               "/users/7/recommendations?request=candidates", "/items/i%201/features",
                               "/users/8/recommendations", "/items/x/features", "/users/7/recommendations?request=x",
                               "/nope", "/health", "/metrics"])
    (s1, t1, b1), (s2, _, b2), (s3, _, b3), (s4, _, b4), (s5, t5, b5), (s6, _, b6), (s7, _, _), \
        (s8, t8, b8), (s9, _, b9), (s10, t10, b10) = got
    assert (s1, t1) == (200, "application/json") and orjson.loads(b1)["features"] == {"n": 2}
    assert s2 == 200 and orjson.loads(b2)["items"] == ["a", "b"]
    assert s3 == 200 and orjson.loads(b3)["items"] == ["c"]
    assert s4 == 200 and orjson.loads(b4)["id"] == "i 1"
    assert (s5, t5) == (404, "application/json")
    assert orjson.loads(b5) == {"error": "no recommendations for user '8'", "user_id": "8"}
    assert s6 == 404 and orjson.loads(b6)["item_id"] == "x"
    assert s7 == 400
    assert (s8, t8) == (404, "application/json") and "error" in orjson.loads(b8)
    h = orjson.loads(b9)
    assert s9 == 200 and h["status"] == "ok" and h["records_applied"] == 5 and h["lag"] == 2
    assert h["lag_by_partition"] == {"f/0": 0, "f/1": 2} and h["offsets"] == {"f/0": 2, "f/1": 1, "r/0": 2}
    text = b10.decode()
    assert s10 == 200 and t10 == "text/plain"
    assert 'rtrec_serve_records_applied_total{kind="user_features"} 2' in text
    assert 'rtrec_serve_lookups_total{endpoint="user_recommendations",result="hit"} 1' in text
    assert 'rtrec_serve_lookups_total{endpoint="user_recommendations",result="miss"} 1' in text
    assert 'rtrec_serve_consumer_lag{topic="f",partition="1"} 2' in text
    assert "rtrec_serve_consumer_lag_records 2" in text


def test_health_reports_a_failed_consumer(store):
    status, body = health(store, ServeStats(error="KafkaException: boom"))
    assert status == 503 and body["status"] == "failed" and "boom" in body["error"]
    assert "rtrec_serve_up 0" in metrics_text(store, ServeStats(error="x"))


@pytest.mark.parametrize("command", [["serve", "--no-http"], ["eval"]])
def test_no_broker_names_the_fix(command, tmp_path, capsys):
    args = [*command, "--bootstrap-servers", "127.0.0.1:9", "--set", f"serve.store_dir={tmp_path / 's'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no Kafka broker at 127.0.0.1:9" in err and "make kafka-up" in err


TOKEN = "tok-3f9a-not-for-logs"


def _real_http(app, requests: list[tuple[str, dict]]) -> list[tuple[int, dict, bytes]]:
    """Serve ``app`` on a real loopback socket and send ``requests`` (path, headers) with urllib."""
    import threading
    import urllib.error
    import urllib.request

    from aiohttp import web

    ready, done = threading.Event(), threading.Event()
    port: list[int] = []

    async def run():
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port.append(runner.addresses[0][1])
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.02)
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    out = []
    try:
        for path, headers in requests:
            req = urllib.request.Request(f"http://127.0.0.1:{port[0]}{path}", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    out.append((r.status, dict(r.headers), r.read()))
            except urllib.error.HTTPError as e:
                out.append((e.code, dict(e.headers), e.read()))
    finally:
        done.set()
        thread.join(10)
    return out


def test_http_api_with_a_bearer_token_answers_401_without_it(store):
    store.apply([F(0, 0, feat("user", "7", 1))], {})
    app = make_app(store, ServeStats(caught_up_once=True), TOKEN)
    got = _real_http(app, [
        ("/users/7/features", {}),
        ("/users/7/features", {"Authorization": "Bearer wrong"}),
        ("/users/7/features", {"Authorization": f"Basic {TOKEN}"}),
        ("/health", {}),
        ("/nope", {}),
        ("/users/7/features", {"Authorization": f"Bearer {TOKEN}"}),
        ("/metrics", {"Authorization": f"bearer {TOKEN}"}),
    ])
    for status, headers, body in got[:5]:
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "Bearer <token>" in orjson.loads(body)["error"] and TOKEN not in body.decode()
    assert got[5][0] == 200 and orjson.loads(got[5][2])["features"] == {"n": 1}
    assert got[6][0] == 200


def test_http_api_without_a_token_on_loopback_needs_none(store):
    assert [s for s, _, _ in _real_http(make_app(store, ServeStats()), [("/health", {})])] == [200]


def test_serve_beyond_loopback_needs_a_token(tmp_path, monkeypatch, capsys):
    from rtrec.serve import bearer_token

    with pytest.raises(ConfigError, match="serve.host='0.0.0.0' opens the HTTP API to other machines"):
        load_config(overrides=["serve.host=0.0.0.0"])
    assert main(["serve", "--host", "0.0.0.0", "--store", str(tmp_path / "s")]) == 2
    assert "serve.token_env" in capsys.readouterr().err
    cfg = load_config(overrides=["serve.host=0.0.0.0", "serve.token_env=RTREC_SERVE_TOKEN"])
    with pytest.raises(ConfigError, match="serve.token_env: the environment variable RTREC_SERVE_TOKEN is not set"):
        bearer_token(cfg)
    monkeypatch.setenv("RTREC_SERVE_TOKEN", TOKEN)
    assert bearer_token(cfg) == TOKEN and TOKEN not in repr(cfg)
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert bearer_token(load_config(overrides=["serve.host='::'", f"serve.token_file={f}"])) == TOKEN
