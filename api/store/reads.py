"""Reads, every one scoped in SQL by the caller's jurisdiction."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from psycopg import AsyncCursor

from api.store import IN_SCOPE, Principal
from api.store.enrol import SUBJECT_COLS, ZONE_COLS

_LAST_FIX = (
    "(SELECT json_build_object('device_id', f.device_id, 'lat', f.lat, 'lon', f.lon,"
    " 'ts', f.fix_time, 'acc', f.accuracy_m, 'received_at', f.received_at) FROM devices d2"
    " CROSS JOIN LATERAL (SELECT * FROM fixes WHERE device_id = d2.id AND NOT outlier"
    " ORDER BY fix_time DESC LIMIT 1) f WHERE d2.subject_id = s.id AND d2.kind <> 'victim'"
    " ORDER BY f.fix_time DESC LIMIT 1) AS last_position")
_SUBJECT_FULL = (
    f"SELECT {SUBJECT_COLS},"
    " coalesce((SELECT json_agg(json_build_object('id', d.id, 'kind', d.kind) ORDER BY d.id)"
    " FROM devices d WHERE d.subject_id = s.id), '[]') AS devices,"
    " (SELECT count(*) FROM alerts a WHERE a.subject_id = s.id AND a.status <> 'resolved')"
    f" AS open_alerts, {_LAST_FIX}"
    " FROM subjects s JOIN jurisdictions j ON j.id = s.jurisdiction_id")


async def subjects(cur: AsyncCursor, who: Principal, subject_id: int | None, limit: int,
                   offset: int) -> list[dict]:
    await cur.execute(f"{_SUBJECT_FULL} WHERE {IN_SCOPE}"
                      " AND (%(sid)s::bigint IS NULL OR s.id = %(sid)s)"
                      " ORDER BY s.id LIMIT %(limit)s OFFSET %(offset)s",
                      {"scope": who.scope, "sid": subject_id, "limit": limit, "offset": offset})
    return await cur.fetchall()


async def jurisdictions(cur: AsyncCursor, who: Principal) -> list[dict]:
    await cur.execute(f"SELECT * FROM jurisdictions j WHERE {IN_SCOPE} ORDER BY j.path",
                      {"scope": who.scope})
    return await cur.fetchall()


async def zones(cur: AsyncCursor, who: Principal) -> list[dict]:
    cols = ", ".join(f"z.{c.strip()}" for c in ZONE_COLS.split(","))
    await cur.execute(f"SELECT {cols} FROM zones z JOIN jurisdictions j"
                      f" ON j.id = z.jurisdiction_id WHERE z.deleted_at IS NULL AND {IN_SCOPE}"
                      " ORDER BY z.id", {"scope": who.scope})
    return await cur.fetchall()


async def alerts(cur: AsyncCursor, who: Principal, *, alert_id: int | None = None,
                 subject_id: int | None = None, status: str | None = None,
                 type_: str | None = None, since: datetime | None = None,
                 limit: int = 500) -> list[dict]:
    """Alerts as `alert_json` shows them (migration 005): the one shape REST, the websockets
    and the notifications share."""
    await cur.execute(
        "SELECT alert_json(a) AS alert FROM alerts a JOIN subjects s ON s.id = a.subject_id"
        f" JOIN jurisdictions j ON j.id = s.jurisdiction_id WHERE {IN_SCOPE}"
        " AND (%(aid)s::bigint IS NULL OR a.id = %(aid)s)"
        " AND (%(sid)s::bigint IS NULL OR a.subject_id = %(sid)s)"
        " AND (%(st)s::text IS NULL OR a.status = %(st)s)"
        " AND (%(ty)s::text IS NULL OR a.type = %(ty)s)"
        " AND (%(since)s::timestamptz IS NULL OR a.opened_at >= %(since)s)"
        " ORDER BY a.opened_at DESC, a.id DESC LIMIT %(limit)s",
        {"scope": who.scope, "aid": alert_id, "sid": subject_id, "st": status, "ty": type_,
         "since": since, "limit": limit})
    return [r["alert"] for r in await cur.fetchall()]


async def track(cur: AsyncCursor, subject_id: int, start: datetime, end: datetime,
                max_points: int) -> list[dict]:
    """Fixes of the subject's own devices, oldest first; over max_points, the first fix of
    each of max_points equal time buckets (real positions, not averages)."""
    params = {"sid": subject_id, "start": start, "end": end}
    base = ("FROM fixes f JOIN devices d ON d.id = f.device_id WHERE d.subject_id = %(sid)s"
            " AND d.kind <> 'victim' AND f.fix_time >= %(start)s AND f.fix_time < %(end)s")
    cols = ("f.device_id, f.fix_time, f.lat, f.lon, f.accuracy_m, f.speed_mps, f.battery_pct,"
            " f.outlier")
    await cur.execute(f"SELECT count(*) AS n, min(f.fix_time) AS lo, max(f.fix_time) AS hi"
                      f" {base}", params)
    extent = await cur.fetchone()
    if extent["n"] <= max_points:
        await cur.execute(f"SELECT {cols} {base} ORDER BY f.fix_time", params)
        return await cur.fetchall()
    # Buckets over the span the fixes really cover, not the (maybe far wider) window asked.
    bucket = max((extent["hi"] - extent["lo"]) / (max_points - 1), timedelta(milliseconds=1))
    await cur.execute(
        f"SELECT * FROM (SELECT DISTINCT ON (time_bucket(%(bucket)s, f.fix_time)) {cols} {base}"
        " ORDER BY time_bucket(%(bucket)s, f.fix_time), f.fix_time) t ORDER BY fix_time",
        {**params, "bucket": bucket})
    return await cur.fetchall()


async def correlate(cur: AsyncCursor, who: Principal, lat: float, lon: float, radius_m: float,
                    start: datetime, end: datetime) -> list[dict]:
    """Subjects whose fixes came within radius_m of a point in a window, closest approach
    first: a bounding box the (fix_time, lat, lon) index can use, then exact distance."""
    dlat = radius_m / 111_320 * 1.01
    dlon = min(180.0, radius_m / (111_320 * max(math.cos(math.radians(lat)), 1e-6)) * 1.01)
    await cur.execute(
        "SELECT * FROM (SELECT DISTINCT ON (s.id) s.id AS subject_id, s.name AS subject_name,"
        " f.device_id, f.fix_time AS ts, f.lat, f.lon, 2 * 6371008.8 * asin(sqrt("
        " power(sin(radians(f.lat - %(lat)s) / 2), 2) + cos(radians(%(lat)s))"
        " * cos(radians(f.lat)) * power(sin(radians(f.lon - %(lon)s) / 2), 2))) AS distance_m"
        " FROM fixes f JOIN devices d ON d.id = f.device_id AND d.kind <> 'victim'"
        " JOIN subjects s ON s.id = d.subject_id JOIN jurisdictions j ON j.id = s.jurisdiction_id"
        " WHERE f.fix_time >= %(start)s AND f.fix_time < %(end)s AND NOT f.outlier"
        " AND f.lat BETWEEN %(lat)s - %(dlat)s AND %(lat)s + %(dlat)s"
        " AND f.lon BETWEEN %(lon)s - %(dlon)s AND %(lon)s + %(dlon)s"
        f" AND {IN_SCOPE} ORDER BY s.id, distance_m) c WHERE distance_m <= %(r)s"
        " ORDER BY distance_m",
        {"lat": lat, "lon": lon, "dlat": dlat, "dlon": dlon, "start": start, "end": end,
         "r": radius_m, "scope": who.scope})
    return await cur.fetchall()


async def rejects(cur: AsyncCursor, since: datetime | None, limit: int) -> list[dict]:
    await cur.execute("SELECT id, received_at, topic, reason, device_id, payload"
                      " FROM ingest_rejects WHERE (%(since)s::timestamptz IS NULL"
                      " OR received_at >= %(since)s) ORDER BY id DESC LIMIT %(limit)s",
                      {"since": since, "limit": limit})
    return await cur.fetchall()


async def stats(cur: AsyncCursor, who: Principal, online_within: timedelta) -> list[dict]:
    await cur.execute(
        "SELECT j.id AS jurisdiction_id, j.name,"
        " (SELECT count(*) FROM subjects s WHERE s.jurisdiction_id = j.id) AS subjects,"
        " (SELECT count(*) FROM devices d JOIN subjects s ON s.id = d.subject_id"
        "  WHERE s.jurisdiction_id = j.id) AS devices,"
        " (SELECT count(*) FROM devices d JOIN subjects s ON s.id = d.subject_id"
        "  WHERE s.jurisdiction_id = j.id AND EXISTS (SELECT 1 FROM fixes f"
        "  WHERE f.device_id = d.id AND f.fix_time > now() - %(online)s)) AS devices_online,"
        " coalesce((SELECT json_object_agg(type, n) FROM (SELECT a.type, count(*) AS n"
        "  FROM alerts a JOIN subjects s ON s.id = a.subject_id WHERE s.jurisdiction_id = j.id"
        "  AND a.status <> 'resolved' GROUP BY a.type) t), '{}') AS open_alerts"
        f" FROM jurisdictions j WHERE {IN_SCOPE} ORDER BY j.path",
        {"scope": who.scope, "online": online_within})
    return await cur.fetchall()
