"""Logins against a real server: a guesser slows only itself, X-Forwarded-For counts only via
trusted proxies, and password hashing neither stalls the event loop nor holds a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import uvicorn

from api.app import create_app
from api.auth import hash_password
from tests.integration.receivers import free_port
from tether.config import Settings

PASSWORD = "right horse battery"


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API on a real socket in this event loop (the loop ingest would share)."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                        log_level="warning", proxy_headers=False))
    task = asyncio.create_task(srv.serve(), name="test-api-server")
    while not srv.started:  # noqa: ASYNC110 - uvicorn offers only this flag
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            yield c
    finally:
        srv.should_exit = True
        await task


def admin(db) -> str:
    name = f"admin-{uuid.uuid4().hex[:8]}"
    db.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
               (name, hash_password(PASSWORD)))
    return name


def addr() -> str:
    """A client address of its own, so that tests do not share throttles."""
    b = uuid.uuid4().bytes
    return f"198.51.{b[0]}.{b[1]}"


async def login(c: httpx.AsyncClient, user: str, password: str,
                client: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": client} if client else {}
    return await c.post("/api/auth/token", data={"username": user, "password": password},
                        headers=headers)


@pytest.mark.timeout(60)
async def test_wrong_passwords_slow_the_guesser_not_the_owner(base_settings, db) -> None:
    s = base_settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    user, guesser, owner = admin(db), addr(), addr()
    async with api(s) as c:
        for _ in range(s.login_max_failures):
            assert (await login(c, user, "guess", guesser)).status_code == 401
        r = await login(c, user, PASSWORD, guesser)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        # The account is not locked: its owner, elsewhere, logs in at once.
        r = await login(c, user, PASSWORD, owner)
        assert r.status_code == 200, r.text
        assert (await c.get("/api/subjects", headers={
            "Authorization": f"Bearer {r.json()['access_token']}"})).status_code == 200
        # The guesser's wait grows with each failure it makes after waiting.
        first = int(r.headers.get("Retry-After", 0)) if r.status_code == 429 else None
        assert first is None
        await asyncio.sleep(2.1)
        assert (await login(c, user, "guess", guesser)).status_code == 401
        r = await login(c, user, PASSWORD, guesser)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 3


@pytest.mark.timeout(60)
async def test_the_delay_is_capped(base_settings, db) -> None:
    s = base_settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    user, guesser = admin(db), addr()
    db.execute("INSERT INTO login_failures (username, client)"
               " SELECT %s, %s FROM generate_series(1, 40)", (user, guesser))
    async with api(s) as c:
        r = await login(c, user, PASSWORD, guesser)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 60


@pytest.mark.timeout(60)
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(base_settings, db) -> None:
    s = base_settings.model_copy(update={"trusted_proxies": ["192.0.2.1"]})  # not us
    user = admin(db)
    async with api(s) as c:
        for _ in range(s.login_max_failures):
            assert (await login(c, user, "guess", addr())).status_code == 401
        # A new X-Forwarded-For per guess buys no fresh throttle: the peer is the caller.
        r = await login(c, user, PASSWORD, addr())
        assert r.status_code == 429
    n = db.execute("SELECT count(DISTINCT client) FROM login_failures WHERE username = %s",
                   (user,)).fetchone()[0]
    assert n == 1


async def _latencies(c: httpx.AsyncClient, n: int, every_s: float = 0.05) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await c.get("/healthz")
        out.append(time.perf_counter() - t)
        assert r.status_code == 200
        await asyncio.sleep(every_s)
    return out


def _open_transactions(url: str, stop: threading.Event) -> int:
    """Most connections seen idle inside a transaction for over 200 ms (a hash takes 200 ms or
    more). A thread of its own, so it samples even while the event loop is blocked."""
    most = 0
    with psycopg.connect(url, autocommit=True) as db:
        while not stop.is_set():
            most = max(most, db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%'"
                " AND now() - state_change > interval '200 ms'").fetchone()[0])
            time.sleep(0.02)
    return most


@pytest.mark.timeout(120)
async def test_bogus_logins_do_not_stall_the_event_loop(base_settings) -> None:
    s = base_settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    async with api(s) as c:
        await c.get("/healthz")
        baseline = await _latencies(c, 20)
        stop = threading.Event()
        watch = asyncio.create_task(asyncio.to_thread(_open_transactions, s.database_url, stop),
                                    name="test-watch-tx")
        started = time.perf_counter()
        storm = asyncio.gather(*(login(c, f"nobody-{i}-{uuid.uuid4().hex[:6]}", "x", addr())
                                 for i in range(40)))
        await asyncio.sleep(0.3)  # the hashing is under way
        during = await _latencies(c, 20)
        answers = await storm
        took = time.perf_counter() - started
        stop.set()
        held = await watch
    codes = [r.status_code for r in answers]
    assert codes.count(401) >= 20, codes  # hashed and refused, not shed
    assert took > 1.0  # really busy: 40 argon2 hashes, a few at a time
    worst, base = max(during), statistics.median(baseline)
    print(f"healthz baseline p50 {base * 1000:.1f} ms; during the storm max "
          f"{worst * 1000:.1f} ms, p50 {statistics.median(during) * 1000:.1f} ms; "
          f"storm {took:.1f} s")
    assert worst < base + 0.75, (base, during)  # was 2.1 s with hashing on the loop
    assert held == 0  # no transaction stays open across a hash
