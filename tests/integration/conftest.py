"""Real services, isolated per run: a throwaway database, MQTT topic roots and a Redis prefix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from api.store.credentials import service_url
from ingest.mqtt import Broker, MqttPublisher
from ingest.pipeline import Ingest
from ingest.runner import ingest_worker
from ingest.store import migrate
from tether.config import Settings

pytestmark = pytest.mark.integration


def _with_db(url: str, name: str) -> str:
    u = urlsplit(url)
    return urlunsplit(u._replace(path="/" + name))


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def base_settings(run_id: str) -> Iterator[Settings]:
    base = Settings()
    admin_url = os.environ.get("TETHER_TEST_ADMIN_URL", _with_db(base.database_url, "postgres"))
    db = f"tether_test_{run_id}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
    url = _with_db(base.database_url, db)
    migrate(url, base.migrations_dir)  # None: the migrations shipped with the package
    settings = base.model_copy(update={
        "database_url": url,
        # The tests publish as any device: the setup's `dev` broker account (scripts/test sets
        # TETHER_DEV_BROKER=1); an open broker needs none.
        "mqtt_url": service_url(url, base.mqtt_url, "dev"),
        "mqtt_root": f"test-{run_id}/tether/v1",
        "owntracks_root": f"test-{run_id}/owntracks",
        "redis_prefix": f"test-{run_id}:",
        "mqtt_share_group": f"test-{run_id}",
        "mqtt_client_id": f"test-{run_id}-w1",
        "batch_age_ms": 50,
        "log_level": "WARNING",
    })
    yield settings
    r = redis.Redis.from_url(settings.redis_url)
    for key in r.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
        r.delete(key)
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(db)))


@pytest.fixture
def scratch_db(base_settings: Settings) -> Iterator[str]:
    """An empty database of its own (no migrations), dropped afterwards."""
    name = f"tether_scratch_{uuid.uuid4().hex[:8]}"
    admin = os.environ.get("TETHER_TEST_ADMIN_URL", _with_db(base_settings.database_url,
                                                             "postgres"))
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield _with_db(base_settings.database_url, name)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Per test: its own client id and share group, so no test inherits another's queue."""
    tag = uuid.uuid4().hex[:8]
    return base_settings.model_copy(update={
        "mqtt_client_id": f"{base_settings.mqtt_client_id}-{tag}",
        "mqtt_share_group": f"{base_settings.mqtt_share_group}-{tag}",
        "mqtt_root": f"{base_settings.mqtt_root}/{tag}",
        "owntracks_root": f"{base_settings.owntracks_root}/{tag}",
    })


@pytest.fixture
def db(base_settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def register(db: psycopg.Connection) -> Callable[..., list[str]]:
    """Enrol devices under one fresh subject; returns their ids."""
    def enrol(*device_ids: str, kind: str = "wearable") -> list[str]:
        j = db.execute("INSERT INTO jurisdictions (name) VALUES ('test') RETURNING id").fetchone()
        s = db.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES ('s', %s) RETURNING id",
                       (j[0],)).fetchone()
        for d in device_ids:
            db.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, %s, %s)",
                       (d, kind, s[0]))
        return list(device_ids)
    return enrol


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Ingest]:
    """An ingest worker running inside the test's event loop until the block ends."""
    async with ingest_worker(settings) as worker:
        task = asyncio.create_task(worker.run(), name="test-ingest")
        try:
            await asyncio.wait_for(worker.source.connected.wait(), 10)
            yield worker
        finally:
            await _stop(task)


WORKER_STOP_S = 10.0


async def _stop(task: asyncio.Task) -> None:
    """Cancel the worker; one that ignores it fails the test here instead of hanging it.

    Python 3.11's asyncio.wait_for (in redis-py, aiomqtt, psycopg_pool) can swallow a
    cancellation that arrives with its result; a part that then carries on keeps the worker's
    TaskGroup, and so the test, waiting forever. The worker is then cancelled until it ends, so
    the rest of the run goes on, and the test fails with what the worker was doing.
    """
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=WORKER_STOP_S)
    if done:
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    # The TaskGroup cancels its parts only once, so the stuck part is cancelled directly (by
    # its name: whatever else shares it is being stopped too, as the test fails anyway).
    parts = [t for t in asyncio.all_tasks()
             if not t.done() and t.get_name().startswith(("ingest-", "rules-"))]
    stuck = [f"{t.get_name()} at {t.get_stack()}" for t in parts]
    while not task.done():
        for t in (task, *parts):
            t.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise AssertionError(f"the ingest worker ignored its cancellation for {WORKER_STOP_S} s; "
                         f"still running: {stuck}")


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[MqttPublisher]:
    async with MqttPublisher(Broker.from_url(settings.mqtt_url)) as pub:
        yield pub


async def publish_all(pub: MqttPublisher, items: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(items), 500):  # concurrent QoS 1 publishes, in bounded groups
        await asyncio.gather(*(pub.publish(t, p) for t, p in items[i:i + 500]))


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0,  # noqa: ASYNC109
                     what: str | Callable[[], str] = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


def count(db: psycopg.Connection, sql: str, *params: object) -> int:
    return db.execute(sql, params).fetchone()[0]
