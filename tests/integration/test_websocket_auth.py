"""/ws/alerts authenticates by query token or first message, and refuses anything else."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from api.auth import hash_password
from tests.integration.receivers import free_port


@pytest.fixture
async def server(base_settings, db):
    name = f"ws-{uuid.uuid4().hex[:6]}"
    db.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
               (name, hash_password("ws-password")))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(base_settings), host="127.0.0.1", port=port,
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
