"""A normal (non-editable) install is a working `tether`: it ships and finds its migrations.

The wheel is built and installed offline (`--no-index --no-build-isolation`) into a new venv
that sees the project's dependencies through a .pth line, so the test is fast and needs no
registry. The install is run from a copy of the source, outside the checkout, so nothing in the
checkout (and no path beside the source) can stand in for what the wheel should carry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
_NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build",
                                     "node_modules", ".*_cache", ".hypothesis", ".schemathesis")


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding a non-editable install of the project; returns its bin/."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = _run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
    # The project's dependencies, without its own editable hook: a path named in a .pth is put
    # on sys.path, but .pth files inside it (the editable finder) are not run.
    (Path(site.strip()) / "tether-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--no-deps",
         "--no-index", "--no-build-isolation", src, cwd=root)
    shutil.rmtree(src)  # whatever runs now can only come from the install
    return env_dir / "bin"


@pytest.mark.timeout(300)
def test_the_installed_package_is_imported_from_the_venv(installed: Path, tmp_path: Path) -> None:
    where = _run(installed / "python", "-c",
                 "import tether.cli, ingest, migrations;"
                 " print(ingest.__file__, migrations.__file__)",
                 cwd=tmp_path)
    for path in where.split():
        assert Path(path).is_relative_to(installed.parent), where


@pytest.mark.timeout(300)
def test_a_non_editable_install_migrates_an_empty_database(installed: Path, tmp_path: Path,
                                                           scratch_db: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["TETHER_DATABASE_URL"] = scratch_db
    shipped = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert len(shipped) >= 4

    first = _run(installed / "tether", "migrate", cwd=tmp_path, env=env)
    assert first.strip() == "applied: " + ", ".join(shipped)
    with psycopg.connect(scratch_db) as c:
        tables = {r[0] for r in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"fixes", "device_events", "alerts", "devices", "subjects", "ingest_rejects",
                "schema_migrations"} <= tables
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(shipped)
        hypertables = {r[0] for r in c.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"fixes", "device_events"} <= hypertables

    second = _run(installed / "tether", "migrate", cwd=tmp_path, env=env)
    assert second.strip() == "applied: nothing (up to date)"
