"""Writes: enrolment (jurisdictions, subjects, devices, zones, victims) and alert actions.

Each checks, in SQL, that what it refers to is in the caller's scope (else `None`: the route
answers 404) and commits with its audit row.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from alerts.lifecycle import Action, Transition
from alerts.store import apply_user_action
from api.store import IN_SCOPE, Principal, audit

SUBJECT_COLS = ("s.id, s.name, s.jurisdiction_id, s.officer_id,"
                " coalesce(s.timezone, j.timezone) AS timezone, s.created_at")
ZONE_COLS = ("id, name, kind, geometry, radius_m, buffer_m, subject_id, jurisdiction_id,"
             " schedule, created_at")


async def jurisdiction_in_scope(cur: AsyncCursor, who: Principal, jid: int) -> dict | None:
    await cur.execute(f"SELECT * FROM jurisdictions j WHERE j.id = %(id)s AND {IN_SCOPE}",
                      {"id": jid, "scope": who.scope})
    return await cur.fetchone()


async def subject_in_scope(cur: AsyncCursor, who: Principal, sid: int,
                           lock: bool = False) -> dict | None:
    await cur.execute(f"SELECT {SUBJECT_COLS} FROM subjects s JOIN jurisdictions j"
                      f" ON j.id = s.jurisdiction_id WHERE s.id = %(id)s AND {IN_SCOPE}"
                      + (" FOR UPDATE OF s" if lock else ""), {"id": sid, "scope": who.scope})
    return await cur.fetchone()


async def user_in_scope(cur: AsyncCursor, who: Principal, uid: int) -> dict | None:
    await cur.execute(f"SELECT u.id FROM users u JOIN jurisdictions j ON j.id = u.jurisdiction_id"
                      f" WHERE u.id = %(id)s AND {IN_SCOPE}", {"id": uid, "scope": who.scope})
    return await cur.fetchone()


async def create_jurisdiction(cur: AsyncCursor, who: Principal, name: str,
                              parent_id: int | None, timezone: str | None) -> dict:
    await cur.execute(
        "INSERT INTO jurisdictions (name, parent_id, timezone) VALUES (%s, %s,"
        " coalesce(%s, (SELECT timezone FROM jurisdictions WHERE id = %s), 'Asia/Shanghai'))"
        " RETURNING *", (name, parent_id, timezone, parent_id))
    row = await cur.fetchone()
    await audit(cur, who, "create", "jurisdiction", row["id"], None, row)
    return row


async def create_subject(cur: AsyncCursor, who: Principal, f: dict) -> dict:
    await cur.execute(
        "WITH s AS (INSERT INTO subjects (name, jurisdiction_id, officer_id, timezone)"
        " VALUES (%(name)s, %(jurisdiction_id)s, %(officer_id)s, %(timezone)s) RETURNING *)"
        f" SELECT {SUBJECT_COLS} FROM s JOIN jurisdictions j ON j.id = s.jurisdiction_id", f)
    row = await cur.fetchone()
    await audit(cur, who, "create", "subject", row["id"], None, row)
    return row


async def create_device(cur: AsyncCursor, who: Principal, f: dict) -> dict:
    await cur.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%(id)s, %(kind)s,"
                      " %(subject_id)s) RETURNING *", f)
    row = await cur.fetchone()
    await audit(cur, who, "create", "device", row["id"], None, row)
    return row


async def device_in_scope(cur: AsyncCursor, who: Principal, device_id: str) -> dict | None:
    await cur.execute("SELECT d.* FROM devices d JOIN subjects s ON s.id = d.subject_id"
                      f" JOIN jurisdictions j ON j.id = s.jurisdiction_id"
                      f" WHERE d.id = %(id)s AND {IN_SCOPE}", {"id": device_id,
                                                              "scope": who.scope})
    return await cur.fetchone()


async def create_zone(cur: AsyncCursor, who: Principal, f: dict[str, Any]) -> dict:
    await cur.execute(
        "INSERT INTO zones (name, kind, geometry, radius_m, buffer_m, subject_id,"
        " jurisdiction_id, schedule) VALUES (%(name)s, %(kind)s, %(geometry)s, %(radius_m)s,"
        f" %(buffer_m)s, %(subject_id)s, %(jurisdiction_id)s, %(schedule)s) RETURNING {ZONE_COLS}",
        {**f, "geometry": Jsonb(f["geometry"]),
         "schedule": Jsonb(f["schedule"]) if f["schedule"] is not None else None})
    row = await cur.fetchone()
    await audit(cur, who, "create", "zone", row["id"], None, row)
    return row


async def create_victim(cur: AsyncCursor, who: Principal, subject_id: int, device_id: str,
                        radius_m: float) -> dict:
    await cur.execute("INSERT INTO victims (subject_id, device_id, radius_m) VALUES (%s, %s, %s)"
                      " RETURNING *", (subject_id, device_id, radius_m))
    row = await cur.fetchone()
    await audit(cur, who, "create", "victim", row["id"], None, row)
    return row


async def alert_for_update(cur: AsyncCursor, who: Principal, alert_id: int) -> dict | None:
    await cur.execute("SELECT a.* FROM alerts a JOIN subjects s ON s.id = a.subject_id"
                      " JOIN jurisdictions j ON j.id = s.jurisdiction_id"
                      f" WHERE a.id = %(id)s AND {IN_SCOPE} FOR UPDATE OF a",
                      {"id": alert_id, "scope": who.scope})
    return await cur.fetchone()


async def alert_action(cur: AsyncCursor, who: Principal, before: dict, action: Action,
                       note: str | None) -> Transition:
    """An officer's action, as `alerts.lifecycle` says (IllegalTransition: 409), with its
    audit row; `before` is the row `alert_for_update` locked."""
    t = await apply_user_action(cur, before, action, who.id, note)
    await audit(cur, who, t.history, "alert", before["id"], {"status": before["status"]},
                {"status": t.state.status.value, "note": note})
    return t
