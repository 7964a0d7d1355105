"""What the rules engine judges against, and what it concludes (alerts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from geofence.rules import RuleEvent

CHANNEL = "tether_world"


@dataclass(frozen=True, slots=True)
class WorldRows:
    zones: list[tuple]
    subjects: list[tuple]  # id, jurisdiction path, timezone
    devices: list[tuple]  # id, subject_id, kind
    victims: list[tuple]  # id, subject_id, device_id, radius_m


async def load_world(conn: psycopg.AsyncConnection) -> WorldRows:
    async def rows(sql: str) -> list[tuple]:
        return await (await conn.execute(sql)).fetchall()

    # Zones deleted within the week stay loaded: a late upload is judged as things were then.
    return WorldRows(
        await rows("SELECT id, name, kind, geometry, radius_m, buffer_m, subject_id,"
                   " jurisdiction_id, schedule, created_at, deleted_at FROM zones"
                   " WHERE deleted_at IS NULL OR deleted_at > now() - interval '7 days'"),
        await rows("SELECT s.id, j.path, coalesce(s.timezone, j.timezone) FROM subjects s"
                   " JOIN jurisdictions j ON j.id = s.jurisdiction_id"),
        await rows("SELECT id, subject_id, kind FROM devices"),
        await rows("SELECT id, subject_id, device_id, radius_m FROM victims"))


async def notifications(url: str) -> AsyncIterator[str]:
    """Yields the table name of each world change; ends when the connection is lost."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        yield "listening"
        async for n in conn.notifies():
            yield n.payload


_OPEN = ("INSERT INTO alerts (type, severity, subject_id, device_id, zone_id, opened_at,"
         " position, late, confidence, details, last_seen_at)"
         " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
         " ON CONFLICT (subject_id, type, coalesce(zone_id, 0)) WHERE status <> 'resolved'"
         " DO UPDATE SET breach_count = alerts.breach_count + 1, cleared_at = NULL,"
         " last_seen_at = greatest(alerts.last_seen_at, excluded.last_seen_at),"
         " position = excluded.position, updated_at = now()"
         " RETURNING id, (xmax = 0)")
_CLEAR = ("UPDATE alerts SET cleared_at = %s, updated_at = now() WHERE subject_id = %s"
          " AND type = %s AND coalesce(zone_id, 0) = coalesce(%s, 0) AND status <> 'resolved'"
          " AND cleared_at IS NULL RETURNING id")
_HISTORY = "INSERT INTO alert_history (alert_id, action, data) VALUES (%s, %s, %s)"


async def record_rule_events(cur: psycopg.AsyncCursor, events: Sequence[RuleEvent],
                             severity: dict[str, str]) -> list[tuple[int, str, str]]:
    """One open incident per (subject, type, zone): a new breach while one is open updates it.
    Returns (alert id, what happened, type) for each change. Events are few next to fixes, so one
    statement each is fine here."""
    changed: list[tuple[int, str, str]] = []
    for e in events:
        data: dict[str, Any] = {"device_id": e.device_id, "at": e.at.isoformat(), **e.details}
        if e.action == "open":
            await cur.execute(_OPEN, (
                e.type, severity.get(e.type, "medium"), e.subject_id, e.device_id, e.zone_id,
                e.at, Jsonb(e.position) if e.position else None, e.late, e.confidence,
                Jsonb(e.details), e.at))
            alert_id, inserted = await cur.fetchone()
            action = "opened" if inserted else "repeated"
        else:
            await cur.execute(_CLEAR, (e.at, e.subject_id, e.type, e.zone_id))
            row = await cur.fetchone()
            if row is None:
                continue
            alert_id, action = row[0], "cleared"
        await cur.execute(_HISTORY, (alert_id, action, Jsonb(data)))
        # The outbox, in this transaction: a repeat of an open incident only updates screens
        # (no message per breach fix); opening and returning to compliance notify people.
        event = {"opened": "opened", "cleared": "updated"}.get(action, "updated")
        await cur.execute("SELECT tether_notify(%s, %s, %s)",
                          (alert_id, event, action != "repeated"))
        changed.append((alert_id, action, e.type))
    return changed


