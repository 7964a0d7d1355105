"""Everything ingest says to PostgreSQL/TimescaleDB. The only module of `ingest` importing psycopg.

Writes are set-based: one COPY per batch into a session-local staging table, then one
INSERT ... ON CONFLICT DO NOTHING into the hypertable, all in one transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import psycopg.sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from geofence.types import DeviceEvent, Fix, Reject

# Errors worth waiting out (the database is down, restarting or overloaded), as opposed to bugs.
TransientError = (psycopg.OperationalError, psycopg.errors.AdminShutdown, TimeoutError)
# Errors caused by the data itself (e.g. a NUL character jsonb refuses): retrying cannot help.
DataRejected = (psycopg.DataError, psycopg.IntegrityError)

_FIX_COLUMNS = ("device_id", "fix_time", "received_at", "lat", "lon", "accuracy_m", "altitude_m",
                "speed_mps", "heading_deg", "battery_pct", "source", "datum", "reported_lat",
                "reported_lon", "mock", "seq", "outlier", "extra")
_FIX_TYPES = ("text", "timestamptz", "timestamptz", "float8", "float8", "float4", "float4",
              "float4", "float4", "int2", "text", "text", "float8", "float8", "bool", "int8",
              "bool", "jsonb")
_COLS = ", ".join(_FIX_COLUMNS)
_COPY_FIXES = f"COPY _staging_fixes ({_COLS}) FROM STDIN (FORMAT BINARY)"
_MERGE_FIXES = (f"INSERT INTO fixes ({_COLS}) SELECT {_COLS} FROM _staging_fixes "
                "ON CONFLICT (device_id, fix_time) DO NOTHING")
_INSERT_EVENT = ("INSERT INTO device_events (device_id, event_time, type, received_at, lat, lon,"
                 " battery_pct, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                 " ON CONFLICT (device_id, event_time, type) DO NOTHING")
_INSERT_REJECT = ("INSERT INTO ingest_rejects (received_at, topic, payload, reason, device_id)"
                  " VALUES (%s, %s, %s, %s, %s)")


@dataclass(frozen=True, slots=True)
class Registered:
    subject_id: int
    kind: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    fixes_stored: int
    events_stored: int


def _fix_row(f: Fix) -> tuple:
    return (f.device_id, f.fix_time, f.received_at, f.lat, f.lon, f.accuracy_m, f.altitude_m,
            f.speed_mps, f.heading_deg, f.battery_pct, f.source, f.datum.value, f.reported_lat,
            f.reported_lon, f.mock, f.seq, f.outlier,
            None if f.extra is None else Jsonb(f.extra))


async def _prepare_session(conn: psycopg.AsyncConnection) -> None:
    # Staging is per connection and emptied by each commit, so concurrent writers never meet.
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS _staging_fixes "
                       "(LIKE fixes INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    await conn.commit()


class IngestStore:
    def __init__(self, database_url: str, max_size: int = 4) -> None:
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=max_size, open=False,
                                        configure=_prepare_session, timeout=10)

    async def open(self) -> None:
        # wait=False: a database that is down at start-up is waited out by the writer's retries.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def write(self, fixes: Sequence[Fix], events: Sequence[DeviceEvent],
                    rejects: Sequence[Reject]) -> WriteResult:
        """Store one batch atomically; duplicates (same device and time) are skipped."""
        stored = events_stored = 0
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if fixes:
                async with cur.copy(_COPY_FIXES) as copy:
                    copy.set_types(_FIX_TYPES)
                    for f in fixes:
                        await copy.write_row(_fix_row(f))
                await cur.execute(_MERGE_FIXES)
                stored = cur.rowcount
            if events:
                await cur.executemany(_INSERT_EVENT, [
                    (e.device_id, e.event_time, e.type, e.received_at, e.lat, e.lon,
                     e.battery_pct, Jsonb(e.data)) for e in events])
                events_stored = cur.rowcount  # executemany sums the rows of each statement
            if rejects:
                await cur.executemany(_INSERT_REJECT, [
                    (r.received_at, r.topic, r.payload, r.reason, r.device_id) for r in rejects])
        return WriteResult(stored, events_stored)

    async def registered(self, device_ids: Iterable[str]) -> dict[str, Registered]:
        ids = list(device_ids)
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT id, subject_id, kind FROM devices WHERE id = ANY(%s)", (ids,))).fetchall()
        return {r[0]: Registered(r[1], r[2]) for r in rows}

    async def all_registered(self) -> dict[str, Registered]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute("SELECT id, subject_id, kind FROM devices")).fetchall()
        return {r[0]: Registered(r[1], r[2]) for r in rows}

    async def drop_old_fixes(self, retention: timedelta) -> int:
        """The Apache build of TimescaleDB has no retention policy: drop whole chunks here."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT drop_chunks('fixes', older_than => now() - %s::interval)",
                (retention,))).fetchall()
        return len(rows)


# --- migrations ---------------------------------------------------------------------------------

def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    out = []
    for p in sorted(directory.glob("*.sql")):
        number, _, name = p.stem.partition("_")
        if not number.isdigit():
            raise ValueError(f"migration {p.name} must start with its number, e.g. 001_name.sql")
        out.append((int(number), name, p))
    numbers = [n for n, _, _ in out]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"two migrations share a number in {directory}")
    return out


def migrate(database_url: str, directory: Path) -> list[str]:
    """Apply each not-yet-applied migration once, in order, each in its own transaction.
    Forward only: an applied file that has since changed is an error, not a re-run."""
    applied_now = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Two processes migrating at once would race on the same files.
        conn.execute("SELECT pg_advisory_lock(74657468)")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
                     " name text NOT NULL, sha256 text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = dict(conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall())
        for number, name, path in migration_files(directory):
            sql = path.read_text()
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if number in done:
                if done[number] != digest:
                    raise RuntimeError(f"migration {path.name} changed after it was applied; "
                                       "add a new migration instead")
                continue
            with conn.transaction():
                conn.execute(sql.encode())  # a whole file: bytes skip parameter parsing
                conn.execute("INSERT INTO schema_migrations (version, name, sha256)"
                             " VALUES (%s, %s, %s)", (number, name, digest))
            applied_now.append(path.name)
        conn.execute("SELECT pg_advisory_unlock(74657468)")
    return applied_now


# --- benchmark baselines and throwaway databases --------------------------------------------------

def copy_baseline(database_url: str, fixes: Sequence[Fix]) -> None:
    """Raw binary COPY straight into the hypertable: the ceiling ingest is measured against."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY fixes ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_FIX_TYPES)
            for f in fixes:
                copy.write_row(_fix_row(f))
        conn.commit()


def count_fixes(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM fixes").fetchone()[0]


def register_devices(database_url: str, device_ids: Sequence[str]) -> None:
    with psycopg.connect(database_url) as conn, conn.transaction():
        j = conn.execute("INSERT INTO jurisdictions (name) VALUES ('bench') RETURNING id")
        s = conn.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES ('bench', %s)"
                         " RETURNING id", (j.fetchone()[0],)).fetchone()[0]
        with conn.cursor().copy("COPY devices (id, kind, subject_id) FROM STDIN") as copy:
            for d in device_ids:
                copy.write_row((d, "wearable", s))


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))
