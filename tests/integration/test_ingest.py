"""Fixes from the real broker into the real TimescaleDB: exactly once, whatever arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis

from geofence.types import Fix, Reject
from ingest.store import IngestStore
from tests.integration.conftest import count, eventually, publish_all, running
from tether.config import Settings

T0 = time.time() - 3600  # an hour ago: well inside the accepted window


def fix(i: int, **kw: object) -> dict:
    return {"ts": T0 + i, "lat": 31.2 + i * 1e-5, "lon": 121.4, "acc": 8, **kw}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stored(db: psycopg.Connection, *device_ids: str) -> int:
    return count(db, "SELECT count(*) FROM fixes WHERE device_id = ANY(%s)", list(device_ids))


def test_fixes_and_events_are_hypertables(db: psycopg.Connection) -> None:
    names = {r[0] for r in db.execute(
        "SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"fixes", "device_events"} <= names


async def test_objects_batches_and_owntracks_give_exactly_n_rows(
        settings: Settings, db, register, publisher) -> None:
    a, b = register(uid("obj"), uid("bat"))
    user, dev = uid("jane"), "phone"
    register(f"{user}.{dev}", kind="phone")
    root, ot = settings.mqtt_root, settings.owntracks_root
    msgs = [(f"{root}/devices/{a}/loc", json.dumps(fix(i)).encode()) for i in range(300)]
    msgs += [(f"{root}/devices/{b}/loc", json.dumps([fix(k * 200 + i) for i in range(200)])
              .encode()) for k in range(5)]
    msgs += [(f"{ot}/{user}/{dev}", json.dumps({
        "_type": "location", "tst": int(T0) + i, "lat": 31.3, "lon": 121.5, "acc": 12,
        "vel": 36, "cog": 90, "batt": 80, "tid": "jp", "conn": "m", "bs": 1}).encode())
        for i in range(50)]
    async with running(settings):
        await publish_all(publisher, msgs)
        await eventually(lambda: stored(db, a, b, f"{user}.{dev}") >= 1350, what="1350 rows")
    assert stored(db, a) == 300
    assert stored(db, b) == 1000
    assert stored(db, f"{user}.{dev}") == 50
    spd, hdg, extra = db.execute("SELECT speed_mps, heading_deg, extra FROM fixes "
                                 "WHERE device_id = %s LIMIT 1", (f"{user}.{dev}",)).fetchone()
    assert abs(spd - 10.0) < 1e-6 and hdg == 90  # 36 km/h
    assert extra == {"tid": "jp", "conn": "m", "bs": 1}  # unknown OwnTracks fields kept


async def test_each_duplicate_is_stored_once(settings: Settings, db, register,
                                             publisher) -> None:
    (d,) = register(uid("dup"))
    topic = f"{settings.mqtt_root}/devices/{d}/loc"
    one = json.dumps(fix(1)).encode()
    msgs = [(topic, one)] * 5 + [(topic, json.dumps([fix(2), fix(2), fix(3)]).encode())]
    async with running(settings) as worker:
        await publish_all(publisher, msgs)
        await eventually(lambda: worker.committed_batches and stored(db, d) == 3
                         and not worker.batches.waiting(),
                         what="all messages committed")
        await publish_all(publisher, [(topic, one)])  # and again, in a later batch
        n = worker.committed_batches
        await eventually(lambda: worker.committed_batches > n, what="another batch")
    assert stored(db, d) == 3


async def test_store_copies_new_fixes_straight_and_sorts_out_stored_ones(
        settings: Settings, db, register) -> None:
    """The batch transaction's two ways: all new (COPY into the hypertable under a savepoint)
    and some stored before (savepoint undone, staging and ON CONFLICT): only the new fixes
    come back to be judged, and the rest of the transaction (a reject) commits with them."""
    (d,) = register(uid("copy"))
    now = datetime.now(UTC)
    at = [Fix(d, now - timedelta(seconds=60 - i), 31.2, 121.4, now) for i in range(6)]
    reject = Reject("t/x", b"junk", "not JSON", now, d)
    store = IngestStore(settings.database_url)
    await store.open()
    try:
        async with store.batch() as tx:
            new, _ = await tx.store(at[:3], [], [])
        assert new == at[:3]
        async with store.batch() as tx:  # two stored already, one twice in the batch
            new, _ = await tx.store([at[1], at[3], at[2], at[4], at[4]], [], [reject])
        assert {f.fix_time for f in new} == {at[3].fix_time, at[4].fix_time}
        with contextlib.suppress(ZeroDivisionError):
            async with store.batch() as tx:  # rolled back as a whole: nothing of it stays
                await tx.store([at[5]], [], [])
                raise ZeroDivisionError
    finally:
        await store.close()
    assert stored(db, d) == 5
    assert count(db, "SELECT count(*) FROM ingest_rejects WHERE device_id = %s", d) == 1


async def test_a_duplicate_in_a_batch_opening_new_chunks_is_stored_once(
        settings: Settings, db, register) -> None:
    """The savepoint undone after a duplicate also undoes the chunks its COPY created (fixes on
    both sides of a midnight no fix was stored at before); the merge creates them again."""
    (d,) = register(uid("chunk"))
    now = datetime.now(UTC)
    midnight = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000))
    at = [Fix(d, midnight + timedelta(seconds=s), 31.2, 121.4, now) for s in (-2, -1, 1, 2)]
    store = IngestStore(settings.database_url)
    await store.open()
    try:
        async with store.batch() as tx:
            await tx.store(at[:1], [], [])
        async with store.batch() as tx:
            new, _ = await tx.store(at, [], [])
    finally:
        await store.close()
    assert {f.fix_time for f in new} == {f.fix_time for f in at[1:]}
    assert stored(db, d) == 4


async def test_out_of_order_and_late_fixes_are_all_stored(settings: Settings, db, register,
                                                          publisher) -> None:
    (d,) = register(uid("ooo"))
    topic = f"{settings.mqtt_root}/devices/{d}/loc"
    order = list(range(200))
    random.Random(4).shuffle(order)
    msgs = [(topic, json.dumps(fix(i)).encode()) for i in order]
    async with running(settings):
        await publish_all(publisher, msgs)
        await eventually(lambda: stored(db, d) == 200, what="200 rows")
        # A buffered upload from before all of them arrives last.
        late = [fix(-1000 + i) for i in range(100)]
        await publish_all(publisher, [(topic, json.dumps(late).encode())])
        await eventually(lambda: stored(db, d) == 300, what="300 rows")
    state = redis.Redis.from_url(settings.redis_url).hgetall(f"{settings.redis_prefix}dev:{d}")
    assert abs(float(state[b"ts"]) - (T0 + 199)) < 1e-3  # the late upload did not rewind it


async def test_impossible_jump_is_stored_but_flagged(settings: Settings, db, register,
                                                     publisher) -> None:
    (d,) = register(uid("jump"))
    topic = f"{settings.mqtt_root}/devices/{d}/loc"
    track = [fix(0), {"ts": T0 + 10, "lat": 32.5, "lon": 121.4, "acc": 8}, fix(20)]
    async with running(settings):
        await publish_all(publisher, [(topic, json.dumps(track).encode())])
        await eventually(lambda: stored(db, d) == 3, what="3 rows")
    flags = [r[0] for r in db.execute("SELECT outlier FROM fixes WHERE device_id = %s "
                                      "ORDER BY fix_time", (d,))]
    assert flags == [False, True, False]


async def test_gcj02_fix_is_stored_in_wgs84_with_the_original_kept(settings: Settings, db,
                                                                   register, publisher) -> None:
    (d,) = register(uid("gcj"))
    topic = f"{settings.mqtt_root}/devices/{d}/loc"
    async with running(settings):
        await publish_all(publisher, [(topic, json.dumps(fix(0, crs="gcj02")).encode())])
        await eventually(lambda: stored(db, d) == 1, what="1 row")
    _lat, lon, datum, rlat, rlon = db.execute(
        "SELECT lat, lon, datum, reported_lat, reported_lon FROM fixes WHERE device_id = %s",
        (d,)).fetchone()
    assert datum == "gcj02" and (rlat, rlon) == (31.2, 121.4)
    assert 0.001 < abs(lon - rlon) < 0.01  # the GCJ-02 shift in Shanghai is ~450 m


async def test_device_events_and_status_are_stored(settings: Settings, db, register,
                                                   publisher) -> None:
    (d,) = register(uid("evt"))
    root = settings.mqtt_root
    async with running(settings):
        await publish_all(publisher, [
            (f"{root}/devices/{d}/evt", json.dumps({"type": "strap_open", "ts": T0}).encode()),
            (f"{root}/devices/{d}/evt", json.dumps([{"type": "sos", "ts": T0 + 1, "lat": 31.2,
                                                     "lon": 121.4, "note": "x"}]).encode()),
            (f"{root}/devices/{d}/status", b"offline"),
        ])
        await eventually(lambda: count(db, "SELECT count(*) FROM device_events WHERE "
                                           "device_id = %s", d) == 3, what="3 events")
        # The live state is written after the commit, so the rows can be visible before it:
        # wait for it here, with the worker still running, not after stopping it (which used
        # to cancel the worker in the middle of that Redis write).
        live = redis.Redis.from_url(settings.redis_url)
        key = f"{settings.redis_prefix}dev:{d}"
        await eventually(lambda: live.hmget(key, "strap", "status") == [b"open", b"offline"],
                         what=lambda: f"live state strap=open status=offline, not "
                                      f"{live.hgetall(key)}")
    data = db.execute("SELECT data FROM device_events WHERE device_id = %s AND type = 'sos'",
                      (d,)).fetchone()[0]
    assert data == {"note": "x"}


@pytest.mark.timeout(60)
async def test_a_worker_stops_even_if_a_library_loses_its_cancellation(
        settings: Settings, db, register, publisher) -> None:
    """Python 3.11's asyncio.wait_for returns the result instead of raising when a cancellation
    and that result arrive together (fixed in 3.12). redis-py's socket writes, aiomqtt and
    psycopg_pool use it, so a worker stopped in the middle of its live-state write could lose
    the cancellation and wait for its next batch forever: the hang of
    test_device_events_and_status_are_stored. Here the live-state write loses it on purpose."""
    (d,) = register(uid("cancel"))
    entered = asyncio.Event()
    async with running(settings) as worker:
        real = worker.state.record

        async def record(*args: object) -> None:
            entered.set()
            # Swallowed: what 3.11's wait_for does when the write completes at the same moment.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)
            await real(*args)

        worker.state.record = record
        await publish_all(publisher, [(f"{settings.mqtt_root}/devices/{d}/loc",
                                       json.dumps(fix(0)).encode())])
        await asyncio.wait_for(entered.wait(), 10)
    # Leaving `running` cancels the worker; it fails there if the worker does not stop.
