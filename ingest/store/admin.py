"""Schema migrations, throwaway databases and benchmark baselines."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg
import psycopg.sql

from geofence.types import Fix
from ingest.store.writes import _COLS, _FIX_TYPES, _fix_row


def shipped_migrations() -> Traversable:
    """The package's own migrations. Through importlib.resources rather than a path beside the
    source, so an installed (non-editable) wheel finds the same files as a checkout."""
    return files("migrations")


def migration_files(directory: Traversable) -> list[tuple[int, str, Traversable]]:
    out = []
    for p in sorted((p for p in directory.iterdir() if p.name.endswith(".sql") and p.is_file()),
                    key=lambda p: p.name):
        number, _, name = p.name.removesuffix(".sql").partition("_")
        if not number.isdigit():
            raise ValueError(f"migration {p.name} must start with its number, e.g. 001_name.sql")
        out.append((int(number), name, p))
    numbers = [n for n, _, _ in out]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"two migrations share a number in {directory}")
    return out


def migrate(database_url: str, directory: Traversable | None = None) -> list[str]:
    """Apply each not-yet-applied migration once, in order, each in its own transaction.
    Forward only: an applied file that has since changed is an error, not a re-run.
    `directory` None: the migrations shipped with the package."""
    directory = shipped_migrations() if directory is None else directory
    if not migration_files(directory):
        # An install that lost its .sql files would otherwise report "up to date" forever.
        raise FileNotFoundError(f"no NNN_name.sql migrations in {directory}")
    applied_now = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Two processes migrating at once would race on the same files.
        conn.execute("SELECT pg_advisory_lock(74657468)")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
                     " name text NOT NULL, sha256 text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = dict(conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall())
        for number, name, path in migration_files(directory):
            sql = path.read_text(encoding="utf-8")
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
    """One subject per device, all in one jurisdiction."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        j = conn.execute("INSERT INTO jurisdictions (name) VALUES ('bench') RETURNING id")
        subjects = [r[0] for r in conn.execute(
            "INSERT INTO subjects (name, jurisdiction_id) SELECT 'bench ' || g, %s"
            " FROM generate_series(1, %s) g RETURNING id", (j.fetchone()[0], len(device_ids)))]
        with conn.cursor().copy("COPY devices (id, kind, subject_id) FROM STDIN") as copy:
            for d, s in zip(device_ids, subjects, strict=True):
                copy.write_row((d, "wearable", s))


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))


def database_identity(database_url: str) -> str:
    """Which database this is, made by `tether migrate` (migration 010) and bound to the
    database's own oid, so a database dropped and restored under the same name (ids start
    again) is a different one. Rule state in Redis is bound to it (ingest/state.py)."""
    try:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT i.id::text || '-' || d.oid::text FROM tether_instance i,"
                               " pg_database d WHERE d.datname = current_database()").fetchone()
    except psycopg.errors.UndefinedTable as e:
        raise RuntimeError("the database has no identity yet: run `tether migrate`") from e
    return hashlib.sha256(row[0].encode()).hexdigest()[:16]


# The last thing heard from each monitored device, from the fixes and events themselves: what
# rebuilds the rule state (tracks, hence silence checks) when Redis lost it. Two index lookups
# per device on (device_id, time), not a scan of the hypertables.
_LAST_HEARD = """
SELECT d.subject_id, d.id, extract(epoch FROM g.fix_time)::float8, g.lat, g.lon,
       coalesce(g.accuracy_m, 0)::float8,
       extract(epoch FROM greatest(f.received_at, e.received_at))::float8
FROM devices d
LEFT JOIN LATERAL (SELECT fix_time, lat, lon, accuracy_m FROM fixes
                   WHERE device_id = d.id AND NOT outlier ORDER BY fix_time DESC LIMIT 1) g ON true
LEFT JOIN LATERAL (SELECT received_at FROM fixes WHERE device_id = d.id
                   ORDER BY fix_time DESC LIMIT 1) f ON true
LEFT JOIN LATERAL (SELECT received_at FROM device_events WHERE device_id = d.id
                   ORDER BY event_time DESC LIMIT 1) e ON true
WHERE d.subject_id IS NOT NULL AND (f.received_at IS NOT NULL OR e.received_at IS NOT NULL)
"""


def last_heard(database_url: str) -> list[tuple]:
    """(subject id, device id, good fix epoch or None, lat, lon, acc, last heard epoch)."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(_LAST_HEARD).fetchall()
