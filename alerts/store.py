"""The outbox and escalation in PostgreSQL: the only module of `alerts` importing psycopg."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

Unavailable = (psycopg.OperationalError, TimeoutError)


class OutboxStore:
    def __init__(self, database_url: str) -> None:
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=3, open=False,
                                        kwargs={"row_factory": dict_row}, timeout=10)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def claim(self, limit: int, lease: timedelta) -> list[dict]:
        """Due notifications, each pushed a lease ahead so no other worker sends it meanwhile;
        a worker that dies mid-send leaves it due again (same idempotency key) after the lease."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE notifications n SET next_attempt_at = now() + %(lease)s"
                " FROM users u WHERE n.user_id = u.id AND n.id IN (SELECT id FROM notifications"
                " WHERE status = 'pending' AND next_attempt_at <= now() ORDER BY id"
                " LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING n.id, n.idempotency_key,"
                " n.channel, n.event, n.payload, n.attempts, n.created_at, u.notify_webhook,"
                " u.notify_format, u.notify_secret, u.email",
                {"lease": lease, "limit": limit})
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
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE alerts SET escalated_at = now(), updated_at = now() WHERE id IN"
                " (SELECT id FROM alerts WHERE severity = 'critical' AND status = 'open'"
                " AND escalated_at IS NULL AND opened_at <= now() - %s"
                " FOR UPDATE SKIP LOCKED) RETURNING id", (after,))
            ids = [r["id"] for r in await cur.fetchall()]
            for aid in ids:
                await conn.execute("INSERT INTO alert_history (alert_id, action, data) VALUES"
                                   " (%s, 'escalated', '{}')", (aid,))
                await conn.execute("SELECT tether_notify(%s, 'escalated')", (aid,))
            return ids
