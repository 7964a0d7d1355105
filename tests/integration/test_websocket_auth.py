"""/ws/alerts authenticates by query token or first message, and refuses anything else; an
open socket re-checks its user and closes once the user is disabled or the token expires."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from api.auth import Tokens, hash_password
from api.store import Principal
from tests.integration.receivers import free_port

RECHECK_S = 0.5


@pytest.fixture
async def server(base_settings, db):
    name = f"ws-{uuid.uuid4().hex[:6]}"
    db.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
               (name, hash_password("ws-password")))
    port = free_port()
    s = base_settings.model_copy(update={"session_recheck_s": RECHECK_S})
    srv = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port,
                                        log_level="warning"))
    task = asyncio.create_task(srv.serve(), name="test-api-server")
    while not srv.started:  # noqa: ASYNC110 - uvicorn offers only this flag
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        token = (await c.post("/api/auth/token", data={"username": name,
                                                       "password": "ws-password"})).json()
    yield f"ws://127.0.0.1:{port}/ws/alerts", token["access_token"]
    srv.should_exit = True
    await task


async def test_token_in_the_first_message(server) -> None:
    url, token = server
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        hello = json.loads(await ws.recv())
    assert hello["type"] == "hello" and hello["scope"] is None


@pytest.mark.parametrize("first", [{"type": "auth", "token": "forged.token.here"},
                                   {"type": "viewport"}, "not json"])
async def test_refused_without_a_valid_token(server, first) -> None:
    url, _ = server
    async with connect(url) as ws:
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd.code == 1008


async def _hello(ws) -> dict:
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert hello["type"] == "hello"
    return hello


@pytest.mark.timeout(30)
async def test_a_disabled_users_socket_is_closed_and_gets_no_more_alerts(server, db) -> None:
    url, token = server
    async with connect(f"{url}?token={token}") as ws:
        hello = await _hello(ws)
        await asyncio.sleep(RECHECK_S * 2)  # re-checks of an enabled user keep the socket open
        assert ws.state.name == "OPEN"
        db.execute("UPDATE users SET disabled = true WHERE username = %s", (hello["user"],))
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # an alert raised meanwhile may still arrive before the close
                await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1008 and "disabled" in closed.value.rcvd.reason
    assert time.monotonic() - started < RECHECK_S + 2


@pytest.mark.timeout(30)
async def test_the_socket_closes_when_its_token_expires(server, db) -> None:
    """At expiry itself, not at the next periodic re-check (set long here)."""
    url, token = server
    secret = db.execute("SELECT value FROM app_secrets WHERE name = 'jwt'").fetchone()[0]
    uid = Tokens(secret, 60).user_id(token)
    row = db.execute("SELECT username, role, jurisdiction_id FROM users WHERE id = %s",
                     (uid,)).fetchone()
    short = Tokens(secret, 60).issue(Principal(uid, *row), now=time.time() - 58)  # 2 s left
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": short}))
        await _hello(ws)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1008 and "expired" in closed.value.rcvd.reason
    assert time.monotonic() - started < 4
