"""Pure GPS filters in the spirit of Traccar's, except that nothing plausible is dropped:
future-dated fixes are rejected (kept as rejects), impossible jumps are stored but flagged."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from geofence.geodesy import haversine_m
from geofence.types import Fix, Reject
from ingest.decode import KEPT_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class FilterSettings:
    max_future: timedelta = timedelta(minutes=5)
    max_speed_mps: float = 300 / 3.6


@dataclass(frozen=True, slots=True)
class LastGood:
    """The newest non-outlier fix of a device, against which the next jump is judged."""

    fix_time: datetime
    lat: float
    lon: float
    accuracy_m: float | None


def reject_future(fixes: Iterable[Fix], topic: str, payload: bytes,
                  settings: FilterSettings) -> tuple[list[Fix], list[Reject]]:
    kept: list[Fix] = []
    rejects: list[Reject] = []
    for f in fixes:
        ahead = (f.fix_time - f.received_at).total_seconds()
        if ahead > settings.max_future.total_seconds():
            rejects.append(Reject(topic, payload[:KEPT_PAYLOAD_BYTES],
                                  f"future: fix dated {ahead:.0f} s after it was received",
                                  f.received_at, f.device_id))
        else:
            kept.append(f)
    return kept, rejects


def is_jump(prev: LastGood, fix: Fix, max_speed_mps: float) -> bool:
    """True when reaching `fix` from `prev` needs more than `max_speed_mps`, after allowing
    both fixes their stated accuracy (a coarse cell fix is imprecise, not impossible)."""
    slack = (prev.accuracy_m or 0.0) + (fix.accuracy_m or 0.0)
    dist = haversine_m(prev.lat, prev.lon, fix.lat, fix.lon) - slack
    if dist <= 0:
        return False
    dt = abs((fix.fix_time - prev.fix_time).total_seconds())
    return dist > max_speed_mps * max(dt, 1.0)


def flag_outliers(last: LastGood | None, fixes: list[Fix],
                  settings: FilterSettings) -> LastGood | None:
    """Flag impossible jumps in one device's fixes. `fixes` must be sorted by fix_time.

    Each fix is judged against the newest earlier good fix, so one spike does not also condemn
    the good fix after it. Fixes older than `last` (a late upload) are judged among themselves.
    Returns the new newest good fix.
    """
    newest = last
    prev: LastGood | None = None
    for f in fixes:
        # The reference is the newest good fix before this one, from the batch or from state.
        if last is not None and last.fix_time < f.fix_time and (
                prev is None or prev.fix_time < last.fix_time):
            prev = last
        if prev is not None and is_jump(prev, f, settings.max_speed_mps):
            f.outlier = True
            continue
        prev = LastGood(f.fix_time, f.lat, f.lon, f.accuracy_m)
        if newest is None or f.fix_time > newest.fix_time:
            newest = prev
    return newest
