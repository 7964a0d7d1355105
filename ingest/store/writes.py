"""Everything ingest says to PostgreSQL/TimescaleDB. The only module of `ingest` importing psycopg.

Writes are set-based, in one transaction per batch: one COPY straight into the hypertable
under a savepoint (the usual case: every fix new). Should any fix be stored already (a
redelivery after a lost ack), the savepoint is undone and the batch goes the careful way: COPY
into a session-local staging table, then one INSERT ... ON CONFLICT DO NOTHING RETURNING, which
says which fixes were new.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg
from psycopg.types.json import Jsonb

from alerts.store import record_rule_events
from geofence.rules import RuleEvent
from geofence.types import DeviceEvent, Fix, Reject
from ingest.store.world import WorldRows, count_unmonitored, load_world, notifications
from tether import db

TransientError, DataRejected = db.TransientError, db.DataRejected

_FIX_COLUMNS = ("device_id", "fix_time", "received_at", "lat", "lon", "accuracy_m", "altitude_m",
                "speed_mps", "heading_deg", "battery_pct", "source", "datum", "reported_lat",
                "reported_lon", "mock", "seq", "outlier", "extra")
_FIX_TYPES = ("text", "timestamptz", "timestamptz", "float8", "float8", "float4", "float4",
              "float4", "float4", "int2", "text", "text", "float8", "float8", "bool", "int8",
              "bool", "jsonb")
_COLS = ", ".join(_FIX_COLUMNS)
_COPY_FIXES = f"COPY _staging_fixes ({_COLS}) FROM STDIN (FORMAT BINARY)"
_COPY_DIRECT = f"COPY fixes ({_COLS}) FROM STDIN (FORMAT BINARY)"
_MERGE_FIXES = (f"INSERT INTO fixes ({_COLS}) SELECT {_COLS} FROM _staging_fixes "
                "ON CONFLICT (device_id, fix_time) DO NOTHING RETURNING device_id, fix_time")
_INSERT_EVENT = ("INSERT INTO device_events (device_id, event_time, type, received_at, lat, lon,"
                 " battery_pct, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                 " ON CONFLICT (device_id, event_time, type) DO NOTHING RETURNING 1")
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
    alerts_changed: list[tuple[int, str, str]] = field(default_factory=list)




def _fix_row(f: Fix) -> tuple:
    return (f.device_id, f.fix_time, f.received_at, f.lat, f.lon, f.accuracy_m, f.altitude_m,
            f.speed_mps, f.heading_deg, f.battery_pct, f.source, f.datum.value, f.reported_lat,
            f.reported_lon, f.mock, f.seq, f.outlier,
            None if f.extra is None else Jsonb(f.extra))


class BatchTx:
    """The writes of one batch transaction (`IngestStore.batch`)."""

    def __init__(self, cur: psycopg.AsyncCursor, severity: dict[str, str]) -> None:
        self.cur, self.severity = cur, severity

    async def store(self, fixes: Sequence[Fix], events: Sequence[DeviceEvent],
                    rejects: Sequence[Reject]) -> tuple[list[Fix], list[DeviceEvent]]:
        """Fixes (by COPY, see the module's doc), events, rejects. Returns the fixes and
        events new to the database: a redelivered duplicate is not judged twice."""
        cur = self.cur
        new_fixes: list[Fix] = []
        new_events: list[DeviceEvent] = []
        if fixes and await self._copy_new(fixes):
            new_fixes = list(fixes)
        elif fixes:
            await self._copy(_COPY_FIXES, fixes)
            await cur.execute(_MERGE_FIXES)
            fresh = await cur.fetchall()
            # The usual case, every row new, needs no lookup: the returned keys are distinct
            # and each is one of the batch's, so as many keys as fixes means all of them.
            if len(fresh) == len(fixes):
                new_fixes = list(fixes)
            else:
                keys = set(fresh)
                new_fixes = [f for f in fixes if (f.device_id, f.fix_time) in keys]
        if events:
            await cur.executemany(_INSERT_EVENT, [
                (e.device_id, e.event_time, e.type, e.received_at, e.lat, e.lon,
                 e.battery_pct, Jsonb(e.data)) for e in events], returning=True)
            for e in events:
                if await cur.fetchone():
                    new_events.append(e)
                cur.nextset()
        if rejects:
            await cur.executemany(_INSERT_REJECT, [
                (r.received_at, r.topic, r.payload, r.reason, r.device_id) for r in rejects])
        return new_fixes, new_events

    async def _copy(self, statement: str, fixes: Sequence[Fix]) -> None:
        async with self.cur.copy(statement) as copy:
            copy.set_types(_FIX_TYPES)
            for f in fixes:
                await copy.write_row(_fix_row(f))

    async def _copy_new(self, fixes: Sequence[Fix]) -> bool:
        """COPY straight into `fixes`, under a savepoint; False (nothing written) if a fix is
        stored already. Half the database's work of staging and merging (tether bench: 17 µs
        of PostgreSQL CPU a fix), and no keys to send back and decode."""
        try:
            async with self.cur.connection.transaction():
                await self._copy(_COPY_DIRECT, fixes)
            return True
        except psycopg.errors.UniqueViolation:
            return False

    async def count_unmonitored(self, counts: Mapping[tuple[str, date], int]) -> None:
        """Reports left out as outside every monitoring order: counted with the batch."""
        if counts:
            await count_unmonitored(self.cur, counts)

    async def record_alerts(self, events: Sequence[RuleEvent]) -> list[tuple[int, str, str]]:
        """The rules' conclusions as alert transitions (alerts/store.py), in this transaction."""
        return await record_rule_events(self.cur, events, self.severity) if events else []


async def _prepare_session(conn: psycopg.AsyncConnection) -> None:
    # Staging is per connection and emptied by each commit, so concurrent writers never meet.
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS _staging_fixes "
                       "(LIKE fixes INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    await conn.commit()


class IngestStore:
    def __init__(self, database_url: str, max_size: int = 4,
                 severity: dict[str, str] | None = None) -> None:
        self.url = database_url
        self.severity = severity or {}
        self.pool = db.pool(database_url, max_size=max_size, configure=_prepare_session)

    async def open(self) -> None:
        # wait=False: a database that is down at start-up is waited out by the writer's retries.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def batch(self, wait_s: float | None = None) -> AsyncIterator[BatchTx]:
        """One transaction for one batch: it commits when the block ends, or rolls back if the
        block raises; what the pipeline does inside it commits together or not at all.
        `wait_s`: how long to wait for a connection (the pool's timeout if None)."""
        async with self.pool.connection(timeout=wait_s) as conn, conn.transaction(), \
                conn.cursor() as cur:
            yield BatchTx(cur, self.severity)

    async def load_world(self) -> WorldRows:
        async with self.pool.connection() as conn:
            return await load_world(conn)

    def world_changes(self) -> AsyncIterator[str]:
        return notifications(self.url)

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
