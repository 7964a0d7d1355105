"""What the rules engine judges against. (What it concludes, alerts, is `alerts.store`'s.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date

import psycopg

CHANNEL = "tether_world"


@dataclass(frozen=True, slots=True)
class WorldRows:
    zones: list[tuple]
    subjects: list[tuple]  # id, jurisdiction path, timezone
    devices: list[tuple]  # id, subject_id (None: on no subject), kind
    victims: list[tuple]  # id, subject_id, device_id, radius_m
    orders: list[tuple] = ()  # id, subject_id, starts_at, effective end
    leaves: list[tuple] = ()  # id, subject_id, starts_at, ends_at, returned_at (approved ones)
    zone_versions: list[tuple] = ()  # as zones, created_at/deleted_at = when in force


async def load_world(conn: psycopg.AsyncConnection) -> WorldRows:
    async def rows(sql: str) -> list[tuple]:
        return await (await conn.execute(sql)).fetchall()

    # Zones deleted (or versions replaced) within the week stay loaded: a late upload is judged
    # as things were then. A zone's current version is in force from its last change.
    return WorldRows(
        await rows("SELECT id, name, kind, geometry, radius_m, buffer_m, subject_id,"
                   " jurisdiction_id, schedule, coalesce(changed_at, created_at), deleted_at,"
                   " leave_id FROM zones"
                   " WHERE deleted_at IS NULL OR deleted_at > now() - interval '7 days'"),
        await rows("SELECT s.id, j.path, coalesce(s.timezone, j.timezone) FROM subjects s"
                   " JOIN jurisdictions j ON j.id = s.jurisdiction_id"),
        await rows("SELECT id, subject_id, kind FROM devices"),
        await rows("SELECT id, subject_id, device_id, radius_m FROM victims"),
        await rows("SELECT id, subject_id, starts_at, least(ends_at, ended_at)"
                   " FROM monitoring_orders"),
        await rows("SELECT id, subject_id, starts_at, ends_at, returned_at FROM leaves"
                   " WHERE status IN ('approved', 'returned')"
                   " AND coalesce(returned_at, ends_at) > now() - interval '7 days'"),
        await rows("SELECT v.zone_id, v.name, z.kind, v.geometry, v.radius_m, v.buffer_m,"
                   " z.subject_id, z.jurisdiction_id, v.schedule, v.valid_from, v.valid_to,"
                   " z.leave_id FROM zone_versions v JOIN zones z ON z.id = v.zone_id"
                   " WHERE v.valid_to > now() - interval '7 days'"))


async def notifications(url: str) -> AsyncIterator[str]:
    """Yields the table name of each world change; ends when the connection is lost."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        yield "listening"
        async for n in conn.notifies():
            yield n.payload


async def count_unmonitored(conn: psycopg.AsyncConnection | psycopg.AsyncCursor,
                            counts: Mapping[tuple[str, date], int]) -> None:
    """Reports received outside any monitoring order, per device and day (the officer sees a
    device that should be collected)."""
    await conn.execute(
        "INSERT INTO unmonitored_reports (device_id, day, n)"
        " SELECT * FROM unnest(%s::text[], %s::date[], %s::bigint[])"
        " ON CONFLICT (device_id, day) DO UPDATE SET n = unmonitored_reports.n + EXCLUDED.n",
        ([d for d, _ in counts], [day for _, day in counts], list(counts.values())))
