"""Casework writes (contract §6): zones, subjects, devices and users changed or ended; each
locks its row in the caller's scope (else `None`: the route answers 404) and commits with its
audit row. Nothing is erased: a zone's earlier versions and a deleted zone stay for history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncCursor, sql
from psycopg.types.json import Jsonb

from alerts.store import record_rule_events
from api.store import IN_SCOPE, Principal, audit
from api.store.accounts import USER_COLUMNS
from api.store.enrol import SUBJECT_COLS, ZONE_COLS
from geofence.rules import CLEAR, RuleEvent

ZONE_FIELDS = ("name", "geometry", "radius_m", "buffer_m", "schedule")
SUBJECT_FIELDS = ("name", "officer_id", "timezone", "jurisdiction_id")
USER_FIELDS = ("password_hash", "disabled", "role", "jurisdiction_id", "phone", "email",
               "notify_webhook", "notify_format", "notify_secret")


def _assignments(fields: dict[str, Any], allowed: tuple[str, ...]) -> sql.Composed:
    """`col = %(col)s, ...` from a fixed list of column names (never from input)."""
    return sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k))
                              for k in allowed if k in fields)


async def zone_for_update(cur: AsyncCursor, who: Principal, zid: int) -> dict | None:
    cols = ", ".join(f"z.{c.strip()}" for c in ZONE_COLS.split(","))
    await cur.execute(f"SELECT {cols}, z.changed_at, z.leave_id FROM zones z JOIN jurisdictions j"
                      f" ON j.id = z.jurisdiction_id WHERE z.id = %(id)s"
                      f" AND (z.deleted_at IS NULL OR z.leave_id IS NOT NULL)"
                      f" AND {IN_SCOPE} FOR UPDATE OF z", {"id": zid, "scope": who.scope})
    return await cur.fetchone()


async def patch_zone(cur: AsyncCursor, who: Principal, before: dict,
                     patch: dict[str, Any]) -> dict:
    """The version in force until now is kept (valid from its start to now); the new one is in
    force from now, so fixes dated before now are judged on the old one."""
    await cur.execute(
        "INSERT INTO zone_versions (zone_id, name, geometry, radius_m, buffer_m, schedule,"
        " valid_from, valid_to) SELECT id, name, geometry, radius_m, buffer_m, schedule,"
        " coalesce(changed_at, created_at), now() FROM zones WHERE id = %s", (before["id"],))
    values = {k: Jsonb(v) if k in ("geometry", "schedule") and v is not None else v
              for k, v in patch.items()}
    await cur.execute(sql.SQL("UPDATE zones SET {}, changed_at = now() WHERE id = {}"
                              " RETURNING {}").format(
        _assignments(values, ZONE_FIELDS), sql.Literal(before["id"]), sql.SQL(ZONE_COLS)),
        values)
    row = await cur.fetchone()
    await audit(cur, who, "update", "zone", row["id"], before, row)
    return row


async def delete_zone(cur: AsyncCursor, who: Principal, before: dict) -> int:
    """The zone stops applying now; its open alerts clear (the lifecycle's own transition,
    with history and notifications); the row and its alerts stay. Returns alerts cleared."""
    await cur.execute("UPDATE zones SET deleted_at = now() WHERE id = %s RETURNING deleted_at",
                      (before["id"],))
    deleted_at: datetime = (await cur.fetchone())["deleted_at"]
    await cur.execute("SELECT DISTINCT subject_id, type FROM alerts WHERE zone_id = %s"
                      " AND status <> 'resolved' AND cleared_at IS NULL", (before["id"],))
    events = [RuleEvent(CLEAR, r["type"], r["subject_id"], deleted_at, zone_id=before["id"],
                        details={"zone": before["name"], "reason": "zone deleted"})
              for r in await cur.fetchall()]
    changed = await record_rule_events(cur, events, {})
    await audit(cur, who, "delete", "zone", before["id"], before,
                {"deleted_at": deleted_at, "alerts_cleared": len(changed)})
    return len(changed)


async def patch_subject(cur: AsyncCursor, who: Principal, before: dict,
                        patch: dict[str, Any]) -> dict:
    await cur.execute(sql.SQL("UPDATE subjects SET {} WHERE id = {}").format(
        _assignments(patch, SUBJECT_FIELDS), sql.Literal(before["id"])), patch)
    await cur.execute(f"SELECT {SUBJECT_COLS} FROM subjects s JOIN jurisdictions j"
                      " ON j.id = s.jurisdiction_id WHERE s.id = %s", (before["id"],))
    row = await cur.fetchone()
    action = "transfer" if "jurisdiction_id" in patch and (
        patch["jurisdiction_id"] != before["jurisdiction_id"]) else "update"
    if action == "transfer":  # the subject's own zones go with it, to be seen where it goes
        await cur.execute("UPDATE zones SET jurisdiction_id = %s WHERE subject_id = %s"
                          " AND deleted_at IS NULL AND jurisdiction_id = %s",
                          (patch["jurisdiction_id"], before["id"], before["jurisdiction_id"]))
    await audit(cur, who, action, "subject", row["id"], before, row)
    return row


async def device_for_update(cur: AsyncCursor, who: Principal, device_id: str) -> dict | None:
    """A device on a subject in scope; one on no subject only for an admin."""
    await cur.execute("SELECT d.* FROM devices d LEFT JOIN subjects s ON s.id = d.subject_id"
                      " LEFT JOIN jurisdictions j ON j.id = s.jurisdiction_id"
                      " WHERE d.id = %(id)s AND (%(scope)s::bigint IS NULL"
                      " OR %(scope)s = ANY(j.path)) FOR UPDATE OF d",
                      {"id": device_id, "scope": who.scope})
    return await cur.fetchone()


async def move_device(cur: AsyncCursor, who: Principal, before: dict,
                      subject_id: int | None) -> dict:
    await cur.execute("UPDATE devices SET subject_id = %s WHERE id = %s RETURNING *",
                      (subject_id, before["id"]))
    row = await cur.fetchone()
    await audit(cur, who, "move" if subject_id else "unassign", "device", row["id"], before, row)
    return row


async def user_for_update(cur: AsyncCursor, who: Principal, uid: int) -> dict | None:
    """Admins change anyone; others only themselves."""
    await cur.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = %(id)s"
                      " AND (%(admin)s OR id = %(me)s) FOR UPDATE",
                      {"id": uid, "admin": who.role == "admin", "me": who.id})
    return await cur.fetchone()


async def patch_user(cur: AsyncCursor, who: Principal, before: dict,
                     patch: dict[str, Any]) -> dict:
    """Disabling or a new password ends every session: tokens issued before now are refused."""
    ends_sessions = "password_hash" in patch or patch.get("disabled") is True
    await cur.execute(sql.SQL("UPDATE users SET {}{} WHERE id = {} RETURNING {}").format(
        _assignments(patch, USER_FIELDS),
        sql.SQL(", sessions_valid_after = clock_timestamp()") if ends_sessions else sql.SQL(""),
        sql.Literal(before["id"]), sql.SQL(USER_COLUMNS)), patch)
    row = await cur.fetchone()
    after = {**row, **({"password": "changed"} if "password_hash" in patch else {}),
             **({"sessions_ended": True} if ends_sessions else {})}
    await audit(cur, who, "update", "user", row["id"], before, after)
    return row
