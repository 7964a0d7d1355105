"""Weekly schedules in a subject's local time (contract §2, zone `schedule`).

A window is a weekday (Monday = 0), a start and an end in local wall-clock time; an end before
(or equal to) its start runs past midnight into the next day. Windows are judged on the wall
clock, so a 22:00-06:00 curfew lasts 9 real hours on the night clocks go back and 7 on the
night they go forward, as the subject lives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


class ScheduleError(ValueError):
    """A malformed schedule; the message says which window and why."""


@dataclass(frozen=True, slots=True)
class Window:
    day: int  # Monday = 0
    start: time
    end: time

    @property
    def overnight(self) -> bool:
        return self.end <= self.start


def parse_schedule(raw: list[dict] | None) -> tuple[Window, ...] | None:
    """Validate the contract's JSON form; None means always in force."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ScheduleError("schedule must be a non-empty list of windows, or absent")
    out = []
    for i, w in enumerate(raw):
        if not isinstance(w, dict) or set(w) - {"days", "start", "end"}:
            raise ScheduleError(f"window {i}: expected {{days, start, end}}")
        days, start, end = w.get("days"), w.get("start"), w.get("end")
        if (not isinstance(days, list) or not days
                or any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6
                       for d in days)):
            raise ScheduleError(f"window {i}: days must list weekdays 0..6 (Monday = 0)")
        parsed = []
        for name, value in (("start", start), ("end", end)):
            m = _HHMM.fullmatch(value) if isinstance(value, str) else None
            if not m:
                raise ScheduleError(f"window {i}: {name} must be HH:MM (00:00..23:59)")
            parsed.append(time(int(m[1]), int(m[2])))
        out.extend(Window(d, parsed[0], parsed[1]) for d in sorted(set(days)))
    return tuple(out)


def zone_info(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"unknown time zone {name!r}") from e


def in_force(windows: tuple[Window, ...] | None, tz: ZoneInfo, at: datetime) -> bool:
    if windows is None:
        return True
    local = at.astimezone(tz)
    wd, tod = local.weekday(), local.time().replace(tzinfo=None)
    for w in windows:
        if not w.overnight:
            if wd == w.day and w.start <= tod < w.end:
                return True
        elif (wd == w.day and tod >= w.start) or (wd == (w.day + 1) % 7 and tod < w.end):
            return True
    return False


def _instant(d: date, t: time, tz: ZoneInfo) -> datetime:
    # A wall time that does not exist (the spring-forward gap) maps to the instant the clock
    # reaches it on the other side; one that occurs twice (fall back) to its first occurrence.
    return datetime.combine(d, t, tzinfo=tz).astimezone(UTC)


def boundaries(windows: tuple[Window, ...] | None, tz: ZoneInfo, after: datetime,
               until: datetime) -> list[tuple[datetime, bool]]:
    """Window starts (True) and ends (False) in (after, until], oldest first."""
    if windows is None or until <= after:
        return []
    first = after.astimezone(tz).date() - timedelta(days=1)
    last = until.astimezone(tz).date()
    out = []
    d = first
    while d <= last:
        for w in windows:
            if d.weekday() != w.day:
                continue
            start = _instant(d, w.start, tz)
            end = _instant(d + timedelta(days=1) if w.overnight else d, w.end, tz)
            out.extend((t, s) for t, s in ((start, True), (end, False)) if after < t <= until)
        d += timedelta(days=1)
    return sorted(set(out))


def next_boundary(windows: tuple[Window, ...] | None, tz: ZoneInfo,
                  after: datetime) -> datetime | None:
    """The first window start or end after `after`: day by day, stopping at the first found
    (asked once per judged fix, so it must not build a week of boundaries each time)."""
    if windows is None:
        return None
    d = after.astimezone(tz).date() - timedelta(days=1)
    best: datetime | None = None
    for _ in range(9):
        for w in windows:
            if d.weekday() != w.day:
                continue
            for t in (_instant(d, w.start, tz),
                      _instant(d + timedelta(days=1) if w.overnight else d, w.end, tz)):
                if t > after and (best is None or t < best):
                    best = t
        # Every boundary of a later day lies after this day's; an overnight end is at most
        # one day later, so one more day settles it.
        if best is not None and best.astimezone(tz).date() < d:
            break
        d += timedelta(days=1)
    return best


class BoundaryMemo:
    """`next_boundary`, remembered until it passes: for every time in [asked, boundary) the
    answer is the same boundary, and thousands of subjects share one curfew schedule. Pure: the
    caller passes the time. Bounded: emptied when full (a world reload makes a new one)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._known: dict[tuple, tuple[datetime, datetime]] = {}

    def next(self, windows: tuple[Window, ...] | None, tz: ZoneInfo,
             after: datetime) -> datetime | None:
        if windows is None:
            return None
        key = (windows, tz)
        hit = self._known.get(key)
        if hit is not None and hit[0] <= after < hit[1]:
            return hit[1]
        b = next_boundary(windows, tz, after)
        if b is not None:
            if len(self._known) >= self.size:
                self._known.clear()
            self._known[key] = (after, b)
        return b
