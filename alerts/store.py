"""Alerts in PostgreSQL: the only module of `alerts` importing psycopg.

Each transition of `alerts.lifecycle` is applied here, by functions that take the caller's
cursor: ingest records the rules' alerts inside its batch transaction, the API an officer's
action inside its request transaction, the timers an escalation inside theirs. Each writes the
alert, its `alert_history` row and its outbox (`tether_notify`, migration 004) together, so an
alert and the messages it owes commit together or not at all. `OutboxStore` is the delivery
worker's side: claiming, recording, pruning, and the escalation timer's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.lifecycle import Action, AlertState, Status, Transition, apply
from geofence.rules import RuleEvent
from tether import db

Unavailable = db.TransientError

# One open incident per (subject, type, zone) (the unique index of migration 001): a breach
# while one is open is a repeat, merged here even when two workers judged it at once.
_OPEN = ("INSERT INTO alerts (type, severity, subject_id, device_id, zone_id, opened_at,"
         " position, late, confidence, details, last_seen_at)"
         " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
         " ON CONFLICT (subject_id, type, coalesce(zone_id, 0)) WHERE status <> 'resolved'"
         " DO UPDATE SET breach_count = alerts.breach_count + 1,"
         # Evidence dated before the incident cleared (a buffered upload, or a batch another
         # worker committed after a newer one) is counted but neither reopens it nor moves it.
         " cleared_at = CASE WHEN excluded.last_seen_at < alerts.cleared_at"
         "  THEN alerts.cleared_at END,"
         " position = CASE WHEN excluded.last_seen_at >= alerts.last_seen_at"
         "  THEN excluded.position ELSE alerts.position END,"
         " last_seen_at = greatest(alerts.last_seen_at, excluded.last_seen_at),"
         " updated_at = now()"
         " RETURNING id, (xmax = 0) AS inserted, status, severity, escalated_at")
# Only an incident not cleared yet is cleared (`lifecycle.apply` says the same).
_CLEAR = ("UPDATE alerts SET cleared_at = %s, updated_at = now() WHERE subject_id = %s"
          " AND type = %s AND coalesce(zone_id, 0) = coalesce(%s, 0) AND status <> 'resolved'"
          " AND cleared_at IS NULL RETURNING id, status, severity, escalated_at")
_HISTORY = ("INSERT INTO alert_history (alert_id, action, user_id, note, data)"
            " VALUES (%s, %s, %s, %s, %s)")
_SET_STATUS = "UPDATE alerts SET status = %s, updated_at = now() WHERE id = %s"
# The candidates of `lifecycle.may_escalate`, after waiting `after` for someone to answer.
ESCALATE_DUE = ("SELECT id, status, severity, cleared_at, escalated_at FROM alerts"
                " WHERE severity = 'critical' AND status = 'open' AND escalated_at IS NULL"
                " AND opened_at <= now() - %s ORDER BY id FOR UPDATE SKIP LOCKED")
_ESCALATED = "UPDATE alerts SET escalated_at = now(), updated_at = now() WHERE id = ANY(%s)"


async def _follow(cur: psycopg.AsyncCursor, alert_id: int, t: Transition, *,
                  user_id: int | None = None, note: str | None = None,
                  data: dict[str, Any] | None = None) -> None:
    """What every transition writes besides the alert itself: history, then the outbox (and
    NOTIFY for screens), as `t` says."""
    await cur.execute(_HISTORY, (alert_id, t.history, user_id, note, Jsonb(data or {})))
    await cur.execute("SELECT tether_notify(%s, %s, %s)", (alert_id, t.event, t.outbox))


async def record_rule_events(cur: psycopg.AsyncCursor, events: Sequence[RuleEvent],
                             severity: dict[str, str]) -> list[tuple[int, str, str]]:
    """The rules' conclusions (open: open or repeat; clear), in the caller's transaction.
    Returns (alert id, history action, type) for each change. Events are few next to fixes,
    so one statement each is fine here."""
    changed: list[tuple[int, str, str]] = []
    async with cur.connection.cursor(row_factory=dict_row) as c:
        for e in events:
            data: dict[str, Any] = {"device_id": e.device_id, "at": e.at.isoformat(),
                                    **e.details}
            if e.action == "open":
                sev = severity.get(e.type, "medium")
                await c.execute(_OPEN, (
                    e.type, sev, e.subject_id, e.device_id, e.zone_id, e.at,
                    Jsonb(e.position) if e.position else None, e.late, e.confidence,
                    Jsonb(e.details), e.at))
                row = await c.fetchone()
                before = None if row["inserted"] else AlertState.of(row)
                t = apply(before, Action.OPEN, severity=sev)
            else:
                await c.execute(_CLEAR, (e.at, e.subject_id, e.type, e.zone_id))
                row = await c.fetchone()
                if row is None:  # nothing open, or cleared already: nothing happens
                    continue
                t = apply(AlertState.of(row), Action.CLEAR)
            if t is None:
                continue
            await _follow(c, row["id"], t, data=data)
            changed.append((row["id"], t.history, e.type))
    return changed


async def apply_user_action(cur: psycopg.AsyncCursor, alert: dict, action: Action,
                            user_id: int, note: str | None) -> Transition:
    """An officer's action on `alert` (its row, locked by the caller: FOR UPDATE), in the
    caller's transaction. Raises lifecycle.IllegalTransition (409) if the state forbids it."""
    t = apply(AlertState.of(alert), action)
    if t is None:  # not reachable for user actions; kept explicit for the type checker
        raise ValueError(f"{action} changed nothing")
    if t.state.status is not Status(alert["status"]):
        await cur.execute(_SET_STATUS, (t.state.status.value, alert["id"]))
    await _follow(cur, alert["id"], t, user_id=user_id, note=note)
    return t


