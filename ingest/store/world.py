"""What the rules engine judges against. (What it concludes, alerts, is `alerts.store`'s.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg

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
