"""Migrations apply once and refuse edits; retention drops whole chunks of old fixes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from ingest.settings import Settings
from ingest.store import IngestStore, migrate
from tests.integration.conftest import _with_db, count


@pytest.fixture
def scratch_db(base_settings: Settings):
    name = f"tether_scratch_{uuid.uuid4().hex[:8]}"
    admin = _with_db(base_settings.database_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield _with_db(base_settings.database_url, name)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))


def test_each_migration_applies_once_in_order(scratch_db: str, tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "002_b.sql").write_text("INSERT INTO a VALUES (1);")
    assert migrate(scratch_db, tmp_path) == ["001_a.sql", "002_b.sql"]
    assert migrate(scratch_db, tmp_path) == []
    with psycopg.connect(scratch_db) as c:
        assert c.execute("SELECT count(*) FROM a").fetchone()[0] == 1


def test_a_failing_migration_leaves_nothing_half_done(scratch_db: str, tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int); SELECT 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(scratch_db, tmp_path)
    with psycopg.connect(scratch_db) as c:
        assert c.execute("SELECT to_regclass('a')").fetchone()[0] is None
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0


def test_an_applied_migration_that_changed_is_refused(scratch_db: str, tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int);")
    migrate(scratch_db, tmp_path)
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x bigint);")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(scratch_db, tmp_path)


async def test_retention_drops_old_chunks_and_keeps_recent_fixes(base_settings: Settings,
                                                                 db) -> None:
    d = f"ret-{uuid.uuid4().hex[:8]}"
    db.execute("INSERT INTO fixes (device_id, fix_time, received_at, lat, lon) VALUES "
               "(%s, now() - interval '500 days', now(), 1, 1), "
               "(%s, now() - interval '10 days', now(), 1, 1)", (d, d))
    store = IngestStore(base_settings.database_url)
    await store.open()
    try:
        assert await store.drop_old_fixes(timedelta(days=400)) >= 1
    finally:
        await store.close()
    assert count(db, "SELECT count(*) FROM fixes WHERE device_id = %s", d) == 1
