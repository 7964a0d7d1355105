"""An alert's life through `alerts.store`, on the real database: the rules' open, repeat and
clear (ingest's transaction), an officer's ack and resolve (the API's), escalation (the
timers'), and one JSON shape for REST, websockets and notifications."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from alerts.lifecycle import Action, IllegalTransition
from alerts.store import apply_user_action, escalate_due, record_rule_events
from api.app import create_app
from api.store.live import alert_with_path
from geofence.rules import RuleEvent
from tests.integration.api_world import PASSWORD, ApiWorld, seed
from tether.config import Settings

T = datetime(2026, 5, 1, 12, tzinfo=UTC)
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def people(db: psycopg.Connection) -> Iterator[dict]:
    """A county under a city, its officer (webhook and e-mail), the city's commander, a subject.
    Their notifications are closed afterwards: the run's database is shared, and another test's
    delivery worker must not send them to its own receivers."""
    p = _people(db)
    yield p
    db.execute("UPDATE notifications SET status = 'failed' WHERE status = 'pending' AND"
               " alert_id IN (SELECT id FROM alerts WHERE subject_id = %s)", (p["subject"],))


def _people(db: psycopg.Connection) -> dict:
    tag = uuid.uuid4().hex[:6]

    def one(sql: str, *a: object) -> int:
        return db.execute(sql, a).fetchone()[0]

    city = one("INSERT INTO jurisdictions (name) VALUES (%s) RETURNING id", f"c-{tag}")
    county = one("INSERT INTO jurisdictions (name, parent_id) VALUES (%s, %s) RETURNING id",
                 f"k-{tag}", city)
    officer = one("INSERT INTO users (username, password_hash, role, jurisdiction_id,"
                  " notify_webhook, email) VALUES (%s, 'x', 'officer', %s,"
                  " 'http://127.0.0.1:9/h', 'o@x.test') RETURNING id", f"o-{tag}", county)
    boss = one("INSERT INTO users (username, password_hash, role, jurisdiction_id,"
               " notify_webhook) VALUES (%s, 'x', 'commander', %s, 'http://127.0.0.1:9/b')"
               " RETURNING id", f"b-{tag}", city)
    subject = one("INSERT INTO subjects (name, jurisdiction_id, officer_id) VALUES"
                  " ('s', %s, %s) RETURNING id", county, officer)
    return {"officer": officer, "boss": boss, "subject": subject}


def breach(subject: int, action: str, minute: int) -> RuleEvent:
    return RuleEvent(action, "inclusion_exit", subject, T + timedelta(minutes=minute), "w-1",
                     None, "confident", False, {"lat": 31.2, "lon": 121.4, "acc": 8}, {"d": 1})


def outbox(db: psycopg.Connection, alert_id: int) -> list[tuple]:
    return db.execute("SELECT event, channel, user_id, payload FROM notifications"
                      " WHERE alert_id = %s ORDER BY id", (alert_id,)).fetchall()


def history(db: psycopg.Connection, alert_id: int) -> list[str]:
    return [r[0] for r in db.execute("SELECT action FROM alert_history WHERE alert_id = %s"
                                     " ORDER BY id", (alert_id,))]


async def test_rules_open_repeat_and_clear_with_the_outbox_they_owe(settings, db,
                                                                    people: dict) -> None:
    p = people
    sev = {"inclusion_exit": "high"}
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        async with conn.transaction(), conn.cursor() as cur:  # as ingest: tuple rows
            opened = await record_rule_events(cur, [breach(p["subject"], "open", 0)], sev)
            repeated = await record_rule_events(cur, [breach(p["subject"], "open", 1)], sev)
        async with conn.transaction(), conn.cursor() as cur:
            cleared = await record_rule_events(cur, [breach(p["subject"], "clear", 2),
                                                     breach(p["subject"], "clear", 3)], sev)
    (aid, action, type_), = opened
    assert (action, type_) == ("opened", "inclusion_exit")
    assert repeated == [(aid, "repeated", "inclusion_exit")]
    assert cleared == [(aid, "cleared", "inclusion_exit")]  # the second clear: nothing
    assert history(db, aid) == ["opened", "repeated", "cleared"]
    row = db.execute("SELECT severity, breach_count, cleared_at, status FROM alerts"
                     " WHERE id = %s", (aid,)).fetchone()
    assert row == ("high", 2, T + timedelta(minutes=2), "open")
    sent = outbox(db, aid)
    # A repeat updates screens only; opening and clearing tell the officer on each address.
    assert [(e, c, u) for e, c, u, _ in sent] == [
        ("opened", "webhook", p["officer"]), ("opened", "email", p["officer"]),
        ("updated", "webhook", p["officer"]), ("updated", "email", p["officer"])]
    last = sent[-1][3]
    now = db.execute("SELECT alert_json(%s::bigint)", (aid,)).fetchone()[0]
    assert last == {**now, "event": "updated"}  # the notification is the one JSON shape
    assert [h["action"] for h in last["history"]] == ["opened", "repeated", "cleared"]
    assert last["history"][0]["data"]["device_id"] == "w-1"


async def test_an_illegal_action_is_a_409_and_writes_nothing(settings, db, people: dict) -> None:
    p = people
    aid = db.execute("INSERT INTO alerts (type, severity, subject_id) VALUES ('sos', 'critical',"
                     " %s) RETURNING id", (p["subject"],)).fetchone()[0]
    async with await psycopg.AsyncConnection.connect(settings.database_url,
                                                     row_factory=dict_row) as conn:
        async def act(action: Action) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SELECT * FROM alerts WHERE id = %s FOR UPDATE", (aid,))
                await apply_user_action(cur, await cur.fetchone(), action, p["officer"], "n")

        await act(Action.ACKNOWLEDGE)
        with pytest.raises(IllegalTransition, match="acknowledged") as e:
            await act(Action.ACKNOWLEDGE)
        assert e.value.status_code == 409
        await act(Action.RESOLVE)
        for again in (Action.ACKNOWLEDGE, Action.RESOLVE):
            with pytest.raises(IllegalTransition, match="resolved"):
                await act(again)
    assert history(db, aid) == ["acknowledged", "resolved"]
    assert [e for e, *_ in outbox(db, aid)] == ["acknowledged"] * 2 + ["resolved"] * 2


async def test_escalation_goes_once_to_the_commanders_above(settings, db, people: dict) -> None:
    p = people
    aids = [db.execute("INSERT INTO alerts (type, severity, subject_id, opened_at, status)"
                       " VALUES (%s, %s, %s, now() - interval '1 day', %s) RETURNING id",
                       (f"sos-{sev}-{st}", sev, p["subject"], st)).fetchone()[0]
            for sev, st in (("critical", "open"), ("high", "open"),
                            ("critical", "acknowledged"))]
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        for expected in ([aids[0]], []):
            async with conn.transaction(), conn.cursor() as cur:
                # Twelve hours: no other test's alert in this run's database is that old.
                got = await escalate_due(cur, timedelta(hours=12))
            assert [a for a in got if a in aids] == expected
    assert history(db, aids[0]) == ["escalated"]
    assert [(e, u) for e, _, u, _ in outbox(db, aids[0])] == [("escalated", p["boss"])]
    assert all(not outbox(db, a) for a in aids[1:])


@pytest.fixture(scope="module")
async def world(base_settings: Settings) -> AsyncIterator[ApiWorld]:
    with psycopg.connect(base_settings.database_url, autocommit=True) as db:
        ids = seed(db)
    app = create_app(base_settings)
    await app.state.store.open()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        w = ApiWorld(client, ids)
        r = await client.post("/api/auth/token", data={"username": f"offA-{ids['tag']}",
                                                       "password": PASSWORD})
        w.tokens["offA"] = r.json()["access_token"]
        yield w
    await app.state.store.close()


async def test_rest_websockets_and_notifications_share_one_shape(world: ApiWorld,
                                                                 base_settings, db) -> None:
    aid = world.ids["alert_countyA"]
    acked = await world.post("offA", f"/api/alerts/{aid}/ack", {"note": "on my way"})
    assert acked.status_code == 200, acked.text
    again = await world.post("offA", f"/api/alerts/{aid}/ack", {"note": "again"})
    assert (again.status_code, again.json()["detail"]) == (409, "the alert is acknowledged")
    listed = await world.get("offA", "/api/alerts", params={"subject_id":
                                                            world.ids["subj_countyA"]})
    (rest,) = [a for a in listed.json() if a["id"] == aid]
    assert rest == acked.json()
    async with await psycopg.AsyncConnection.connect(base_settings.database_url,
                                                     row_factory=dict_row) as conn:
        live = (await alert_with_path(conn.cursor(), aid))["alert"]  # what /ws/alerts sends
    sql = db.execute("SELECT alert_json(%s::bigint)", (aid,)).fetchone()[0]
    assert live == sql
    assert set(rest) == set(sql)  # every field of one definition, no more, no less
    assert rest["status"] == sql["status"] == "acknowledged"
    assert [(h["action"], h["note"], h["data"]) for h in rest["history"]] == [
        (h["action"], h["note"], h["data"]) for h in sql["history"]] == [
        ("acknowledged", "on my way", {})]
    for key in ("opened_at", "updated_at"):
        assert datetime.fromisoformat(rest[key]) == datetime.fromisoformat(sql[key])
