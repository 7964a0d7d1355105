"""The import rules of docs/architecture.md (pyproject's [tool.importlinter]) hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_import_rules_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    # lint-imports exits non-zero when any contract is broken, and names the offending imports.
    run = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=110)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout, run.stdout
