"""`WS /ws/live`: snapshot, scoped and viewport-filtered position batches fed by ingest's one
Redis PUBLISH per batch, alerts in scope, several API processes, and a stalled screen that
neither hurts the others nor grows the server's memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
import redis.asyncio as aredis
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import api.live
from api import live
from api.app import create_app
from geofence.rules import RuleEvent
from ingest.live import LivePosition, LivePublisher
from ingest.state import DeviceState
from tests.integration.api_world import PASSWORD, seed
from tests.integration.conftest import eventually
from tests.integration.receivers import free_port
from tether import channels
from tether.config import Settings


@contextlib.asynccontextmanager
async def api_server(settings: Settings) -> AsyncIterator[tuple[str, live.LiveHub]]:
    """One API process (create_app, with the live map and pages) on a free port."""
    app = create_app(settings)
    hub = app.state.live
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(srv.serve(), name="test-live-api")
    try:
        await eventually(lambda: srv.started and hub.subscribed.is_set(), 15, "live hub up")
        yield f"http://127.0.0.1:{port}", hub
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 15)


async def token(base: str, user: str) -> str:
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/api/auth/token", data={"username": user, "password": PASSWORD})
        r.raise_for_status()
        return r.json()["access_token"]


async def screen(base: str, user: str) -> tuple[ClientConnection, dict]:
    ws = await connect(f"{base.replace('http', 'ws')}/ws/live?token={await token(base, user)}",
                       max_size=2**24)
    snap = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert snap["type"] == "snapshot"
    return ws, snap


async def positions_until(ws: ClientConnection, done, within: float = 5.0) -> list[dict]:
    """Position items received until `done(items so far)` holds."""
    items: list[dict] = []
    deadline = time.monotonic() + within
    while not done(items):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got {items[-5:]}")
        msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        if msg["type"] == "positions":
            items += msg["items"]
    return items


def pos(sid: int, dev: str, lat: float = 31.2, lon: float = 121.4, ts: float | None = None,
        acc: float | None = 7.0) -> LivePosition:
    return LivePosition(sid, dev, lat, lon, ts or time.time(), acc)


@pytest.fixture
def world(db: psycopg.Connection) -> dict:
    ids = seed(db)
    ids["user"] = lambda name: f"{name}-{ids['tag']}"
    return ids


@pytest.fixture
async def pub(settings: Settings) -> AsyncIterator[LivePublisher]:
    state = DeviceState(settings.redis_url, settings.redis_prefix)
    yield LivePublisher(state)
    await state.close()


@pytest.mark.timeout(60)
async def test_snapshot_and_positions_are_scoped(settings, world, pub) -> None:
    async with api_server(settings) as (base, _):
        off_a, snap_a = await screen(base, world["user"]("offA"))
        city, snap_city = await screen(base, world["user"]("cmdCity"))
        assert {s["id"] for s in snap_a["subjects"]} == {world["subj_countyA"]}
        assert {z["id"] for z in snap_a["zones"]} == {world["zone_countyA"]}
        assert {a["id"] for a in snap_a["alerts"]} == {world["alert_countyA"]}
        assert snap_a["subjects"][0]["last_position"]["device_id"] == world["dev_countyA"]
        assert {world[f"subj_{w}"] for w in ("city", "countyA", "countyB")} <= {
            s["id"] for s in snap_city["subjects"]}
        sent = {w: pos(world[f"subj_{w}"], world[f"dev_{w}"], lat=30 + i)
                for i, w in enumerate(("city", "countyA", "countyB"))}
        assert await pub.publish(list(sent.values())) >= 1
        got_city = await positions_until(city, lambda it: len(it) >= 3)
        got_a = await positions_until(off_a, lambda it: len(it) >= 1)
        with pytest.raises(TimeoutError):  # nothing of the city or county B follows
            await positions_until(off_a, lambda it: len(it) >= 1, within=1.0)
        assert [i["subject_id"] for i in got_a] == [world["subj_countyA"]]
        a = got_a[0]
        assert set(a) == {"subject_id", "device_id", "lat", "lon", "ts", "acc"}
        assert (a["device_id"], a["lat"], a["acc"]) == (world["dev_countyA"], 31.0, 7.0)
        assert datetime.fromisoformat(a["ts"]).tzinfo is not None
        assert {i["subject_id"] for i in got_city} == {s.subject_id for s in sent.values()}
        await off_a.close()
        await city.close()


@pytest.mark.timeout(60)
async def test_viewport_filters_and_refills_when_it_moves(settings, world, pub) -> None:
    async with api_server(settings) as (base, _):
        ws, _ = await screen(base, world["user"]("offA"))
        sid, dev = world["subj_countyA"], world["dev_countyA"]
        await ws.send(json.dumps({"type": "viewport", "bbox": [0, 0, 10, 10]}))
        await ws.send("not json")  # hostile input is ignored, not fatal
        await ws.send(json.dumps({"type": "viewport", "bbox": ["x", 1]}))
        await asyncio.sleep(0.3)
        await pub.publish([pos(sid, dev, lat=31.25, lon=121.45)])
        with pytest.raises(TimeoutError):
            await positions_until(ws, lambda it: len(it) >= 1, within=1.0)
        # the view moves over the subject: its newest position comes at once, from memory
        await ws.send(json.dumps({"type": "viewport", "bbox": [121, 31, 122, 32]}))
        got = await positions_until(ws, lambda it: len(it) >= 1)
        assert (got[0]["lat"], got[0]["lon"]) == (31.25, 121.45)
        await ws.close()


@pytest.mark.timeout(60)
async def test_a_screen_gets_the_newest_position_per_subject_conflated(settings, world,
                                                                       pub) -> None:
    async with api_server(settings) as (base, _):
        ws, _ = await screen(base, world["user"]("offA"))
        sid, dev = world["subj_countyA"], world["dev_countyA"]
        t0 = time.time()
        for i in range(200):  # 200 batches published faster than the 4-a-second flush
            await pub.publish([pos(sid, dev, lat=31 + i * 1e-4, ts=t0 + i)])
        # a late upload (older than what the map shows) never moves the marker back
        await pub.publish([pos(sid, dev, lat=10.0, ts=t0 - 100)])
        got = await positions_until(ws, lambda it: bool(it) and it[-1]["lat"] == 31.0199)
        assert len(got) < 50, f"{len(got)} positions sent for 200 published: not conflated"
        times = [datetime.fromisoformat(i["ts"]).timestamp() for i in got]
        assert times == sorted(times)
        with pytest.raises(TimeoutError):
            await positions_until(ws, lambda it: len(it) >= 1, within=0.8)
        await ws.close()


@pytest.mark.timeout(60)
async def test_two_api_processes_serve_the_same_feed(settings, world, pub) -> None:
    async with api_server(settings) as (b1, _), api_server(settings) as (b2, _):
        w1, _ = await screen(b1, world["user"]("offA"))
        w2, _ = await screen(b2, world["user"]("cmdA"))
        assert await pub.publish([pos(world["subj_countyA"], world["dev_countyA"])]) >= 2
        for ws in (w1, w2):
            got = await positions_until(ws, lambda it: len(it) >= 1)
            assert got[0]["subject_id"] == world["subj_countyA"]
            await ws.close()


@pytest.mark.timeout(60)
async def test_hostile_batches_are_counted_and_the_feed_goes_on(settings, world, pub) -> None:
    async with api_server(settings) as (base, _):
        ws, _ = await screen(base, world["user"]("offA"))
        r = aredis.Redis.from_url(settings.redis_url)
        before = api.live.received.labels("rejected")._value.get()
        for bad in (b"not json", b'{"v":1,"items":[[1,"d",91,0,0,null]]}', b"\xff" * 100,
                    json.dumps({"v": 1, "items": [["x"]]}).encode()):
            await r.publish(channels.live_positions(settings.redis_prefix), bad)
        await r.aclose()
        await pub.publish([pos(world["subj_countyA"], world["dev_countyA"])])
        await positions_until(ws, lambda it: len(it) >= 1)
        assert api.live.received.labels("rejected")._value.get() - before == 4
        await ws.close()


@pytest.mark.timeout(60)
async def test_alerts_in_scope_reach_the_map(settings, world, db) -> None:
    async with api_server(settings) as (base, _):
        a, _ = await screen(base, world["user"]("offA"))
        b, _ = await screen(base, world["user"]("offB"))
        with db.transaction():
            aid = db.execute("INSERT INTO alerts (type, severity, subject_id, device_id) VALUES"
                             " ('strap_tamper', 'critical', %s, %s) RETURNING id",
                             (world["subj_countyA"], world["dev_countyA"])).fetchone()[0]
            db.execute("SELECT tether_notify(%s, 'opened', false)", (aid,))
        msg = json.loads(await asyncio.wait_for(a.recv(), 5))
        while msg["type"] != "alert":
            msg = json.loads(await asyncio.wait_for(a.recv(), 5))
        assert (msg["event"], msg["alert"]["id"]) == ("opened", aid)
        with contextlib.suppress(TimeoutError):
            while True:  # heartbeats may come; an alert must not
                other = json.loads(await asyncio.wait_for(b.recv(), 1))
                assert other["type"] != "alert", other
        await a.close()
        await b.close()


@pytest.mark.timeout(60)
async def test_a_disabled_user_loses_the_map(settings, world, db) -> None:
    settings = settings.model_copy(update={"session_recheck_s": 0.5})
    async with api_server(settings) as (base, _):
        ws, _ = await screen(base, world["user"]("offA"))
        db.execute("UPDATE users SET disabled = true WHERE id = %s", (world["offA"],))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1008


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


@pytest.mark.timeout(120)
async def test_a_stalled_screen_hurts_no_one_and_memory_stays_bounded(
        settings, world, db, pub, monkeypatch) -> None:
    monkeypatch.setattr(api.live, "SEND_TIMEOUT_S", 3.0)
    n = 2000
    rows = db.execute("INSERT INTO subjects (name, jurisdiction_id) SELECT 'bulk ' || g, %s"
                      " FROM generate_series(1, %s) g RETURNING id",
                      (world["countyA"], n)).fetchall()
    sids = [r[0] for r in rows]
    async with api_server(settings) as (base, hub):
        await eventually(lambda: all(s in hub.paths for s in sids), 10, "paths reloaded")
        tok = await token(base, world["user"]("offA"))
        loop = asyncio.get_running_loop()
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        await loop.sock_connect(stalled, ("127.0.0.1", int(base.rsplit(":", 1)[1])))
        await loop.sock_sendall(stalled, (
            f"GET /ws/live?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(loop.sock_recv(stalled, 12), 5)
        assert head == b"HTTP/1.1 101"  # upgraded; from now on it never reads
        await eventually(lambda: len(hub.clients) == 1, 10, "stalled screen registered")
        others = [(await screen(base, world["user"](u)))[0] for u in ("offA", "cmdCity")]
        base_rss, lag, peak_pending = _rss_mb(), [], 0
        slow_before = api.live.closed_slow._value.get()
        t0 = time.time()
        for i in range(150):  # 150 batches x 2,000 moving subjects: ~40 MB of positions
            ts = t0 + i
            sent = time.monotonic()
            await pub.publish([pos(s, f"d{s}", lat=31 + (i % 100) * 1e-4, lon=121.4 + k * 1e-5,
                                   ts=ts) for k, s in enumerate(sids)])
            if i % 10 == 0:  # the others see this batch's positions promptly
                for ws in others:
                    await positions_until(ws, lambda it, ts=ts: any(
                        datetime.fromisoformat(x["ts"]).timestamp() >= ts - 1e-3 for x in it), 5)
                lag.append(time.monotonic() - sent)
            peak_pending = max(peak_pending, *(len(c.pending) for c in hub.clients))
            await asyncio.sleep(0.02)
        grew = _rss_mb() - base_rss
        # the stalled screen is closed once a send is blocked for SEND_TIMEOUT_S
        await eventually(lambda: len(hub.clients) == len(others), 15, "stalled screen closed")
        assert api.live.closed_slow._value.get() == slow_before + 1  # closed for not reading
        stalled.close()
        for ws in others:
            await ws.close()
    assert peak_pending <= n  # conflated: at most one pending position per subject
    assert max(lag) < 2.0, lag
    assert grew < 60, f"server RSS grew {grew:.0f} MB"  # the published volume is ~150 MB
    print(f"stalled-screen run: lag p_max {max(lag) * 1000:.0f} ms, RSS +{grew:.1f} MB,"
          f" peak pending {peak_pending}")


@pytest.mark.timeout(60)
async def test_provisional_alerts_reach_screens_and_phones_in_scope(settings, world,
                                                                     pub) -> None:
    """While the database is away, ingest publishes what it judged (`ingest/ahead.py`): the
    map and the phone of an officer in scope get `alert_provisional`, another county's do not,
    and hostile messages on the channel are counted and skipped."""
    async with api_server(settings) as (base, _):
        a, _ = await screen(base, world["user"]("offA"))
        b, _ = await screen(base, world["user"]("offB"))
        phone = await connect(f"{base.replace('http', 'ws')}/ws/alerts?token="
                              f"{await token(base, world['user']('offA'))}")
        r = aredis.Redis.from_url(settings.redis_url)
        before = api.live.received.labels("rejected")._value.get()
        for bad in (b"{", b'{"v":1,"items":[{"event":"maybe","type":"x","subject_id":1,'
                          b'"at":"now"}]}', json.dumps({"v": 1, "items": 3}).encode()):
            await r.publish(channels.live_alerts(settings.redis_prefix), bad)
        await r.aclose()
        at = datetime.now(UTC)
        await pub.publish_alerts([RuleEvent("open", "exclusion_entry", world["subj_countyA"], at,
                                            device_id=world["dev_countyA"], zone_id=7,
                                            confidence="confident")])

        async def provisional(ws: ClientConnection) -> dict:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg["type"] == "alert_provisional":
                    return msg["alert"]

        for ws in (a, phone):
            got = await provisional(ws)
            assert (got["event"], got["type"], got["subject_id"], got["id"], got["provisional"],
                    got["at"]) == ("opened", "exclusion_entry", world["subj_countyA"], None,
                                   True, at.isoformat())
        with pytest.raises(TimeoutError):  # county B's officer sees nothing of county A
            await asyncio.wait_for(provisional(b), 1.0)
        assert api.live.received.labels("rejected")._value.get() - before == 3
        for ws in (a, b, phone):
            await ws.close()
