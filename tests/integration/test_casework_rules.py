"""Casework reaching a running worker's rules (contract §6): changes made through the REST API,
fixes over MQTT, alert rows out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from api.app import create_app
from api.auth import hash_password
from geofence.types import Fix
from tests.integration.conftest import count, eventually, publish_all, running
from tests.integration.test_rules_e2e import BASE, alerts, circle_zone, enrol, offset
from tether.config import Settings

PASSWORD = "casework password"


class Api:
    def __init__(self, client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    async def call(self, method: str, url: str, user: str = "admin",
                   body: dict | None = None) -> dict | None:
        r = await self.client.request(method, url, json=body,
                                      headers={"Authorization": f"Bearer {self.tokens[user]}"})
        assert r.status_code < 300, (url, r.status_code, r.text)
        return r.json() if r.content else None


@pytest.fixture
async def api(base_settings: Settings, db: psycopg.Connection) -> AsyncIterator[Api]:
    """An admin and a commander (of a root jurisdiction: they see everything enrolled here)."""
    tag = uuid.uuid4().hex[:6]
    pw = hash_password(PASSWORD)
    for name, role in (("admin", "admin"), ("officer", "admin")):
        db.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s)",
                   (f"{name}-{tag}", pw, role))
    app = create_app(base_settings)
    await app.state.store.open()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        tokens = {}
        for name in ("admin", "officer"):
            r = await client.post("/api/auth/token", data={"username": f"{name}-{tag}",
                                                           "password": PASSWORD})
            tokens[name] = r.json()["access_token"]
        yield Api(client, tokens)
    await app.state.store.close()


def loc(settings: Settings, device: str, t: float, north_m: float, east_m: float = 0.0,
        acc: float = 5) -> tuple[str, bytes]:
    lat, lon = offset(north_m, east_m)
    return (f"{settings.mqtt_root}/devices/{device}/loc",
            json.dumps({"ts": t, "lat": lat, "lon": lon, "acc": acc}).encode())


def stored(db: psycopg.Connection, device: str) -> int:
    return count(db, "SELECT count(*) FROM fixes WHERE device_id = %s", device)


@pytest.mark.timeout(60)
async def test_a_zone_edited_then_deleted_mid_stream(settings: Settings, db, publisher,
                                                     api: Api) -> None:
    j, subjects, (dev,) = enrol(db, 1)
    zid = circle_zone(db, j, 100)
    async with running(settings) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        t0 = time.time()
        await publish_all(publisher, [loc(settings, dev, t0 - 120 + i, 300) for i in range(3)])
        await eventually(lambda: stored(db, dev) == 3, what="fixes far away")
        await api.call("PATCH", f"/api/zones/{zid}", body={"radius_m": 200})
        edited = time.time()
        await eventually(lambda: zid in worker.rules.world.zones.history, timeout=2,
                         what="the edit in the worker's world within a second or two")
        # Dated before the edit, 150 m out: judged on the 100 m circle it was then.
        await publish_all(publisher, [loc(settings, dev, edited - 30, 150)])
        await eventually(lambda: stored(db, dev) == 4, what="the fix dated before the edit")
        await asyncio.sleep(0.3)
        assert alerts(db, subjects) == []
        # Dated after it: the 200 m circle.
        await publish_all(publisher, [loc(settings, dev, edited + 1, 150)])
        await eventually(lambda: len(alerts(db, subjects, "exclusion_entry")) == 1,
                         what="an alert on the edited zone")
        await api.call("DELETE", f"/api/zones/{zid}")
        (row,) = alerts(db, subjects)
        assert row[2] == "open" and row[6] is not None  # cleared at once, kept for history
        await eventually(lambda: worker.rules.world.zones.by_id[zid].zone.deleted_at is not None,
                         timeout=2, what="the deletion in the worker's world")
        deleted = time.time()
        await publish_all(publisher, [loc(settings, dev, deleted + 1 + i, 0) for i in range(3)])
        await eventually(lambda: stored(db, dev) == 8, what="fixes in the deleted zone")
        await asyncio.sleep(0.3)
    (row,) = alerts(db, subjects)
    assert row[5] == 1 and row[6] is not None  # no repeat, no reopening


@pytest.mark.timeout(60)
async def test_a_moved_device_is_judged_for_its_new_subject_only(settings: Settings, db,
                                                                  publisher, api: Api) -> None:
    j, (a, b), (dev, _) = enrol(db, 2)
    circle_zone(db, j, 100, subject=a)  # A's exclusion zone at BASE
    zb = db.execute("INSERT INTO zones (name, kind, geometry, radius_m, jurisdiction_id,"
                    " subject_id, created_at) VALUES ('b', 'exclusion', %s, 100, %s, %s,"
                    " now() - interval '1 hour') RETURNING id",
                    (json.dumps({"type": "Point", "coordinates": [offset(0, 1000)[1], BASE[0]]}),
                     j, b)).fetchone()[0]
    async with running(settings) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        t0 = time.time()
        await publish_all(publisher, [loc(settings, dev, t0, 0)])
        await eventually(lambda: len(alerts(db, [a])) == 1, what="A's breach")
        await api.call("PATCH", f"/api/devices/{dev}", body={"subject_id": b})
        await eventually(lambda: worker.rules.owner.get(dev) == [b], timeout=2,
                         what="the move in the worker's world")
        # In A's zone again: A's rules no longer see this device, B has no zone here.
        await publish_all(publisher, [loc(settings, dev, t0 + 10 + i, 0) for i in range(2)])
        await eventually(lambda: stored(db, dev) == 3, what="fixes after the move")
        await asyncio.sleep(0.3)
        assert alerts(db, [b]) == [] and alerts(db, [a])[0][5] == 1
        await publish_all(publisher, [loc(settings, dev, t0 + 60, 0, 1000)])  # 25 m/s
        await eventually(lambda: len(alerts(db, [b])) == 1, what="B's breach of B's zone")
    assert db.execute("SELECT zone_id FROM alerts WHERE subject_id = %s", (b,)).fetchone()[0] == zb
    assert alerts(db, [a])[0][5] == 1


@pytest.mark.timeout(60)
async def test_an_ended_order_stops_the_rules_and_a_renewed_one_warns_again(
        settings: Settings, db, publisher, api: Api) -> None:
    j, (sid,), (dev,) = enrol(db, 1)
    circle_zone(db, j, 100)
    now = datetime.now(UTC)
    async with running(settings) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        order = await api.call("POST", f"/api/subjects/{sid}/orders", body={
            "starts_at": (now - timedelta(days=30)).isoformat(),
            "ends_at": (now + timedelta(days=3)).isoformat()})
        # Ending within 7 days: order_expiring once, within a second or so of its creation.
        await eventually(lambda: len(alerts(db, [sid], "order_expiring")) == 1, timeout=5,
                         what="order_expiring")
        await api.call("POST", f"/api/orders/{order['id']}/renew",
                       body={"ends_at": (now + timedelta(days=60)).isoformat(), "note": "more"})
        await eventually(lambda: alerts(db, [sid], "order_expiring")[0][6] is not None,
                         timeout=5, what="the warning cleared by the renewal")
        assert alerts(db, [sid], "order_expiring")[0][5] == 1
        await api.call("POST", f"/api/orders/{order['id']}/end", body={"note": "released"})
        await eventually(lambda: not worker.rules.world.subjects[sid].monitored(
            datetime.now(UTC)), timeout=2, what="the end in the worker's world")
        t, batches = time.time(), worker.committed_batches
        await publish_all(publisher, [loc(settings, dev, t + i, 0) for i in range(3)])
        await eventually(lambda: worker.committed_batches > batches, what="the batch")
        await asyncio.sleep(0.5)
        # Not judged: no breach of the zone the device stands in.
        assert alerts(db, [sid], "exclusion_entry") == []
        unmonitored = "SELECT coalesce(sum(n), 0) FROM unmonitored_reports WHERE device_id = %s"
        # Not kept as positions either: only counted, per device and day, with the batch.
        assert stored(db, dev) == 0 and count(db, unmonitored, dev) == 3
        # The writer's filter itself (ingest.filters.outside_orders), on a later fix.
        late = [Fix(dev, datetime.fromtimestamp(t + 5, UTC), BASE[0], BASE[1],
                    datetime.now(UTC))]

        class Message:
            fixes = late
        msg = Message()
        assert sum((await worker.rules.drop_unmonitored([msg])).values()) == 1
        assert msg.fixes == []


@pytest.mark.timeout(60)
async def test_leave_travel_without_alert_then_one_overrun(settings: Settings, db, publisher,
                                                           api: Api) -> None:
    j, (sid,), (dev,) = enrol(db, 1)
    circle_zone(db, j, 200, "inclusion", subject=sid)  # home
    s = settings.model_copy(update={"leave_grace_s": 2.0, "leave_travel_s": 600.0,
                                    "tick_interval_s": 0.2})
    async with running(s) as worker:
        await asyncio.wait_for(worker.rules.loaded.wait(), 10)
        now = datetime.now(UTC)
        leave = await api.call("POST", f"/api/subjects/{sid}/leaves", user="officer", body={
            "starts_at": (now - timedelta(seconds=205)).isoformat(),
            "ends_at": (now + timedelta(seconds=6)).isoformat(),
            "destination": {"type": "Point", "coordinates": [offset(5000)[1], offset(5000)[0]]},
            "radius_m": 1000, "reason": "a funeral"})
        approved = await api.call("POST", f"/api/leaves/{leave['id']}/approve")
        assert approved["status"] == "approved"
        await eventually(lambda: worker.rules.world.subjects[sid].leaves, timeout=2,
                         what="the leave in the worker's world")
        t = time.time()
        # Travelling 5 km north to the destination at 25 m/s (fixes 10 s apart, dated since
        # the leave's start), then staying there: no inclusion_exit of home or destination.
        trip = [loc(s, dev, t - 4 + 10 * i - 200, 250 * i) for i in range(21)]
        stay = [loc(s, dev, t + i * 0.5, 5000 + 20 * i) for i in range(3)]
        await publish_all(publisher, trip)
        await eventually(lambda: stored(db, dev) == 21, what="the trip")
        await publish_all(publisher, stay)
        await eventually(lambda: stored(db, dev) == 24, what="the stay")
        await asyncio.sleep(0.3)
        assert alerts(db, [sid]) == []
        # Not back by the end plus 2 s: one leave_overrun, by time alone.
        await eventually(lambda: len(alerts(db, [sid], "leave_overrun")) == 1, timeout=15,
                         what="leave_overrun")
        await asyncio.sleep(1.0)
    rows = alerts(db, [sid])
    assert [r[1] for r in rows] == ["leave_overrun"] and rows[0][5] == 1
    details = db.execute("SELECT details FROM alerts WHERE subject_id = %s",
                         (sid,)).fetchone()[0]
    assert details["leave_id"] == leave["id"] and details["reason"] == "not back"
