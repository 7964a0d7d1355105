"""The REST API against the real database: each user reads and writes exactly what the
jurisdiction tree allows, on every endpoint; bad input gets a clear 422."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from api.app import create_app
from tests.integration.api_world import PASSWORD, SEES, ApiWorld, T, seed
from tests.integration.conftest import count
from tether.config import Settings

PLACES = ("city", "countyA", "countyB")
USERS = tuple(SEES)


@pytest.fixture(scope="module")
async def world(base_settings: Settings) -> AsyncIterator[ApiWorld]:
    import psycopg
    with psycopg.connect(base_settings.database_url, autocommit=True) as db:
        ids = seed(db)
    app = create_app(base_settings)
    await app.state.store.open()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        w = ApiWorld(client, ids)
        for user in USERS:
            r = await client.post("/api/auth/token", data={
                "username": f"{user}-{ids['tag']}", "password": PASSWORD})
            assert r.status_code == 200, r.text
            w.tokens[user] = r.json()["access_token"]
        yield w
    await app.state.store.close()


def visible(user: str, key: str, w: ApiWorld) -> set:
    return {w.ids[f"{key}_{p}"] for p in SEES[user]}


@pytest.mark.parametrize("user", USERS)
async def test_reads_are_scoped_on_every_endpoint(world: ApiWorld, user: str) -> None:
    w = world
    mine = lambda key: visible(user, key, w)  # noqa: E731
    ours = {w.ids[f"subj_{p}"] for p in PLACES}
    subjects = (await w.get(user, "/api/subjects")).json()
    assert {s["id"] for s in subjects} & ours == mine("subj")
    for p in PLACES:
        sid = w.ids[f"subj_{p}"]
        expect = 200 if p in SEES[user] else 404
        r = await w.get(user, f"/api/subjects/{sid}")
        assert r.status_code == expect, (p, r.text)
        if expect == 200:
            assert r.json()["last_position"]["device_id"] == w.ids[f"dev_{p}"]
        r = await w.get(user, f"/api/subjects/{sid}/track", params={
            "from": T.isoformat(), "to": (T + timedelta(hours=1)).isoformat()})
        assert r.status_code == expect
        if expect == 200:
            assert len(r.json()["features"]) == 10
    alerts = (await w.get(user, "/api/alerts")).json()
    assert {a["id"] for a in alerts} & {w.ids[f"alert_{p}"] for p in PLACES} == mine("alert")
    zones = (await w.get(user, "/api/zones")).json()
    assert {z["id"] for z in zones} & {w.ids[f"zone_{p}"] for p in PLACES} == mine("zone")
    near = (await w.get(user, "/api/correlate", params={
        "lat": 31.2, "lon": 121.4, "radius_m": 50, "from": T.isoformat(),
        "to": (T + timedelta(hours=1)).isoformat()})).json()
    assert {a["subject_id"] for a in near} & ours == mine("subj")
    juris = {j["id"] for j in (await w.get(user, "/api/jurisdictions")).json()}
    stats = {s["jurisdiction_id"] for s in (await w.get(user, "/api/stats")).json()}
    expected = {w.ids[p] for p in SEES[user]}
    assert juris & {w.ids[p] for p in PLACES} == expected == stats & {w.ids[p] for p in PLACES}
    rejects = await w.get(user, "/api/ingest/rejects")
    assert rejects.status_code == (200 if user == "admin" else 403)


WRITERS = {"admin", "cmdCity", "cmdA"}


@pytest.mark.parametrize("user", USERS)
async def test_writes_are_scoped(world: ApiWorld, user: str, base_settings: Settings) -> None:
    w = world
    for p in PLACES:
        allowed = user in WRITERS and p in SEES[user]
        expect = 201 if allowed else (403 if user not in WRITERS else 404)
        r = await w.post(user, "/api/subjects", {"name": f"new by {user}",
                                                 "jurisdiction_id": w.ids[p]})
        assert r.status_code == expect, (p, r.text)
        dev = f"w-{w.ids['tag']}-{user}-{p}"
        r = await w.post(user, "/api/devices", {"id": dev, "kind": "wearable",
                                                "subject_id": w.ids[f"subj_{p}"]})
        assert r.status_code == expect, (p, r.text)
        r = await w.post(user, "/api/zones", {
            "name": "school", "kind": "exclusion", "jurisdiction_id": w.ids[p],
            "geometry": {"type": "Point", "coordinates": [121.4, 31.2]}, "radius_m": 200,
            "buffer_m": 50})
        assert r.status_code == expect, (p, r.text)
    r = await w.post(user, "/api/jurisdictions", {"name": "x", "parent_id": w.ids["city"]})
    assert r.status_code == (201 if user == "admin" else 403)
    r = await w.post(user, "/api/users", {"username": f"u-{user}-{w.ids['tag']}",
                                          "password": "long enough", "role": "officer",
                                          "jurisdiction_id": w.ids["countyA"]})
    assert r.status_code == (201 if user == "admin" else 403)


@pytest.mark.parametrize("user", USERS)
async def test_alert_actions_are_scoped(world: ApiWorld, user: str, db) -> None:
    w = world
    for p in PLACES:
        aid = db.execute("INSERT INTO alerts (type, severity, subject_id) VALUES"
                         " ('curfew', 'high', %s) ON CONFLICT DO NOTHING RETURNING id",
                         (w.ids[f"subj_{p}"],)).fetchone()
        aid = aid[0] if aid else db.execute(
            "SELECT id FROM alerts WHERE subject_id = %s AND type = 'curfew'"
            " AND status <> 'resolved'", (w.ids[f"subj_{p}"],)).fetchone()[0]
        r = await w.post(user, f"/api/alerts/{aid}/ack", {"note": "on my way"})
        if p not in SEES[user]:
            assert r.status_code == 404
            continue
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "acknowledged"
        r = await w.post(user, f"/api/alerts/{aid}/resolve", {"note": "false alarm: at home"})
        assert r.status_code == 200 and r.json()["status"] == "resolved"
        assert [h["action"] for h in r.json()["history"]] == ["acknowledged", "resolved"]
        r = await w.post(user, f"/api/alerts/{aid}/resolve", {"note": "again"})
        assert r.status_code == 409


async def test_every_write_is_audited(world: ApiWorld, db) -> None:
    w = world
    before = count(db, "SELECT count(*) FROM audit_log WHERE user_id = %s", w.ids["cmdA"])
    r = await w.post("cmdA", "/api/subjects", {"name": "audited",
                                               "jurisdiction_id": w.ids["countyA"]})
    assert r.status_code == 201
    row = db.execute("SELECT action, object_type, object_id, after FROM audit_log"
                     " WHERE user_id = %s ORDER BY id DESC LIMIT 1", (w.ids["cmdA"],)).fetchone()
    assert count(db, "SELECT count(*) FROM audit_log WHERE user_id = %s",
                 w.ids["cmdA"]) == before + 1
    assert row[:3] == ("create", "subject", str(r.json()["id"]))
    assert row[3]["name"] == "audited"


BAD_ZONES = [
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, {},
     "Self-intersection[0.5 0.5]"),
    ({"type": "Point", "coordinates": [121.4, 31.2]}, {}, "radius_m"),
    ({"type": "Point", "coordinates": [121.4, 31.2]}, {"radius_m": -5}, "greater than 0"),
    ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, {}, "Polygon"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, {}, "GeoJSON"),
    ({"type": "Point", "coordinates": [121.4, 31.2]},
     {"radius_m": 100, "schedule": [{"days": [8], "start": "22:00", "end": "06:00"}]},
     "weekdays 0..6"),
    ({"type": "Point", "coordinates": [121.4, 31.2]},
     {"radius_m": 100, "schedule": [{"days": [1], "start": "22:00", "end": "6pm"}]}, "HH:MM"),
    ({"type": "Point", "coordinates": [121.4, 31.2]}, {"radius_m": 100, "kind": "inclusion",
                                                       "buffer_m": 20}, "exclusion"),
]


@pytest.mark.parametrize(("geometry", "extra", "message"), BAD_ZONES)
async def test_bad_zones_get_a_clear_422(world: ApiWorld, geometry, extra, message) -> None:
    body = {"name": "z", "kind": "exclusion", "jurisdiction_id": world.ids["countyA"],
            "geometry": geometry, **extra}
    r = await world.post("admin", "/api/zones", body)
    assert r.status_code == 422
    assert message in r.text, r.text


@pytest.mark.parametrize(("url", "body", "message"), [
    ("/api/subjects", {"name": "x", "jurisdiction_id": 1, "timezone": "Mars/Olympus"},
     "unknown time zone"),
    ("/api/devices", {"id": "bad id!", "kind": "wearable", "subject_id": 1}, "pattern"),
    ("/api/devices", {"id": "ok", "kind": "toaster", "subject_id": 1}, "phone"),
    ("/api/users", {"username": "x", "password": "longenough", "role": "officer"},
     "need a jurisdiction_id"),
    ("/api/subjects", {"name": "", "jurisdiction_id": 1}, "at least 1 character"),
    ("/api/subjects", {"name": "x", "jurisdiction_id": 1, "colour": "red"}, "Extra inputs"),
    ("/api/subjects", {"name": "a\x00b", "jurisdiction_id": 1}, "NUL characters"),
])
async def test_invalid_bodies_get_a_clear_422(world: ApiWorld, url, body, message) -> None:
    r = await world.post("admin", url, body)
    assert r.status_code == 422 and message in r.text, r.text


async def test_victim_link_needs_a_victim_device(world: ApiWorld) -> None:
    w = world
    sid = w.ids["subj_countyA"]
    r = await w.post("cmdA", f"/api/subjects/{sid}/victims",
                     {"device_id": w.ids["dev_countyA"], "radius_m": 500})
    assert r.status_code == 422
    await w.post("cmdA", "/api/devices", {"id": f"v-{w.ids['tag']}", "kind": "victim",
                                          "subject_id": sid})
    r = await w.post("cmdA", f"/api/subjects/{sid}/victims",
                     {"device_id": f"v-{w.ids['tag']}", "radius_m": 500})
    assert r.status_code == 201
    r = await w.post("offB", f"/api/subjects/{w.ids['subj_countyB']}/victims",
                     {"device_id": f"v-{w.ids['tag']}", "radius_m": 500})
    assert r.status_code == 403


async def test_tokens_and_login_limits(world: ApiWorld, base_settings: Settings) -> None:
    w = world
    assert (await w.client.get("/api/subjects")).status_code == 401
    forged = w.tokens["offA"][:-4] + "AAAA"
    assert (await w.client.get("/api/subjects", headers={
        "Authorization": f"Bearer {forged}"})).status_code == 401
    user = f"offB-{w.ids['tag']}"
    for _ in range(base_settings.login_max_failures):
        r = await w.client.post("/api/auth/token", data={"username": user, "password": "nope"})
        assert r.status_code == 401
    r = await w.client.post("/api/auth/token", data={"username": user, "password": PASSWORD})
    assert r.status_code == 429  # even the right password, from this client, for a while
    assert (await w.client.post("/api/auth/token", data={
        "username": "nobody-at-all", "password": "x"})).status_code == 401


async def test_disabled_user_is_out_at_once(world: ApiWorld, db) -> None:
    w = world
    assert (await w.get("offA", "/api/subjects")).status_code == 200
    db.execute("UPDATE users SET disabled = true WHERE id = %s", (w.ids["offA"],))
    try:
        assert (await w.get("offA", "/api/subjects")).status_code == 401
    finally:
        db.execute("UPDATE users SET disabled = false WHERE id = %s", (w.ids["offA"],))


async def test_track_is_thinned_and_exports_csv(world: ApiWorld, db) -> None:
    w = world
    dev, sid = w.ids["dev_countyB"], w.ids["subj_countyB"]
    db.execute("INSERT INTO fixes (device_id, fix_time, received_at, lat, lon)"
               " SELECT %s, %s + g * interval '1 second', now(), 31.3, 121.5"
               " FROM generate_series(1, 20000) g", (dev, T + timedelta(days=1)))
    window = {"from": (T + timedelta(days=1)).isoformat(),
              "to": (T + timedelta(days=2)).isoformat(), "max_points": 100}
    r = await w.get("offB", f"/api/subjects/{sid}/track", params=window)
    times = [f["properties"]["ts"] for f in r.json()["features"]]
    assert 50 <= len(times) <= 100 and times == sorted(times)
    r = await w.get("offB", f"/api/subjects/{sid}/track", params=window,
                    headers={**w.auth("offB"), "Accept": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith("device_id,fix_time,lat,lon")
    r = await w.get("offB", "/api/alerts", headers={**w.auth("offB"), "Accept": "text/csv"})
    assert r.text.splitlines()[0].startswith("id,type,severity,status")
    r = await w.get("offB", f"/api/subjects/{sid}/track", params={
        "from": "2026-05-02T00:00:00", "to": "2026-05-01T00:00:00+00:00"})
    assert r.status_code == 422


async def test_database_outage_answers_503(base_settings: Settings) -> None:
    s = base_settings.model_copy(update={"database_url":
                                         "postgresql://tether:tether@127.0.0.1:1/none"})
    app = create_app(s)
    app.state.store.pool.timeout = 1
    await app.state.store.open()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            r = await asyncio.wait_for(c.post("/api/auth/token", data={
                "username": "a", "password": "b"}), 10)
        assert r.status_code == 503 and "database unavailable" in r.text
    finally:
        await app.state.store.close()


async def test_a_value_the_database_refuses_is_a_422_not_a_500(world: ApiWorld) -> None:
    r = await world.get("admin", "/api/alerts", params={"type": "a\x00b"})
    assert r.status_code == 422 and "refused" in r.text
