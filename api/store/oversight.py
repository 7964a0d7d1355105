"""Oversight reads: the audit log and statistics rolled up the jurisdiction tree."""

from __future__ import annotations

from datetime import datetime, timedelta

from psycopg import AsyncCursor

from api.store import IN_SCOPE, Principal, audit


async def audit_entries(cur: AsyncCursor, who: Principal, since: datetime | None,
                        user_id: int | None, subject_id: int | None, limit: int) -> list[dict]:
    """Admin: everything. Commander: what users of the own scope did, and what anyone did to
    or read of a subject of the own scope."""
    await cur.execute(
        "SELECT a.id, a.at, a.user_id, u.username, a.action, a.object_type, a.object_id,"
        " a.before, a.after FROM audit_log a LEFT JOIN users u ON u.id = a.user_id"
        " LEFT JOIN jurisdictions j ON j.id = u.jurisdiction_id"
        " WHERE (%(scope)s::bigint IS NULL OR %(scope)s = ANY(j.path)"
        "  OR (a.object_type = 'subject' AND EXISTS (SELECT 1 FROM subjects s"
        "   JOIN jurisdictions sj ON sj.id = s.jurisdiction_id WHERE s.id::text = a.object_id"
        "   AND %(scope)s = ANY(sj.path))))"
        " AND (%(since)s::timestamptz IS NULL OR a.at >= %(since)s)"
        " AND (%(uid)s::bigint IS NULL OR a.user_id = %(uid)s)"
        " AND (%(sid)s::text IS NULL OR (a.object_type = 'subject' AND a.object_id = %(sid)s)"
        "  OR a.after ->> 'subject_id' = %(sid)s OR a.before ->> 'subject_id' = %(sid)s)"
        " ORDER BY a.id DESC LIMIT %(limit)s",
        {"scope": who.scope, "since": since, "uid": user_id,
         "sid": None if subject_id is None else str(subject_id), "limit": limit})
    return await cur.fetchall()


async def record_read(cur: AsyncCursor, who: Principal, action: str, object_type: str,
                      object_id: object, what: dict) -> None:
    """Reads of positioning data are evidence too (who looked at whom): one audit row each."""
    await audit(cur, who, action, object_type, object_id, None, what)


_UNDER = "sj.path @> ARRAY[js.id]"  # the row's jurisdiction is js or below it (GIN index)
_SUBJECTS = f"subjects s JOIN jurisdictions sj ON sj.id = s.jurisdiction_id WHERE {_UNDER}"


_OPEN = "a.status <> 'resolved'"
_OPENED = "a.opened_at >= %(since)s AND a.opened_at < %(until)s"
_RESOLVED = ("EXISTS (SELECT 1 FROM alert_history h WHERE h.alert_id = a.id"
             " AND h.action = 'resolved' AND h.at >= %(since)s AND h.at < %(until)s)")


def _per_type(inner: str) -> str:
    return (f"coalesce((SELECT json_object_agg(type, n) FROM (SELECT a.type, count(*) AS n"
            f" FROM alerts a, {_SUBJECTS} AND a.subject_id = s.id AND {inner}"
            " GROUP BY a.type) t), '{}')")


async def stats(cur: AsyncCursor, who: Principal, online_within: timedelta, since: datetime,
                until: datetime) -> list[dict]:
    """Per jurisdiction in scope, counts over every jurisdiction at or below it."""
    await cur.execute(
        "SELECT js.id AS jurisdiction_id, js.name, js.parent_id,"
        " %(since)s::timestamptz AS since, %(until)s::timestamptz AS until,"
        f" (SELECT count(*) FROM {_SUBJECTS}) AS subjects,"
        f" (SELECT count(*) FROM devices d, {_SUBJECTS} AND d.subject_id = s.id) AS devices,"
        f" (SELECT count(*) FROM devices d, {_SUBJECTS} AND d.subject_id = s.id"
        "  AND EXISTS (SELECT 1 FROM fixes f WHERE f.device_id = d.id"
        "  AND f.fix_time > now() - %(online)s)) AS devices_online,"
        f" {_per_type(_OPEN)} AS open_alerts, {_per_type(_OPENED)} AS alerts_opened,"
        f" {_per_type(_RESOLVED)} AS alerts_resolved,"
        " (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM k.at"
        "  - a.opened_at)) FROM alerts a, subjects s JOIN jurisdictions sj"
        "  ON sj.id = s.jurisdiction_id, LATERAL (SELECT min(h.at) AS at FROM alert_history h"
        "  WHERE h.alert_id = a.id AND h.action = 'acknowledged') k"
        f"  WHERE {_UNDER} AND a.subject_id = s.id AND k.at IS NOT NULL"
        "  AND a.opened_at >= %(since)s AND a.opened_at < %(until)s) AS median_ack_s,"
        f" (SELECT count(*) FROM monitoring_orders o, {_SUBJECTS} AND o.subject_id = s.id"
        "  AND o.starts_at <= now() AND now() < least(o.ends_at, o.ended_at)) AS orders_in_force,"
        f" (SELECT count(*) FROM monitoring_orders o, {_SUBJECTS} AND o.subject_id = s.id"
        "  AND o.ended_at IS NULL AND o.ends_at > now()"
        "  AND o.ends_at <= now() + interval '7 days') AS orders_expiring"
        f" FROM jurisdictions js JOIN jurisdictions j ON j.id = js.id WHERE {IN_SCOPE}"
        " ORDER BY js.path",
        {"scope": who.scope, "online": online_within, "since": since, "until": until})
    return await cur.fetchall()
