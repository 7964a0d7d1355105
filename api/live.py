"""`WS /ws/live` (contract §3): the command-center map's feed, and the hub behind it.

Ingest publishes each committed batch's positions on one Redis channel (`ingest/live.py`,
`tether/channels.py`);
every API process subscribes and fans them out to its own screens, so any process serves any
screen. Per screen: a snapshot (subjects in scope with their last position, zones, open
alerts), then `positions` batches at most every `FLUSH_S`, filtered by the user's jurisdiction
(a subject -> jurisdiction path cache, reloaded on `NOTIFY tether_world`) and by the screen's
viewport; alert changes come from the process's `AlertHub` (PostgreSQL LISTEN), scoped alike.

Bounded per screen, with named overflow rules:
- positions waiting to be sent: one per subject, the newest (conflation); beyond
  `MAX_PENDING` subjects the entry waiting longest is dropped ("keep the newest");
- a send blocked `SEND_TIMEOUT_S` (the screen stopped reading and the socket buffers are full)
  closes the socket 1013: the screen reconnects and gets a fresh snapshot;
- alerts: the AlertHub's queue rule (full queue: close 1013, resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import redis.asyncio as redis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from api import provisional
from api.settings import ApiSettings
from api.store import ApiStore, Principal, Unavailable, reads
from api.store import live as store_live
from api.ws import AlertHub, Client, accept, serve_socket
from tether import channels, logs
from tether.retry import Backoff
from tether.supervise import Health, supervised

log = logs.get("api.live")
FLUSH_S = 0.25  # positions batched per screen: at most 4 messages a second
HEARTBEAT_S = 15.0  # below common proxy idle timeouts (60 s)
MAX_PENDING = 100_000  # subjects waiting per screen; overflow: drop the longest-waiting
SEND_TIMEOUT_S = 20.0  # a screen not reading for this long is closed (1013)
SNAPSHOT_LIMIT = 100_000
WORLD_DEBOUNCE_S = 0.3  # a burst of enrolments reloads the path cache once

received = Counter("tether_live_batches_total", "position batches from Redis", ["outcome"])
screens = Gauge("tether_live_screens", "open /ws/live sockets in this process")
closed_slow = Counter("tether_live_slow_closed_total", "screens closed for not reading")
dropped = Counter("tether_live_pending_dropped_total", "positions dropped by MAX_PENDING")

Lat = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Lon = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Item = tuple[int, Annotated[str, msgspec.Meta(max_length=64)], Lat, Lon, float, float | None]


class _Batch(msgspec.Struct):
    v: int
    items: list[Item]


_decode = msgspec.json.Decoder(_Batch).decode


@dataclass(slots=True)
class _Pos:
    ts: float
    lat: float
    lon: float
    frag: str  # the item's JSON, built once per process, shared by every screen


def _frag(it: Item) -> str:
    sid, dev, lat, lon, ts, acc = it
    return json.dumps({"subject_id": sid, "device_id": dev, "lat": lat, "lon": lon,
                       "ts": datetime.fromtimestamp(ts, UTC).isoformat(), "acc": acc},
                      separators=(",", ":"))


def _bbox(v: object) -> tuple[float, float, float, float] | None:
    """A client's viewport, or None (everything); raises ValueError when malformed."""
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 4 or not all(
            isinstance(x, int | float) and math.isfinite(x) for x in v):
        raise ValueError("bbox must be [min_lon, min_lat, max_lon, max_lat]")
    return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))


@dataclass(eq=False)
class LiveClient:
    who: Principal
    bbox: tuple[float, float, float, float] | None = None
    pending: dict[int, _Pos] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0
    dropped: int = 0

    def sees(self, path: tuple[int, ...]) -> bool:
        return self.who.scope is None or self.who.scope in path

    def in_view(self, lat: float, lon: float) -> bool:
        if self.bbox is None:
            return True
        w, s, e, n = self.bbox
        # min_lon > max_lon: a viewport across the antimeridian
        return s <= lat <= n and (w <= lon <= e if w <= e else lon >= w or lon <= e)

    def offer(self, sid: int, p: _Pos) -> None:
        old = self.pending.get(sid)
        if old is not None:
            if p.ts >= old.ts:
                self.pending[sid] = p  # conflation: the newest position per subject
            return
        if len(self.pending) >= MAX_PENDING:  # overflow rule: keep the newest
            self.pending.pop(next(iter(self.pending)))
            self.dropped += 1
            dropped.inc()
        self.pending[sid] = p
        self.wake.set()

    def take(self) -> list[str]:
        items, self.pending = self.pending, {}
        return [p.frag for p in items.values()]


