"""Zones in the database, fixes over MQTT, alert rows out: with two workers at once."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from contextlib import AsyncExitStack

import psycopg

from tests.integration.conftest import count, eventually, publish_all, running
from tether.config import Settings

BASE = (31.2304, 121.4737)


def offset(north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    return (BASE[0] + north_m / 111_320,
            BASE[1] + east_m / (111_320 * math.cos(math.radians(BASE[0]))))


def enrol(db: psycopg.Connection, n: int,
          kind: str = "wearable") -> tuple[int, list[int], list[str]]:
    tag = uuid.uuid4().hex[:6]
    j = db.execute("INSERT INTO jurisdictions (name, timezone) VALUES (%s, 'Asia/Shanghai')"
                   " RETURNING id", (f"county-{tag}",)).fetchone()[0]
    subjects, devices = [], []
    for i in range(n):
        s = db.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES (%s, %s) RETURNING id",
                       (f"s{i}", j)).fetchone()[0]
        d = f"e2e-{tag}-{i}"
        db.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, %s, %s)", (d, kind, s))
        subjects.append(s)
        devices.append(d)
    return j, subjects, devices


def circle_zone(db: psycopg.Connection, jurisdiction: int, radius: float, kind: str = "exclusion",
                schedule: list | None = None, subject: int | None = None,
                age_s: float = 3600) -> int:
    """A zone created `age_s` ago (zones judge only fixes dated after their creation)."""
    return db.execute(
        "INSERT INTO zones (name, kind, geometry, radius_m, jurisdiction_id, schedule, subject_id,"
        " created_at) VALUES ('z', %s, %s, %s, %s, %s, %s, now() - make_interval(secs => %s))"
        " RETURNING id",
        (kind, json.dumps({"type": "Point", "coordinates": [BASE[1], BASE[0]]}), radius,
         jurisdiction, json.dumps(schedule) if schedule else None, subject, age_s)).fetchone()[0]


def alerts(db: psycopg.Connection, subjects: list[int], type_: str | None = None) -> list[tuple]:
    return db.execute("SELECT subject_id, type, status, confidence, late, breach_count, cleared_at"
                      " FROM alerts WHERE subject_id = ANY(%s) AND (%s::text IS NULL OR type = %s)"
                      " ORDER BY subject_id", (subjects, type_, type_)).fetchall()


def walk_in(root: str, device: str, t0: float) -> list[tuple[str, bytes]]:
    """From 400 m out to the centre of a 200 m circle, 25 m per fix (a second apart: a
    cyclist's pace), 10 m accuracy."""
    return [(f"{root}/devices/{device}/loc",
             json.dumps({"ts": t0 + i, "lat": offset(400 - 25 * i)[0],
                         "lon": BASE[1], "acc": 10}).encode()) for i in range(17)]


async def two_workers(settings: Settings, stack: AsyncExitStack) -> list:
    workers = []
    for n in (1, 2):
        s = settings.model_copy(update={"mqtt_client_id": f"{settings.mqtt_client_id}-{n}"})
        workers.append(await stack.enter_async_context(running(s)))
    for w in workers:
        await asyncio.wait_for(w.rules.loaded.wait(), 10)
    return workers


async def test_two_workers_raise_each_breach_exactly_once(settings: Settings, db,
                                                          publisher) -> None:
    j, subjects, devices = enrol(db, 20)
    circle_zone(db, j, 200)
    t0 = time.time() - 20
    msgs = [m for d in devices for m in walk_in(settings.mqtt_root, d, t0)]
    async with AsyncExitStack() as stack:
        workers = await two_workers(settings, stack)
        await asyncio.sleep(0.3)  # the zone insert's reload
        await publish_all(publisher, msgs)
        await eventually(lambda: count(db, "SELECT count(*) FROM fixes WHERE device_id = ANY(%s)",
                                       devices) == len(msgs), what="all fixes stored")
        await eventually(lambda: len(alerts(db, subjects)) == 20, what="20 alerts")
        # Both workers took part. Counted after a batch's ack and publish, which follow its
        # commit: the rows can be visible a moment before the count.
        await eventually(lambda: all(w.committed_batches for w in workers), 5,
                         lambda: f"both workers took part: "
                                 f"{[w.committed_batches for w in workers]}")
        await publish_all(publisher, msgs[:40])  # duplicates: stored once, judged once
        await asyncio.sleep(0.5)
    rows = alerts(db, subjects)
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("exclusion_entry", "open", "confident", False)] * 20
    assert sorted(r[0] for r in rows) == sorted(subjects)
    assert all(r[5] >= 1 for r in rows)
    history = count(db, "SELECT count(*) FROM alert_history h JOIN alerts a ON a.id = h.alert_id"
                    " WHERE a.subject_id = ANY(%s) AND h.action = 'opened'", subjects)
    assert history == 20


