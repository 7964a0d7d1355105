"""Rule state is durable where it matters: a Redis that loses it (a flush) or holds another
database's (ids starting again) is rebuilt from PostgreSQL, through the process wiring that
`tether serve` / `tether ingest` run (tether/serve.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import redis

from ingest.store.admin import database_identity
from tests.integration.conftest import count, eventually, publish_all
from tether.config import Settings
from tether.serve import serve


@contextlib.asynccontextmanager
async def served(s: Settings) -> AsyncIterator[None]:
    task = asyncio.create_task(serve(s, True, False), name="test-serve")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


def offline_alerts(db: psycopg.Connection, subject: int) -> list[tuple]:
    return db.execute("SELECT status, breach_count FROM alerts WHERE subject_id = %s"
                      " AND type = 'device_offline'", (subject,)).fetchall()


@pytest.mark.timeout(60)
async def test_a_redis_flush_loses_no_offline_alert(settings: Settings, db, register,
                                                    publisher) -> None:
    (dev,) = register(f"flush-{uuid.uuid4().hex[:8]}")
    subject = db.execute("SELECT subject_id FROM devices WHERE id = %s", (dev,)).fetchone()[0]
    s = settings.model_copy(update={"offline_wearable_s": 4.0, "tick_interval_s": 0.2})
    r = redis.Redis.from_url(s.redis_url)
    async with served(s):
        fix = {"ts": time.time(), "lat": 31.2, "lon": 121.4, "acc": 8}
        await eventually(lambda: r.get(f"{s.redis_prefix}bound") is not None, 10,
                         "the state bound to the database")

        async def sent_and_judged() -> bool:
            # Sent again until stored: the worker's session may not exist yet, and the same
            # (device, time) is stored once however often it arrives.
            await publish_all(publisher, [(f"{s.mqtt_root}/devices/{dev}/loc",
                                           json.dumps(fix).encode())])
            await asyncio.sleep(0.2)
            return r.hget(f"{s.redis_prefix}subj:{subject}", "s") is not None and bool(
                count(db, "SELECT count(*) FROM fixes WHERE device_id = %s", dev))
        await eventually(sent_and_judged, what="the fix committed and judged")
        # The loss: everything this deployment kept in Redis (the shared Redis serves other
        # runs, so this run's keys are deleted rather than FLUSHDB).
        for key in r.scan_iter(match=f"{s.redis_prefix}*", count=1000):
            r.delete(key)
        assert offline_alerts(db, subject) == []
        # Silent from now on: flagged although Redis forgot it ever spoke.
        await eventually(lambda: len(offline_alerts(db, subject)) == 1, 30,
                         "device_offline after the flush")
    assert offline_alerts(db, subject) == [("open", 1)]  # once
    assert count(db, "SELECT count(*) FROM fixes WHERE device_id = %s", dev) == 1


@pytest.mark.timeout(60)
async def test_state_left_by_another_database_is_dropped_and_rebuilt(
        settings: Settings, db, register) -> None:
    (dev,) = register(f"foreign-{uuid.uuid4().hex[:8]}")
    subject = db.execute("SELECT subject_id FROM devices WHERE id = %s", (dev,)).fetchone()[0]
    r = redis.Redis.from_url(settings.redis_url)
    p = settings.redis_prefix
    # What a previous database with the same subject id left: a strap breach in force and a
    # track for a device this database never had.
    foreign = {"tracks": {"ghost": {"t": 1.0, "seen": 1.0}},
               "rules": {"strap:ghost": {"st": "breach"}}}
    r.set(f"{p}bound", "some-other-database")
    r.hset(f"{p}subj:{subject}", mapping={"v": 7, "s": json.dumps(foreign)})
    db.execute("INSERT INTO fixes (device_id, fix_time, received_at, lat, lon, accuracy_m)"
               " VALUES (%s, now() - interval '1 minute', now(), 31.2, 121.4, 8)", (dev,))
    async with served(settings):
        await eventually(lambda: r.get(f"{p}bound") == database_identity(
            settings.database_url).encode(), 15, "the state rebound")
        await eventually(lambda: r.hget(f"{p}subj:{subject}", "s") is not None, 10,
                         "the rebuilt state")
        state = json.loads(r.hget(f"{p}subj:{subject}", "s"))
    assert "ghost" not in json.dumps(state)
    assert dev in state["tracks"]  # rebuilt from the fixes in PostgreSQL