class LiveHub:
    def __init__(self, settings: ApiSettings, store: ApiStore, alerts: AlertHub) -> None:
        self.settings, self.store, self.alerts = settings, store, alerts
        self.paths: dict[int, tuple[int, ...]] = {}
        self.latest: dict[int, _Pos] = {}  # newest per known subject, for viewport changes
        self.clients: set[LiveClient] = set()
        self.subscribed = asyncio.Event()
        self.world_changed = asyncio.Event()

    async def run(self) -> None:
        await self.reload_paths()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._positions(), name="live-positions")
            tg.create_task(self._world(), name="live-world-listen")
            tg.create_task(self._reloader(), name="live-path-reload")

    async def reload_paths(self) -> None:
        async with self.store.read() as cur:
            self.paths = await store_live.subject_paths(cur)
        self.latest = {k: v for k, v in self.latest.items() if k in self.paths}

    async def _positions(self) -> None:
        r = redis.Redis.from_url(self.settings.redis_url)
        alerts_channel = channels.live_alerts(self.settings.redis_prefix)
        alerts_key = alerts_channel.encode()  # redis-py names the channel in bytes
        backoff = Backoff(0.5, 10.0)
        try:
            while True:
                try:
                    async with r.pubsub(ignore_subscribe_messages=True) as ps:
                        await ps.subscribe(channels.live_positions(self.settings.redis_prefix),
                                           alerts_channel)
                        self.subscribed.set()
                        backoff.reset()
                        async for m in ps.listen():
                            if m.get("channel") == alerts_key:
                                self.provisional(m.get("data"))
                            else:
                                self.feed(m.get("data"))
                except (RedisError, OSError) as e:
                    logs.still_running()
                    log.warning("live positions feed lost; reconnecting", error=str(e))
                self.subscribed.clear()
                await backoff.wait()
        finally:
            await r.aclose()

    def feed(self, data: object) -> None:
        """One published batch, hostile until decoded: a bad one is counted and logged."""
        try:
            batch = _decode(data)  # type: ignore[arg-type]
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as e:
            received.labels("rejected").inc()
            log.warning("live batch rejected", error=str(e)[:200])
            return
        received.labels("ok").inc()
        clients = list(self.clients)
        for it in batch.items:
            sid, ts = it[0], it[4]
            path = self.paths.get(sid)
            if path is None:
                self.world_changed.set()  # enrolled moments ago: reload; its next fix shows
                continue
            old = self.latest.get(sid)
            if old is not None and old.ts > ts:
                continue  # a late upload: the map shows where the subject is now
            p = _Pos(ts, it[2], it[3], _frag(it))
            self.latest[sid] = p
            for c in clients:
                if c.sees(path) and c.in_view(p.lat, p.lon):
                    c.offer(sid, p)

    def provisional(self, data: object) -> None:
        """Alerts judged while the database is away (`api/provisional.py`)."""
        if not provisional.relay(data, self.paths, self.alerts):
            received.labels("rejected").inc()

    async def _world(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                async for _ in store_live.world_changes(self.settings.database_url):
                    self.world_changed.set()  # the first: changes missed while away
                    backoff.reset()
            except Unavailable as e:
                logs.still_running()
                log.warning("world feed lost; reconnecting", error=str(e))
            await backoff.wait()

    async def _reloader(self) -> None:
        while True:
            await self.world_changed.wait()
            await asyncio.sleep(WORLD_DEBOUNCE_S)
            self.world_changed.clear()
            try:
                await self.reload_paths()
            except Unavailable as e:
                logs.still_running()
                log.warning("subject paths not reloaded", error=str(e))

    def refill(self, c: LiveClient) -> None:
        """After a viewport change: the newest position of every subject now in view."""
        for sid, p in self.latest.items():
            path = self.paths.get(sid)
            if path is not None and c.sees(path) and c.in_view(p.lat, p.lon):
                c.offer(sid, p)

    async def snapshot(self, who: Principal) -> str:
        async with self.store.read() as cur:
            subjects = await reads.subjects(cur, who, None, SNAPSHOT_LIMIT, 0)
            zones = await reads.zones(cur, who)
            alerts = (await reads.alerts(cur, who, status="open", limit=1000)
                      + await reads.alerts(cur, who, status="acknowledged", limit=1000))
        return json.dumps({"type": "snapshot", "subjects": subjects, "zones": zones,
                           "alerts": alerts, "server_time": time.time(),
                           "silent_after_s": self.settings.offline_wearable_s},
                          default=_jsonable, separators=(",", ":"))


def _jsonable(v: object) -> object:
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)


