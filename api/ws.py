"""Websockets (contract §3). `/ws/alerts`: an officer's phone gets every alert change, new or
updated, for subjects in the officer's scope, as it commits."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from fastapi import WebSocket, WebSocketDisconnect

from api.auth import TokenError
from api.store import ApiStore, Principal, Unavailable
from api.store.accounts import principal
from api.store.live import alert_changes, alert_with_path
from ingest import logs

log = logs.get("api.ws")
QUEUE_LIMIT = 1000  # per phone; beyond it the phone is told to resync (close 1013)
AUTH_TIMEOUT_S = 10


@dataclass(eq=False)
class Client:
    who: Principal
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def sees(self, path: list[int]) -> bool:
        return self.who.scope is None or self.who.scope in path


class AlertHub:
    def __init__(self, store: ApiStore, database_url: str) -> None:
        self.store, self.url = store, database_url
        self.clients: set[Client] = set()
        self.listening = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async for change in alert_changes(self.url):
                    if change.get("listening"):
                        self.listening.set()
                        backoff = 0.5
                        continue
                    await self.fan_out(change)
            except Unavailable as e:
                logs.still_running()
                log.warning("alert feed lost; reconnecting", error=str(e))
            self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def fan_out(self, change: dict) -> None:
        if not self.clients:
            return
        async with self.store.read() as cur:
            row = await alert_with_path(cur, change["alert_id"])
        if row is None:
            return
        self.deliver({"type": "alert", "event": change["event"], "alert": row["alert"]},
                     row["path"])

    def deliver(self, message: dict, path: list[int]) -> None:
        """To every phone whose user's scope holds `path`; a full queue flags the phone for a
        resync (its socket is closed with 1013) instead of skipping the alert silently."""
        for c in list(self.clients):
            if c.sees(path):
                try:
                    c.queue.put_nowait(message)
                except asyncio.QueueFull:
                    c.overflowed.set()


async def authenticate(ws: WebSocket) -> Principal | None:
    """Token in the query string, or as the first message {"type": "auth", "token": ...}."""
    token = ws.query_params.get("token")
    if not token:
        with contextlib.suppress(TimeoutError, ValueError, KeyError, TypeError):
            first = await asyncio.wait_for(ws.receive_json(), AUTH_TIMEOUT_S)
            if first.get("type") == "auth":
                token = first.get("token")
    if not isinstance(token, str):
        return None
    try:
        uid = (await _tokens(ws)).user_id(token)
    except TokenError:
        return None
    async with ws.app.state.store.read() as cur:
        return await principal(cur, uid)


async def _tokens(ws: WebSocket):
    from api.deps import tokens
    return await tokens(ws)


async def alerts_socket(ws: WebSocket) -> None:
    await ws.accept()
    who = await authenticate(ws)
    if who is None:
        log.warning("websocket refused: no valid token", path=ws.url.path)
        await ws.close(code=1008, reason="invalid or missing token")
        return
    hub: AlertHub = ws.app.state.hub
    client = Client(who)
    hub.clients.add(client)
    try:
        await ws.send_json({"type": "hello", "user": who.username, "scope": who.scope})
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_pump(ws, client), name="ws-alerts-send")
            tg.create_task(_drain(ws), name="ws-alerts-receive")
    except* (WebSocketDisconnect, _Closed):
        pass
    finally:
        hub.clients.discard(client)


class _Closed(Exception):
    """The socket ended (by the peer, or by us on overflow)."""


async def _pump(ws: WebSocket, client: Client) -> None:
    while True:
        get = asyncio.ensure_future(client.queue.get())
        over = asyncio.ensure_future(client.overflowed.wait())
        done, pending = await asyncio.wait({get, over}, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()
        if over in done:
            await ws.close(code=1013, reason="too far behind: reload alerts over REST")
            raise _Closed
        await ws.send_json(get.result())


async def _drain(ws: WebSocket) -> None:
    """Reads (and ignores) what the phone sends, so a disconnect is noticed at once."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise _Closed
