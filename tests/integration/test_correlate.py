"""Crime-scene correlation finds exactly the subjects who were there, on a seeded data set
(the same check `tether bench --correlate` runs on a million fixes)."""

from __future__ import annotations

from tether.bench.correlate import run
from tether.config import Settings


async def test_planted_subjects_and_only_they_are_found(base_settings: Settings) -> None:
    r = await run(base_settings, 50_000, queries=3)
    assert r["found"] == r["expected"] == ["corr-0000", "corr-0001", "corr-0002"]
    assert r["fixes"] > 45_000