async def escalate_due(cur: psycopg.AsyncCursor, after: timedelta) -> list[int]:
    """Escalates, once, every critical alert left open `after` its opening, in the caller's
    transaction; several workers share the work (SKIP LOCKED). Returns their ids."""
    async with cur.connection.cursor(row_factory=dict_row) as c:
        await c.execute(ESCALATE_DUE, (after,))
        due = [(r["id"], apply(AlertState.of(r), Action.ESCALATE)) for r in await c.fetchall()]
        if not due:
            return []
        await c.execute(_ESCALATED, ([aid for aid, _ in due],))
        for aid, t in due:
            if t is not None:
                await _follow(c, aid, t)
    return [aid for aid, _ in due]


class OutboxStore:
    def __init__(self, database_url: str) -> None:
        self.pool = db.pool(database_url, max_size=3, dict_rows=True)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def claim(self, limit: int, lease: timedelta, busy_users: list[int] | None = None,
                    per_user: int | None = None) -> list[dict]:
        """Due notifications, each pushed a lease ahead so no other worker sends it meanwhile;
        a worker that dies mid-send leaves it due again (same idempotency key) after the lease.

        `busy_users` (those this worker is sending to already) are skipped and at most
        `per_user` are taken per user, so one receiver's backlog never fills every slot."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "WITH due AS (SELECT id, user_id FROM notifications WHERE status = 'pending'"
                " AND next_attempt_at <= now() AND user_id <> ALL(%(busy)s::bigint[])"
                " ORDER BY id LIMIT %(scan)s FOR UPDATE SKIP LOCKED),"
                " picked AS (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY user_id"
                " ORDER BY id) AS nth FROM due) d WHERE nth <= %(per_user)s"
                " ORDER BY id LIMIT %(limit)s)"
                " UPDATE notifications n SET next_attempt_at = now() + %(lease)s"
                " FROM users u WHERE n.user_id = u.id AND n.id IN (SELECT id FROM picked)"
                " RETURNING n.id, n.user_id, n.idempotency_key, n.channel, n.event, n.payload,"
                " n.attempts, n.created_at, u.notify_webhook, u.notify_format, u.notify_secret,"
                " u.email",
                {"lease": lease, "limit": limit, "busy": busy_users or [],
                 "per_user": per_user or limit, "scan": limit * 4})
            return await cur.fetchall()

    async def record(self, nid: int, ok: bool, status_code: int | None, error: str | None,
                     duration_ms: int, retry_in: timedelta | None) -> None:
        """One attempt. Not ok: due again in `retry_in`, or failed for good when None."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO delivery_attempts (notification_id, ok, status_code,"
                               " error, duration_ms) VALUES (%s, %s, %s, %s, %s)",
                               (nid, ok, status_code, error, duration_ms))
            if ok:
                await conn.execute("UPDATE notifications SET status = 'delivered', attempts ="
                                   " attempts + 1, delivered_at = now(), last_error = NULL"
                                   " WHERE id = %s", (nid,))
            else:
                await conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = %s,"
                    " status = CASE WHEN %s::interval IS NULL THEN 'failed' ELSE status END,"
                    " next_attempt_at = now() + coalesce(%s::interval, '0')"
                    " WHERE id = %s", (error, retry_in, retry_in, nid))

    async def prune(self, older_than: timedelta) -> int:
        """Delivered or failed notifications past retention, with their attempts."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "WITH old AS (SELECT id FROM notifications WHERE status <> 'pending'"
                " AND created_at < now() - %s), gone AS (DELETE FROM delivery_attempts"
                " WHERE notification_id IN (SELECT id FROM old))"
                " DELETE FROM notifications WHERE id IN (SELECT id FROM old)", (older_than,))
            return cur.rowcount

    async def escalate_due(self, after: timedelta) -> list[int]:
        """Critical alerts still open (not acknowledged) `after` their opening: escalated once,
        to the parent jurisdiction's commanders, with history and outbox in one transaction."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return await escalate_due(cur, after)
