"""What the websockets hear from PostgreSQL: alert changes as they commit (LISTEN
tether_alerts), world changes (LISTEN tether_world), and the jurisdiction path of each subject."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import psycopg
from psycopg import AsyncCursor


async def alert_changes(database_url: str) -> AsyncIterator[dict]:
    """Yields {"alert_id", "event"} per committed change; ends if the connection is lost."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("LISTEN tether_alerts")
        yield {"listening": True}
        async for n in conn.notifies():
            yield json.loads(n.payload)


async def alert_with_path(cur: AsyncCursor, alert_id: int) -> dict | None:
    """The alert as the contract shows it, and the jurisdiction path that decides who may."""
    await cur.execute("SELECT alert_json(a.id) AS alert, j.path FROM alerts a"
                      " JOIN subjects s ON s.id = a.subject_id"
                      " JOIN jurisdictions j ON j.id = s.jurisdiction_id WHERE a.id = %s",
                      (alert_id,))
    return await cur.fetchone()


async def world_changes(database_url: str) -> AsyncIterator[None]:
    """Yields once on connecting (changes missed while away), then per committed change of
    zones, subjects, devices or victims; ends if the connection is lost."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("LISTEN tether_world")
        yield None
        async for _ in conn.notifies():
            yield None


async def subject_paths(cur: AsyncCursor) -> dict[int, tuple[int, ...]]:
    """Each subject's jurisdiction path (root first), which decides who may see it."""
    await cur.execute("SELECT s.id, j.path FROM subjects s"
                      " JOIN jurisdictions j ON j.id = s.jurisdiction_id")
    return {r["id"]: tuple(r["path"]) for r in await cur.fetchall()}