async def test_a_new_zone_reaches_running_workers_within_a_second(settings: Settings, db,
                                                                  publisher) -> None:
    j, subjects, devices = enrol(db, 1)
    async with AsyncExitStack() as stack:
        await two_workers(settings, stack)
        circle_zone(db, j, 300, age_s=0)
        await asyncio.sleep(1.0)
        t = time.time()
        await publish_all(publisher, [(f"{settings.mqtt_root}/devices/{devices[0]}/loc",
                                       json.dumps({"ts": t + i, "lat": BASE[0], "lon": BASE[1],
                                                   "acc": 5}).encode()) for i in range(2)])
        await eventually(lambda: len(alerts(db, subjects)) == 1, what="an alert")


async def test_curfew_is_raised_by_time_alone(settings: Settings, db, publisher) -> None:
    j, subjects, devices = enrol(db, 1)
    async with running(settings) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        await publish_all(publisher, [(f"{settings.mqtt_root}/devices/{devices[0]}/loc",
                                       json.dumps({"ts": time.time() - 5, "lat": offset(2000)[0],
                                                   "lon": BASE[1], "acc": 10}).encode())])
        await eventually(lambda: count(db, "SELECT count(*) FROM fixes WHERE device_id = %s",
                                       devices[0]) == 1, what="the fix")
        # A curfew in force all day, created now: its window starts for this subject now, and
        # the last known fix (2 km from home) decides. No further fix is sent.
        every_day = [{"days": list(range(7)), "start": "00:00", "end": "00:00"}]
        circle_zone(db, j, 150, "inclusion", every_day, subjects[0], age_s=0)
        await eventually(lambda: len(alerts(db, subjects, "curfew")) == 1, timeout=10,
                         what="a curfew alert")
    (row,) = alerts(db, subjects, "curfew")
    assert row[3] == "confident"


async def test_buffered_upload_reveals_a_past_breach_marked_late(settings: Settings, db,
                                                                  publisher) -> None:
    j, subjects, devices = enrol(db, 1)
    circle_zone(db, j, 200)
    t0 = time.time() - 1800
    upload = [{"ts": t0 + 60 * i, "lat": offset(0 if 5 <= i < 10 else 1000)[0], "lon": BASE[1],
               "acc": 10} for i in range(20)]
    async with running(settings) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        await asyncio.sleep(0.3)
        await publish_all(publisher, [(f"{settings.mqtt_root}/devices/{devices[0]}/loc",
                                       json.dumps(upload).encode())])
        await eventually(lambda: len(alerts(db, subjects)) == 1, what="a late alert")
    (row,) = alerts(db, subjects)
    assert row[1:5] == ("exclusion_entry", "open", "confident", True)
    assert row[6] is not None  # the upload also shows the subject leaving again


async def test_silence_is_one_offline_alert_per_outage(settings: Settings, db,
                                                       publisher) -> None:
    _, subjects, devices = enrol(db, 1)
    s = settings.model_copy(update={"offline_wearable_s": 1.0, "tick_interval_s": 0.2})
    topic = f"{s.mqtt_root}/devices/{devices[0]}/loc"

    def fix() -> bytes:
        return json.dumps({"ts": time.time(), "lat": BASE[0], "lon": BASE[1]}).encode()
    async with running(s) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        await publish_all(publisher, [(topic, fix())])
        await eventually(lambda: len(alerts(db, subjects, "device_offline")) == 1,
                         what="offline alert")
        await asyncio.sleep(1.5)
        assert alerts(db, subjects, "device_offline")[0][5] == 1  # no storm while silent
        await publish_all(publisher, [(topic, fix())])
        await eventually(lambda: alerts(db, subjects, "device_offline")[0][6] is not None,
                         what="cleared when heard again")


async def test_a_device_enrolled_while_running_is_judged_from_its_first_fix(
        settings: Settings, db, publisher) -> None:
    async with running(settings) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        j, subjects, devices = enrol(db, 1)
        circle_zone(db, j, 200)
        # At once, before the change notification can have reloaded the world.
        await publish_all(publisher, [(f"{settings.mqtt_root}/devices/{devices[0]}/loc",
                                       json.dumps({"ts": time.time(), "lat": BASE[0],
                                                   "lon": BASE[1], "acc": 5}).encode())])
        await eventually(lambda: len(alerts(db, subjects)) == 1, what="an alert")
