"""Monitoring orders and leave permits (contract §6), each written with its audit row.

Rows are locked through the subject's scope (else `None`: 404). The rules engine hears of every
change through the `tether_world` triggers of migration 006.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from api.store import IN_SCOPE, Principal, audit

EXPIRING = "interval '7 days'"
ORDER_COLS = ("o.id, o.subject_id, o.starts_at, o.ends_at, o.basis, o.note, o.ended_at,"
              " o.renewals, o.created_by, o.created_at,"
              " (o.starts_at <= now() AND now() < least(o.ends_at, o.ended_at)) AS in_force,"
              f" (o.ended_at IS NULL AND o.ends_at > now() AND o.ends_at <= now() + {EXPIRING})"
              " AS expiring")
_SCOPED = ("JOIN subjects s ON s.id = {t}.subject_id JOIN jurisdictions j"
           " ON j.id = s.jurisdiction_id")


async def create_order(cur: AsyncCursor, who: Principal, sid: int, f: dict[str, Any]) -> dict:
    await cur.execute("INSERT INTO monitoring_orders (subject_id, starts_at, ends_at, basis, note,"
                      " created_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                      (sid, f["starts_at"], f["ends_at"], f["basis"], f["note"], who.id))
    row = await order(cur, (await cur.fetchone())["id"])
    await audit(cur, who, "create", "order", row["id"], None, row)
    return row


async def order(cur: AsyncCursor, oid: int) -> dict:
    await cur.execute(f"SELECT {ORDER_COLS} FROM monitoring_orders o WHERE o.id = %s", (oid,))
    return await cur.fetchone()


async def order_for_update(cur: AsyncCursor, who: Principal, oid: int) -> dict | None:
    await cur.execute(f"SELECT {ORDER_COLS} FROM monitoring_orders o {_SCOPED.format(t='o')}"
                      f" WHERE o.id = %(id)s AND {IN_SCOPE} FOR UPDATE OF o",
                      {"id": oid, "scope": who.scope})
    return await cur.fetchone()


async def renew_order(cur: AsyncCursor, who: Principal, before: dict, ends_at: datetime,
                      note: str) -> dict:
    entry = {"at": datetime.now(ends_at.tzinfo).isoformat(), "by": who.id,
             "from": before["ends_at"].isoformat(), "to": ends_at.isoformat(), "note": note}
    await cur.execute("UPDATE monitoring_orders SET ends_at = %s, renewals = renewals || %s"
                      " WHERE id = %s", (ends_at, Jsonb([entry]), before["id"]))
    row = await order(cur, before["id"])
    await audit(cur, who, "renew", "order", row["id"], before, row)
    return row


async def end_order(cur: AsyncCursor, who: Principal, before: dict, note: str) -> dict:
    await cur.execute("UPDATE monitoring_orders SET ended_at = greatest(now(), starts_at),"
                      " note = coalesce(note || E'\\n', '') || %s WHERE id = %s",
                      (note, before["id"]))
    row = await order(cur, before["id"])
    await audit(cur, who, "end", "order", row["id"], before, row)
    return row


async def orders_of(cur: AsyncCursor, sid: int) -> list[dict]:
    await cur.execute(f"SELECT {ORDER_COLS} FROM monitoring_orders o WHERE o.subject_id = %s"
                      " ORDER BY o.starts_at DESC, o.id DESC", (sid,))
    return await cur.fetchall()


async def create_leave(cur: AsyncCursor, who: Principal, sid: int, f: dict[str, Any]) -> dict:
    history = [{"at": datetime.now(f["starts_at"].tzinfo).isoformat(), "by": who.id,
                "action": "requested", "note": None}]
    await cur.execute("INSERT INTO leaves (subject_id, starts_at, ends_at, destination, radius_m,"
                      " reason, requested_by, history) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                      " RETURNING *", (sid, f["starts_at"], f["ends_at"], Jsonb(f["destination"]),
                                       f["radius_m"], f["reason"], who.id, Jsonb(history)))
    row = await cur.fetchone()
    await audit(cur, who, "request", "leave", row["id"], None, row)
    return row


async def leave_for_update(cur: AsyncCursor, who: Principal, lid: int) -> dict | None:
    await cur.execute(f"SELECT l.*, s.jurisdiction_id AS subject_jurisdiction FROM leaves l"
                      f" {_SCOPED.format(t='l')} WHERE l.id = %(id)s AND {IN_SCOPE}"
                      " FOR UPDATE OF l", {"id": lid, "scope": who.scope})
    return await cur.fetchone()


async def decide_leave(cur: AsyncCursor, who: Principal, before: dict, status: str,
                       note: str | None) -> dict:
    """approved (the destination becomes a zone in force for the leave), rejected, cancelled
    or returned (the destination zone ends now)."""
    zone_id = before["zone_id"]
    if status == "approved":
        await cur.execute(
            "INSERT INTO zones (name, kind, geometry, radius_m, subject_id, jurisdiction_id,"
            " created_at, deleted_at, leave_id) VALUES (%s, 'inclusion', %s, %s, %s, %s, %s, %s,"
            " %s) RETURNING id", (f"leave {before['id']}: destination",
                                  Jsonb(before["destination"]), before["radius_m"],
                                  before["subject_id"], before["subject_jurisdiction"],
                                  before["starts_at"], before["ends_at"], before["id"]))
        zone_id = (await cur.fetchone())["id"]
    elif zone_id is not None:  # cancelled or returned once approved: the destination ends now
        await cur.execute("UPDATE zones SET deleted_at = least(deleted_at, greatest(now(),"
                          " created_at)) WHERE id = %s", (zone_id,))
    entry = {"at": datetime.now().astimezone().isoformat(), "by": who.id, "action": status,
             "note": note}
    decided = status in ("approved", "rejected")
    await cur.execute(
        "UPDATE leaves SET status = %(st)s, zone_id = %(zone)s, history = history || %(h)s,"
        " decided_by = CASE WHEN %(decided)s THEN %(by)s ELSE decided_by END,"
        " decided_at = CASE WHEN %(decided)s THEN now() ELSE decided_at END,"
        " returned_at = CASE WHEN %(st)s = 'returned' THEN now() ELSE returned_at END"
        " WHERE id = %(id)s RETURNING *",
        {"st": status, "zone": zone_id, "h": Jsonb([entry]), "decided": decided, "by": who.id,
         "id": before["id"]})
    row = await cur.fetchone()
    await audit(cur, who, status, "leave", row["id"],
                {k: v for k, v in before.items() if k != "subject_jurisdiction"}, row)
    return row


async def leaves_of(cur: AsyncCursor, sid: int) -> list[dict]:
    await cur.execute("SELECT * FROM leaves WHERE subject_id = %s ORDER BY starts_at DESC, id DESC",
                      (sid,))
    return await cur.fetchall()