class _Closed(Exception):
    """The socket ended, by the peer or by us (the parts here; `serve_socket` has its own)."""


async def live_socket(ws: WebSocket) -> None:
    if (session := await accept(ws)) is None:
        return
    hub: LiveHub = ws.app.state.live
    client, alerts = LiveClient(session.who), Client(session.who)

    def changed(who: Principal) -> None:  # a new role or jurisdiction: scope follows at once
        client.who = alerts.who = who

    hub.clients.add(client)  # before the snapshot: nothing falls between the two
    hub.alerts.clients.add(alerts)
    screens.inc()
    lock = asyncio.Lock()  # one frame at a time on the socket
    try:
        await _send(ws, lock, await hub.snapshot(session.who))
        await serve_socket(ws, session, "ws-live", lambda: _positions(ws, lock, client),
                           lambda: _alerts(ws, lock, alerts), lambda: _receive(ws, hub, client),
                           on_change=changed)
    except* (WebSocketDisconnect, _Closed, RuntimeError, OSError):
        pass  # RuntimeError/OSError: starlette or the transport after the peer vanished
    except* _TooSlow:
        closed_slow.inc()
        log.warning("screen not reading; closed", user=session.who.username)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=1013, reason="too slow: reconnect"), 1)
    finally:
        hub.clients.discard(client)
        hub.alerts.clients.discard(alerts)
        screens.dec()


class _TooSlow(Exception):
    """A send blocked SEND_TIMEOUT_S: the screen stopped reading."""


async def _send(ws: WebSocket, lock: asyncio.Lock, text: str) -> None:
    async with lock:
        # Not wait_for: a send cancelled on timeout may end with the transport's own error,
        # which would pass for an ordinary disconnect; a slow screen must be told apart.
        task = asyncio.ensure_future(ws.send_text(text))
        done, _ = await asyncio.wait({task}, timeout=SEND_TIMEOUT_S)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=1)
            raise _TooSlow
        task.result()


async def _positions(ws: WebSocket, lock: asyncio.Lock, c: LiveClient) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.wake.wait(), HEARTBEAT_S)
        c.wake.clear()
        items = c.take()
        if items:
            c.seq += 1
            await _send(ws, lock, f'{{"type":"positions","seq":{c.seq},"items":['
                                  + ",".join(items) + "]}")
        else:
            await _send(ws, lock, json.dumps({"type": "heartbeat", "ts": time.time()}))
        await asyncio.sleep(FLUSH_S)  # pace: what arrives meanwhile is conflated


async def _alerts(ws: WebSocket, lock: asyncio.Lock, a: Client) -> None:
    while True:
        get = asyncio.ensure_future(a.queue.get())
        over = asyncio.ensure_future(a.overflowed.wait())
        done, pending = await asyncio.wait({get, over}, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()
        if over in done:
            await ws.close(code=1013, reason="too far behind: reconnect for a snapshot")
            raise _Closed
        await _send(ws, lock, json.dumps(get.result(), default=_jsonable))


async def _receive(ws: WebSocket, hub: LiveHub, c: LiveClient) -> None:
    """Viewport changes; anything else (or malformed) is ignored, never fatal."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise _Closed
        try:
            body = json.loads(msg.get("text") or msg.get("bytes") or "")
            if isinstance(body, dict) and body.get("type") == "viewport":
                c.bbox = _bbox(body.get("bbox"))
                hub.refill(c)
        except ValueError as e:
            log.info("ignored a malformed message from a screen", error=str(e)[:200])


def install(app: FastAPI, settings: ApiSettings) -> LiveHub:
    """Adds `/ws/live` and runs the hub (supervised) for the app's lifetime. Call after
    `create_app` set `app.state.store` and `app.state.hub`."""
    hub = LiveHub(settings, app.state.store, app.state.hub)
    app.state.live = hub
    app.add_api_websocket_route("/ws/live", live_socket)
    health = getattr(app.state, "health", None) or Health()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[object]:
        async with inner(a) as state:
            task = asyncio.create_task(supervised("api-live-hub", hub.run, health,
                                                  settings.task_restart_max_s),
                                       name="api-live-hub")
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return hub
