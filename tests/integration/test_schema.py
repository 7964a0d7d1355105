"""Migrations apply once and refuse edits; retention drops whole chunks of old fixes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from ingest.store import IngestStore, migrate
from ingest.store.admin import migration_files, shipped_migrations
from tests.integration.conftest import count
from tether.config import Settings

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_migrations_are_the_repository_folder() -> None:
    """The package resource and the top-level folder are one set of files (no second copy)."""
    shipped = [(n, name, p.read_text(encoding="utf-8"))
               for n, name, p in migration_files(shipped_migrations())]
    on_disk = sorted(REPO.joinpath("migrations").glob("*.sql"))
    assert [f"{n:03d}_{name}.sql" for n, name, _ in shipped] == [p.name for p in on_disk]
    assert [sql for _, _, sql in shipped] == [p.read_text(encoding="utf-8") for p in on_disk]


def test_a_folder_without_migrations_is_an_error(scratch_db: str, tmp_path: Path) -> None:
    # Not "nothing (up to date)": an install that lost its .sql files must say so.
    with pytest.raises(FileNotFoundError, match=r"no NNN_name\.sql migrations"):
        migrate(scratch_db, tmp_path)


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
