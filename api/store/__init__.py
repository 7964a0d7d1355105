"""Everything the API says to PostgreSQL: the only place in `api` importing psycopg.

Scope is decided in SQL: a non-admin user's jurisdiction id must be in the `path` (root to self)
of the jurisdiction that owns the row. Every write commits with its audit row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tether import db

Unavailable = db.TransientError
UniqueViolation = psycopg.errors.UniqueViolation
ForeignKeyViolation = psycopg.errors.ForeignKeyViolation
CheckViolation = psycopg.errors.CheckViolation
DataError = psycopg.DataError  # a value the database cannot hold (NUL in text, overflow...)


@dataclass(frozen=True, slots=True)
class Principal:
    id: int
    username: str
    role: str
    jurisdiction_id: int | None

    @property
    def scope(self) -> int | None:
        """None: everything (admin); else the root of what this user may see."""
        return None if self.role == "admin" else self.jurisdiction_id


# Reused in every scoped query: `j` is the jurisdiction that owns the row.
IN_SCOPE = "(%(scope)s::bigint IS NULL OR %(scope)s = ANY(j.path))"


class ApiStore:
    def __init__(self, database_url: str) -> None:
        self.pool = db.pool(database_url, max_size=8, dict_rows=True)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[psycopg.AsyncCursor]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            yield cur

    @asynccontextmanager
    async def write(self) -> AsyncIterator[psycopg.AsyncCursor]:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur


async def audit(cur: psycopg.AsyncCursor, who: Principal | None, action: str, object_type: str,
                object_id: Any, before: dict | None, after: dict | None) -> None:
    await cur.execute(
        "INSERT INTO audit_log (user_id, action, object_type, object_id, before, after)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (who.id if who else None, action, object_type,
         None if object_id is None else str(object_id),
         Jsonb(_jsonable(before)) if before is not None else None,
         Jsonb(_jsonable(after)) if after is not None else None))


def _jsonable(row: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()
            if k not in ("password_hash", "notify_secret")}
