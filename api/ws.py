"""Websockets (contract §3). `/ws/alerts`: an officer's phone gets every alert change, new or
updated, for subjects in the officer's scope, as it commits. Every socket handler runs its
parts through `serve_socket`, which re-checks the user (`watch_session`) beside them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from api.auth import TokenError
from api.store import ApiStore, Principal, Unavailable
from api.store.accounts import principal
from api.store.live import alert_changes, alert_with_path
from tether import logs

log = logs.get("api.ws")
QUEUE_LIMIT = 1000  # per phone; beyond it the phone is told to resync (close 1013)
AUTH_TIMEOUT_S = 10
RECHECK_RETRY_S = 5.0  # after a failed re-check (database down), try again this soon


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


@dataclass(eq=False)
class Session:
    """Who is on a socket, until when. `who` is replaced when a re-check finds the user changed
    (role, jurisdiction), so scope follows the database, not the token."""

    who: Principal
    expires_at: float  # the token's expiry, epoch seconds
    issued_at: float | None = None  # sessions ended after it (new password, disabled) end this


async def authenticate(ws: WebSocket) -> Session | None:
    """Token in the query string, or as the first message {"type": "auth", "token": ...}."""
    token = ws.query_params.get("token")
    if not token:
        with contextlib.suppress(TimeoutError, ValueError, KeyError, TypeError, AttributeError):
            first = await asyncio.wait_for(ws.receive_json(), AUTH_TIMEOUT_S)
            if first.get("type") == "auth":
                token = first.get("token")
    if not isinstance(token, str):
        return None
    try:
        uid, expires_at, issued_at = (await _tokens(ws)).session(token)
    except TokenError:
        return None
    async with ws.app.state.store.read() as cur:
        who = await principal(cur, uid, issued_at)
    return Session(who, expires_at, issued_at) if who else None


async def _tokens(ws: WebSocket):
    from api.deps import tokens
    return await tokens(ws)


async def watch_session(ws: WebSocket, session: Session, recheck_s: float,
                        on_change: Callable[[Principal], None] | None = None) -> None:
    """Runs beside a socket's sender until the session ends: re-reads the user at least every
    `recheck_s` and at token expiry, and closes the socket (1008, policy violation) once the
    token has expired or the user is disabled or gone, as REST would refuse the same token.
    A database outage keeps the socket (nothing is sent without the database anyway) and
    re-checks sooner."""
    store: ApiStore = ws.app.state.store
    while True:
        left = session.expires_at - time.time()
        if left <= 0:
            await _close(ws, 1008, "token expired: log in again")
        await asyncio.sleep(min(recheck_s, left))
        if session.expires_at - time.time() <= 0:
            continue
        try:
            async with store.read() as cur:
                who = await principal(cur, session.who.id, session.issued_at)
        except Unavailable as e:
            log.warning("session re-check failed; retrying", user=session.who.username,
                        error=str(e))
            await asyncio.sleep(min(recheck_s, RECHECK_RETRY_S))
            continue
        if who is None:
            log.warning("websocket closed: user disabled or sessions ended",
                        user=session.who.username, path=ws.url.path)
            await _close(ws, 1008, "user disabled or sessions ended: log in again")
        if who != session.who:
            session.who = who
            if on_change:
                on_change(who)


async def _close(ws: WebSocket, code: int, reason: str) -> NoReturn:
    with contextlib.suppress(RuntimeError, OSError):  # already closing: nothing to tell
        await ws.close(code=code, reason=reason)
    raise _Closed


async def serve_socket(ws: WebSocket, session: Session, name: str,
                       *parts: Callable[[], Awaitable[None]],
                       on_change: Callable[[Principal], None] | None = None) -> None:
    """A socket's parts (its sender, its reader) run beside the session watch, until any of
    them ends the socket; the peer going away is the normal end, not an error."""
    recheck_s = ws.app.state.settings.session_recheck_s
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watch_session(ws, session, recheck_s, on_change),
                           name=f"{name}-session")
            for i, part in enumerate(parts):
                tg.create_task(part(), name=f"{name}-{i}")
    except* (WebSocketDisconnect, _Closed):
        pass
    except* RuntimeError:  # a part sending just as the socket closed: the end, not a fault
        if ws.application_state != WebSocketState.DISCONNECTED:
            raise


async def accept(ws: WebSocket) -> Session | None:
    """Accept and authenticate a socket; None (the socket closed with its reason) if refused."""
    await ws.accept()
    try:
        session = await authenticate(ws)
    except Unavailable as e:
        log.warning("websocket refused: database unavailable", error=str(e))
        await ws.close(code=1013, reason="database unavailable; try again")
        return None
    if session is None:
        log.warning("websocket refused: no valid token", path=ws.url.path)
        await ws.close(code=1008, reason="invalid or missing token")
    return session


async def alerts_socket(ws: WebSocket) -> None:
    if (session := await accept(ws)) is None:
        return
    hub: AlertHub = ws.app.state.hub
    client = Client(session.who)
    hub.clients.add(client)
    try:
        await ws.send_json({"type": "hello", "user": client.who.username,
                            "scope": client.who.scope})
        await serve_socket(ws, session, "ws-alerts", lambda: _pump(ws, client),
                           lambda: drain(ws), on_change=lambda who: setattr(client, "who", who))
    except WebSocketDisconnect:
        pass
    finally:
        hub.clients.discard(client)
class _Closed(Exception):
    """The socket ended (by the peer, or by us: overflow, user disabled, token expired)."""


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


async def drain(ws: WebSocket) -> None:
    """Reads (and ignores) what the phone sends, so a disconnect is noticed at once."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise _Closed
