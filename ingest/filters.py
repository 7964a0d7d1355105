"""Pure GPS filters in the spirit of Traccar's, except that nothing plausible is dropped:
future-dated fixes are rejected (kept as rejects), impossible jumps are stored but flagged.

The jump filter re-anchors. A fix is judged against the device's last good fix (the
reference); but the reference itself may be the bad one (a forged or wild cell fix accepted after
a gap, or as a device's first fix). When `confirm_fixes` jumped fixes agree with each other
(pairwise plausible speed) while disagreeing with the reference, the reference was the outlier:
those fixes are good and the newest becomes the reference. So one far fix can hide at most
`confirm_fixes - 1` true fixes, never hours of them. The jumped fixes waiting for confirmation
(the candidates, at most `confirm_fixes - 1`) live with the last good fix in the shared state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from msgspec.structs import replace

from geofence.geodesy import haversine_m
from geofence.types import Fix, Reject, Subject
from ingest.decode import KEPT_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class FilterSettings:
    max_future: timedelta = timedelta(minutes=5)
    max_speed_mps: float = 300 / 3.6
    confirm_fixes: int = 3  # agreeing jumped fixes that prove the reference wrong


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


@dataclass(slots=True)
class JumpState:
    """What the jump filter remembers of a device between batches (bounded)."""

    last: LastGood | None = None
    candidates: list[LastGood] = field(default_factory=list)  # oldest first


def _good(f: Fix) -> LastGood:
    return LastGood(f.fix_time, f.lat, f.lon, f.accuracy_m)


def flag_outliers(last: LastGood | None, fixes: list[Fix],
                  settings: FilterSettings) -> tuple[LastGood | None, list[Fix]]:
    """`judge_jumps` without memory of earlier candidates: the newest good fix, and the fixes."""
    state, judged = judge_jumps(JumpState(last), fixes, settings)
    return state.last, judged


def judge_jumps(state: JumpState, fixes: list[Fix],
                settings: FilterSettings) -> tuple[JumpState, list[Fix]]:
    """Flag impossible jumps in one device's fixes. `fixes` must be sorted by fix_time.

    Each fix is judged against the newest earlier good fix, so one spike does not also condemn
    the good fix after it. Fixes older than the reference (a late upload) are judged among
    themselves. Returns the new state (the newest good fix and the candidates still waiting)
    and the fixes, each as judged: fixes are immutable, so a flagged one is a copy.
    """
    last = state.last
    newest = last
    cands = [c for c in state.candidates if last is None or c.fix_time > last.fix_time]
    waiting: set[datetime] = set()  # this call's candidates, to unflag on confirmation
    flagged: set[datetime] = set()
    prev: LastGood | None = None
    for f in fixes:
        # The reference is the newest good fix before this one, from the batch or from state.
        if last is not None and last.fix_time < f.fix_time and (
                prev is None or prev.fix_time < last.fix_time):
            prev = last
        head = newest is None or f.fix_time > newest.fix_time  # not a late upload
        if prev is None or not is_jump(prev, f, settings.max_speed_mps):
            prev = _good(f)
            if head:
                newest, cands = prev, []
            continue
        flagged.add(f.fix_time)
        if not head:
            continue
        me = _good(f)
        # Invariant: the candidates agree pairwise; keep those agreeing with this fix too.
        cands = [c for c in cands if c.fix_time < f.fix_time
                 and not is_jump(c, f, settings.max_speed_mps)] + [me]
        waiting.add(f.fix_time)
        if len(cands) >= settings.confirm_fixes:
            # The reference was the outlier: these fixes are good.
            flagged -= {c.fix_time for c in cands if c.fix_time in waiting}
            newest = prev = me
            cands = []
    judged = [replace(f, outlier=f.fix_time in flagged) if (f.fix_time in flagged) != f.outlier
              else f for f in fixes]
    return JumpState(newest, cands[-(settings.confirm_fixes - 1):] if cands else []), judged


def outside_orders(fixes: Iterable[Fix], owner: Mapping[str, Sequence[int]],
                   subjects: Mapping[int, Subject]) -> tuple[list[Fix], Counter[tuple[str, date]]]:
    """Monitoring orders (contract §6): a fix taken while none of its device's subjects had an
    order in force is neither judged nor kept as a position; only a count per device and UTC day
    is kept. A device the world does not know yet, or one on no subject, keeps its fixes (the
    registry check and the engine decide about those)."""
    kept: list[Fix] = []
    dropped: Counter[tuple[str, date]] = Counter()
    for f in fixes:  # per fix on the hot path: no list or generator per fix
        monitored = None  # None: no known subject owns the device
        for sid in owner.get(f.device_id, ()):
            subject = subjects.get(sid)
            if subject is not None:
                monitored = subject.monitored(f.fix_time)
                if monitored:
                    break
        if monitored is False:
            dropped[(f.device_id, f.fix_time.astimezone(UTC).date())] += 1
        else:
            kept.append(f)
    return kept, dropped
