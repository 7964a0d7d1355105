"""Casework through the REST API (contract §6): changes, orders, leave, audit, statistics and
ended sessions, against the real database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from tests.integration.api_world import PASSWORD, ApiWorld, seed
from tests.integration.receivers import free_port
from tether.config import Settings

USERS = ("admin", "cmdCity", "cmdA", "offA", "offB")
NOW = datetime.now(UTC)


async def login(client: httpx.AsyncClient, name: str, tag: str,
                password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/token", data={"username": f"{name}-{tag}",
                                                       "password": password})


@pytest.fixture
async def world(base_settings: Settings) -> AsyncIterator[ApiWorld]:
    with psycopg.connect(base_settings.database_url, autocommit=True) as db:
        ids = seed(db)
    app = create_app(base_settings)
    await app.state.store.open()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        w = ApiWorld(client, ids)
        for user in USERS:
            r = await login(client, user, ids["tag"])
            assert r.status_code == 200, r.text
            w.tokens[user] = r.json()["access_token"]
        yield w
    await app.state.store.close()


async def patch(w: ApiWorld, user: str, url: str, body: dict) -> httpx.Response:
    return await w.client.patch(url, headers=w.auth(user), json=body)


def field_of(r: httpx.Response) -> list:
    return [d["loc"][-1] for d in r.json()["detail"]]


async def test_zone_patch_keeps_the_old_version_and_delete_clears_its_alerts(
        world: ApiWorld, db: psycopg.Connection) -> None:
    w, zid = world, world.ids["zone_countyA"]
    r = await patch(w, "cmdA", f"/api/zones/{zid}", {"radius_m": 250, "name": "school"})
    assert r.status_code == 200, r.text
    assert r.json()["radius_m"] == 250 and r.json()["name"] == "school"
    old = db.execute("SELECT radius_m, valid_to FROM zone_versions WHERE zone_id = %s",
                     (zid,)).fetchall()
    assert [o[0] for o in old] == [100]
    # Bad input names the field; out of scope is a 404; a polygon may not keep a radius.
    r = await patch(w, "cmdA", f"/api/zones/{zid}", {"radius_m": -1})
    assert r.status_code == 422 and "radius_m" in field_of(r)
    r = await patch(w, "cmdA", f"/api/zones/{zid}", {"geometry": {"type": "Polygon",
                    "coordinates": [[[121.5, 31.3], [121.6, 31.3], [121.6, 31.4],
                                     [121.5, 31.3]]]}})
    assert r.status_code == 422 and "geometry" in field_of(r), r.text
    r = await patch(w, "cmdA", f"/api/zones/{zid}", {"name": None})
    assert r.status_code == 422
    assert (await patch(w, "offB", f"/api/zones/{zid}", {"name": "x"})).status_code in (403, 404)
    assert (await patch(w, "cmdA", f"/api/zones/{w.ids['zone_countyB']}",
                        {"name": "x"})).status_code == 404
    # An open breach of the zone, then its deletion: the alert clears, the rows stay.
    aid = db.execute("INSERT INTO alerts (type, severity, subject_id, device_id, zone_id)"
                     " VALUES ('exclusion_entry', 'critical', %s, %s, %s) RETURNING id",
                     (w.ids["subj_countyA"], w.ids["dev_countyA"], zid)).fetchone()[0]
    r = await w.client.delete(f"/api/zones/{zid}", headers=w.auth("cmdA"))
    assert r.status_code == 204
    cleared, status = db.execute("SELECT cleared_at, status FROM alerts WHERE id = %s",
                                 (aid,)).fetchone()
    assert cleared is not None and status == "open"
    assert db.execute("SELECT deleted_at IS NOT NULL FROM zones WHERE id = %s",
                      (zid,)).fetchone()[0]
    assert zid not in {z["id"] for z in (await w.get("cmdA", "/api/zones")).json()}
    assert (await w.client.delete(f"/api/zones/{zid}", headers=w.auth("cmdA"))).status_code == 404
    actions = {a["action"] for a in (await w.get("admin", "/api/audit?limit=50")).json()
               if a["object_type"] == "zone" and a["object_id"] == str(zid)}
    assert actions == {"update", "delete"}


async def test_subject_transfer_and_device_move_stay_in_scope(world: ApiWorld) -> None:
    w, ids = world, world.ids
    sid = ids["subj_countyA"]
    own_zone = (await w.post("cmdA", "/api/zones", {
        "name": "home", "kind": "inclusion", "jurisdiction_id": ids["countyA"], "subject_id": sid,
        "geometry": {"type": "Point", "coordinates": [121.4, 31.2]}, "radius_m": 150})).json()
    # cmdA cannot transfer to county B (not in its scope); the city commander can.
    r = await patch(w, "cmdA", f"/api/subjects/{sid}", {"jurisdiction_id": ids["countyB"]})
    assert r.status_code == 404
    r = await patch(w, "cmdCity", f"/api/subjects/{sid}", {"jurisdiction_id": ids["countyB"],
                                                           "name": "moved"})
    assert r.status_code == 200 and r.json()["jurisdiction_id"] == ids["countyB"], r.text
    assert (await w.get("cmdA", f"/api/subjects/{sid}")).status_code == 404
    assert (await w.get("offB", f"/api/subjects/{sid}")).status_code == 200
    assert own_zone["id"] in {z["id"] for z in (await w.get("offB", "/api/zones")).json()}
    r = await patch(w, "cmdCity", f"/api/subjects/{sid}", {"timezone": "Mars/Olympus"})
    assert r.status_code == 422 and "timezone" in field_of(r)
    # A device moved to another subject, then taken off any.
    dev = ids["dev_city"]
    r = await patch(w, "cmdCity", f"/api/devices/{dev}", {"subject_id": sid})
    assert r.status_code == 200 and r.json()["subject_id"] == sid
    r = await patch(w, "cmdA", f"/api/devices/{ids['dev_countyB']}", {"subject_id": sid})
    assert r.status_code == 404
    r = await patch(w, "cmdCity", f"/api/devices/{dev}", {"subject_id": None})
    assert r.status_code == 200, r.text
    assert r.json()["subject_id"] is None
    assert (await patch(w, "cmdCity", f"/api/devices/{dev}", {})).status_code == 422


async def test_orders_start_renew_end_within_three_months(world: ApiWorld) -> None:
    w, sid = world, world.ids["subj_countyA"]
    start = NOW - timedelta(days=1)
    r = await w.post("offA", f"/api/subjects/{sid}/orders",
                     {"starts_at": start.isoformat(),
                      "ends_at": (start + timedelta(days=95)).isoformat()})
    assert r.status_code == 422 and "more than" not in r.text and "3 months" in r.text
    r = await w.post("offA", f"/api/subjects/{sid}/orders",
                     {"starts_at": start.isoformat(), "ends_at": (NOW + timedelta(days=3))
                      .isoformat(), "basis": "court order 12"})
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["in_force"] and order["expiring"]
    assert (await w.post("offB", f"/api/orders/{order['id']}/renew",
                         {"ends_at": (NOW + timedelta(days=30)).isoformat(),
                          "note": "n"})).status_code == 404
    r = await w.post("offA", f"/api/orders/{order['id']}/renew",
                     {"ends_at": (NOW + timedelta(days=200)).isoformat(), "note": "again"})
    assert r.status_code == 422 and "ends_at" in field_of(r)
    r = await w.post("offA", f"/api/orders/{order['id']}/renew",
                     {"ends_at": (NOW + timedelta(days=60)).isoformat()})
    assert r.status_code == 422 and "note" in field_of(r)
    r = await w.post("offA", f"/api/orders/{order['id']}/renew",
                     {"ends_at": (NOW + timedelta(days=60)).isoformat(), "note": "renewed"})
    assert r.status_code == 200 and not r.json()["expiring"]
    assert r.json()["renewals"][0]["note"] == "renewed"
    r = await w.post("offA", f"/api/orders/{order['id']}/end", {"note": "released early"})
    assert r.status_code == 200 and r.json()["ended_at"] and not r.json()["in_force"]
    assert (await w.post("offA", f"/api/orders/{order['id']}/end",
                         {"note": "again"})).status_code == 409
    listed = (await w.get("offA", f"/api/subjects/{sid}/orders")).json()
    assert [o["id"] for o in listed] == [order["id"]]


async def test_leave_is_decided_by_someone_else_over_the_subject(
        world: ApiWorld, db: psycopg.Connection) -> None:
    w, sid = world, world.ids["subj_countyA"]
    body = {"starts_at": NOW.isoformat(), "ends_at": (NOW + timedelta(days=2)).isoformat(),
            "destination": {"type": "Point", "coordinates": [120.15, 30.28]}, "radius_m": 2000,
            "reason": "mother in hospital"}
    r = await w.post("offA", f"/api/subjects/{sid}/leaves", {**body, "radius_m": None})
    assert r.status_code == 422 and "destination" in r.text
    r = await w.post("offA", f"/api/subjects/{sid}/leaves", body)
    assert r.status_code == 201 and r.json()["status"] == "requested", r.text
    lid = r.json()["id"]
    assert (await w.post("offA", f"/api/leaves/{lid}/approve")).status_code == 403
    assert (await w.post("offB", f"/api/leaves/{lid}/approve")).status_code in (403, 404)
    r = await w.post("cmdA", f"/api/leaves/{lid}/approve", {"note": "ok"})
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    zone = r.json()["zone_id"]
    assert db.execute("SELECT kind, subject_id, leave_id FROM zones WHERE id = %s",
                      (zone,)).fetchone() == ("inclusion", sid, lid)
    assert (await w.post("cmdA", f"/api/leaves/{lid}/approve")).status_code == 409
    assert (await w.client.delete(f"/api/zones/{zone}", headers=w.auth("cmdA"))
            ).status_code == 409
    r = await w.post("offA", f"/api/leaves/{lid}/return")
    assert r.status_code == 200 and r.json()["returned_at"]
    assert db.execute("SELECT deleted_at <= now() FROM zones WHERE id = %s", (zone,)).fetchone()[0]
    # Another, requested by a commander, rejected by the city's.
    lid2 = (await w.post("cmdA", f"/api/subjects/{sid}/leaves", body)).json()["id"]
    assert (await w.post("cmdCity", f"/api/leaves/{lid2}/reject")).json()["status"] == "rejected"
    assert (await w.post("offA", f"/api/leaves/{lid2}/cancel")).status_code == 409
    statuses = [lv["status"] for lv in (await w.get("offA", f"/api/subjects/{sid}/leaves")).json()]
    assert sorted(statuses) == ["rejected", "returned"]


async def test_statistics_roll_up_the_tree_with_a_period(world: ApiWorld,
                                                         db: psycopg.Connection) -> None:
    w, ids = world, world.ids
    # A province above the city: its commander's numbers include the city and both counties.
    prov = db.execute("INSERT INTO jurisdictions (name) VALUES ('province') RETURNING id"
                      ).fetchone()[0]
    city2 = db.execute("INSERT INTO jurisdictions (name, parent_id) VALUES ('c2', %s)"
                       " RETURNING id", (prov,)).fetchone()[0]
    county = db.execute("INSERT INTO jurisdictions (name, parent_id) VALUES ('k', %s)"
                        " RETURNING id", (city2,)).fetchone()[0]
    subjects = [db.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES ('s', %s)"
                           " RETURNING id", (j,)).fetchone()[0] for j in (county, county, city2)]
    opened = NOW - timedelta(hours=2)
    for s, ack_s in zip(subjects, (60, 180, None), strict=True):
        a = db.execute("INSERT INTO alerts (type, severity, subject_id, opened_at) VALUES"
                       " ('curfew', 'high', %s, %s) RETURNING id", (s, opened)).fetchone()[0]
        if ack_s:
            db.execute("INSERT INTO alert_history (alert_id, action, at) VALUES"
                       " (%s, 'acknowledged', %s)", (a, opened + timedelta(seconds=ack_s)))
    db.execute("INSERT INTO monitoring_orders (subject_id, starts_at, ends_at) VALUES"
               " (%s, now() - interval '1 day', now() + interval '3 days')", (subjects[0],))
    db.execute("INSERT INTO users (username, password_hash, role, jurisdiction_id) SELECT"
               " %s, password_hash, 'commander', %s FROM users WHERE id = %s",
               (f"cmdProv-{ids['tag']}", prov, ids["cmdA"]))
    tok = (await login(w.client, "cmdProv", ids["tag"])).json()["access_token"]
    w.tokens["cmdProv"] = tok
    rows = {r["jurisdiction_id"]: r for r in (await w.get("cmdProv", "/api/stats")).json()}
    assert set(rows) == {prov, city2, county}
    assert (rows[prov]["subjects"], rows[city2]["subjects"], rows[county]["subjects"]) == (3, 3, 2)
    assert rows[prov]["alerts_opened"] == {"curfew": 3}
    assert rows[prov]["median_ack_s"] == pytest.approx(120)
    assert rows[county]["median_ack_s"] == pytest.approx(120)
    assert rows[prov]["orders_expiring"] == 1 and rows[prov]["orders_in_force"] == 1
    later = (NOW + timedelta(hours=1)).isoformat()
    r = await w.get("cmdProv", "/api/stats", params={"since": later})
    assert r.status_code == 422 and "until" in field_of(r)
    r = await w.get("cmdProv", "/api/stats", params={"since": (NOW - timedelta(hours=1))
                                                      .isoformat()})
    assert {x["jurisdiction_id"]: x for x in r.json()}[prov]["alerts_opened"] == {}
    r = await w.get("cmdProv", "/api/stats", headers={"Accept": "text/csv"})
    assert r.status_code == 200 and r.text.startswith("jurisdiction_id,name,parent_id")
    assert len(r.text.strip().splitlines()) == 4
    # The county commander of the seeded city sees none of the province.
    assert prov not in {x["jurisdiction_id"] for x in (await w.get("cmdA", "/api/stats")).json()}


async def test_audit_shows_reads_of_tracks_and_is_scoped(world: ApiWorld) -> None:
    w, ids = world, world.ids
    window = {"from": "2026-05-01T00:00:00Z", "to": "2026-05-02T00:00:00Z"}
    assert (await w.get("offB", f"/api/subjects/{ids['subj_countyB']}/track",
                        params=window)).status_code == 200
    assert (await w.get("offA", f"/api/subjects/{ids['subj_countyA']}/track",
                        params=window)).status_code == 200
    assert (await w.get("offA", "/api/correlate", params={
        **window, "lat": 31.2, "lon": 121.4, "radius_m": 500})).status_code == 200
    assert (await w.get("offA", "/api/audit")).status_code == 403
    seen = (await w.get("cmdA", "/api/audit")).json()
    reads = {(a["username"].split("-")[0], a["action"], a["object_id"]) for a in seen}
    assert ("offA", "read_track", str(ids["subj_countyA"])) in reads
    assert ("offA", "correlate", None) in reads
    assert not any(a["username"] and a["username"].startswith("offB-") for a in seen)
    by_subject = (await w.get("admin", "/api/audit",
                              params={"subject_id": ids["subj_countyB"]})).json()
    assert [a["action"] for a in by_subject] == ["read_track"]
    assert json.dumps(by_subject[0]["after"])  # what was read: the window and point count
    r = await w.get("admin", "/api/audit", params={"limit": 0})
    assert r.status_code == 422 and "limit" in field_of(r)


@pytest.mark.timeout(60)
async def test_a_new_password_or_disabling_ends_sessions_and_websockets(
        world: ApiWorld, base_settings: Settings) -> None:
    """Through a real server: REST refuses the old token at once, an open websocket closes
    within the re-check period (the contract allows 60 s; here 0.5 s)."""
    ids, port = world.ids, free_port()
    app = create_app(base_settings.model_copy(update={"session_recheck_s": 0.5}))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(srv.serve(), name="test-casework-server")
    while not srv.started:  # noqa: ASYNC110 - uvicorn offers only this flag
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            w = ApiWorld(c, ids, dict(world.tokens))
            token = (await login(c, "offA", ids["tag"])).json()["access_token"]
            w.tokens["offA"] = token
            async with connect(f"ws://127.0.0.1:{port}/ws/alerts?token={token}") as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
                r = await patch(w, "offA", f"/api/users/{ids['offA']}",
                                {"password": "a new long secret"})
                assert r.status_code == 200, r.text
                assert (await w.get("offA", "/api/subjects")).status_code == 401
                await _closed(ws, "sessions ended")
            fresh = await login(c, "offA", ids["tag"], "a new long secret")
            assert fresh.status_code == 200
            w.tokens["offA"] = fresh.json()["access_token"]
            assert (await w.get("offA", "/api/subjects")).status_code == 200
            # An officer may not change its own role, nor disable anyone.
            assert (await patch(w, "offA", f"/api/users/{ids['offA']}",
                                {"role": "admin"})).status_code == 403
            async with connect(f"ws://127.0.0.1:{port}/ws/alerts?token="
                               f"{w.tokens['offA']}") as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
                r = await patch(w, "admin", f"/api/users/{ids['offA']}", {"disabled": True})
                assert r.status_code == 200 and r.json()["disabled"]
                await _closed(ws, "disabled")
            assert (await w.get("offA", "/api/subjects")).status_code == 401
            assert (await login(c, "offA", ids["tag"], "a new long secret")).status_code == 401
    finally:
        srv.should_exit = True
        await task


async def _closed(ws, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1008 and why in closed.value.rcvd.reason
    assert time.monotonic() - started < 5
