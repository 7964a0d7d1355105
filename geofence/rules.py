"""Rule state and the hysteresis machine every breach rule shares. Pure: no I/O, no clock.

A rule is `clear`, `pending` (a probable breach awaiting confirmation) or `breach`. Evidence is a
signed depth into the breach area (metres; <= 0 is compliant) and the fix's accuracy radius:
- compliant evidence never counts against the subject: it cancels a pending breach, and
  `clear_fixes` compliant fixes in a row, or `clear_s` seconds of them, end a breach;
- depth >= accuracy (the whole accuracy circle in breach) is confident: a breach at once;
- 0 < depth < accuracy is probable: it opens a breach only when consecutive probable fixes
  confirm it - their mean depth exceeds their mean accuracy / sqrt(n) (the error of a mean of n
  fixes), or they span `probable_dwell_s` without a gap over `max_gap_s`. Edge wobbles a few
  metres deep under 30 m accuracy would need dozens of fixes in a row, so they never alert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from pydantic import BaseModel, Field

from geofence.types import DeviceKind

MAX_ACCURACY_M = 100_000.0  # as the decoder's bound: coarser than this is no position


class RuleSettings(BaseModel):
    """The rules' settings section (`TETHER_*`, read by the command); defaults suit one fix a
    minute. A plain model here: geofence reads no environment."""

    min_accuracy_m: float = Field(10.0, description="never trust a fix to be better than this "
                                  "(phones under-report their error)")
    unknown_accuracy_m: float = Field(50.0, description="accuracy assumed when a fix has none")
    probable_dwell_s: float = Field(300.0, description="probable fixes this long confirm")
    max_gap_s: float = Field(600.0, description="evidence further apart does not combine")
    clear_fixes: int = Field(3, description="compliant fixes in a row that end a breach")
    clear_s: float = Field(180.0, description="... or compliance for this long")
    fresh_s: float = Field(120.0, description="fixes of two devices this close are compared")
    separation_m: float = Field(200.0, description="phone-wearable distance beyond accuracy")
    separation_dwell_s: float = Field(300.0, description="... for this long: device_separation")
    battery_low_pct: int = 15
    battery_clear_pct: int = 30
    offline_wearable_s: float = 900.0
    offline_phone_s: float = 1800.0
    offline_victim_s: float = 1800.0
    spoof_window_s: float = Field(600.0, description="two impossible jumps this close are "
                                  "spoofing, not a glitch")
    late_after_s: float = Field(60.0, description="a fix received later than this is 'late'")
    leave_grace_s: float = Field(1800.0, description="after a leave's end, this long to be "
                                 "back home before leave_overrun")
    leave_travel_s: float = Field(1800.0, description="after a leave's start, this long to "
                                  "reach the destination before it binds")
    order_expiring_s: float = Field(7 * 86_400.0, description="an order ending within this "
                                    "raises order_expiring (once)")

    def offline_after_s(self, kind: str) -> float:
        return {DeviceKind.WEARABLE: self.offline_wearable_s, DeviceKind.PHONE:
                self.offline_phone_s}.get(kind, self.offline_victim_s)

    def accuracy(self, acc: float | None) -> float:
        # Bounded both ways: sums of accuracies live in the rule state, and an infinite one
        # would be saved as null and never load again.
        if acc is None or not math.isfinite(acc):
            acc = self.unknown_accuracy_m
        return min(max(acc, self.min_accuracy_m), MAX_ACCURACY_M)


class Rule(msgspec.Struct, omit_defaults=True):
    st: str = "clear"  # clear | pending | breach
    n: int = 0  # probable fixes so far (pending) or breach fixes (breach)
    depth: float = 0.0  # sum of depths while pending
    acc: float = 0.0  # sum of accuracies while pending
    since: float = 0.0  # first pending evidence, or when the breach opened (epoch s)
    last: float = 0.0  # newest evidence (epoch s)
    # While in breach, the times (sorted) of the compliant evidence dated after the newest
    # breach evidence: the compliant fixes "in a row" that end it. Times,
    # not a count, so the clear does not depend on the order fixes arrive in (several workers;
    # engine.py `late_fixes`): breach evidence removes only what is older than itself.
    ct: list[float] = []


class Track(msgspec.Struct, omit_defaults=True):
    """The newest good fix of one device, and when anything was last heard from it."""

    t: float = 0.0
    lat: float = 0.0
    lon: float = 0.0
    acc: float = 0.0
    seen: float = 0.0
    batt: int | None = None


class SubjectState(msgspec.Struct, omit_defaults=True):
    tracks: dict[str, Track] = {}
    rules: dict[str, Rule] = {}
    ticked: float = 0.0  # up to when time-driven checks (schedules, silence) were made


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """A breach opening or ending; the alerts layer turns it into an alert."""

    action: str  # open | clear
    type: str
    subject_id: int
    at: datetime
    device_id: str | None = None
    zone_id: int | None = None
    confidence: str | None = None
    late: bool = False
    position: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)


OPEN, CLEAR = "open", "clear"


def step(r: Rule, depth: float | None, acc: float, t: float, s: RuleSettings,
         dwell_s: float | None = None) -> tuple[str, str | None] | None:
    """Apply one piece of evidence at time t. Returns (OPEN, confidence), (CLEAR, None) or None.

    `dwell_s` set: only a dwell of that length confirms (no instant or statistical opening).
    """
    if depth is None or not math.isfinite(depth) or depth <= 0:  # no usable evidence of breach
        if r.st == "pending":
            r.st, r.n, r.depth, r.acc = "clear", 0, 0.0, 0.0
        elif r.st == "breach":
            r.ct = sorted([*r.ct, t])
            n = len(r.ct)
            if n >= s.clear_fixes or (n >= 2 and r.ct[-1] - r.ct[0] >= s.clear_s):
                r.st, r.n, r.ct = "clear", 0, []
                return CLEAR, None
        return None
    if r.st == "breach":
        breach_evidence(r, t)
        return None
    confident = dwell_s is None and depth >= acc
    if r.st == "pending" and t - r.last > s.max_gap_s:
        r.st = "clear"  # too long since the last evidence: start over
    if r.st == "clear":
        r.st, r.n, r.depth, r.acc, r.since = "pending", 0, 0.0, 0.0, t
    r.n, r.depth, r.acc, r.last = r.n + 1, r.depth + depth, r.acc + acc, t
    dwelt = r.n >= 2 and t - r.since >= (dwell_s if dwell_s is not None else s.probable_dwell_s)
    statistical = dwell_s is None and r.n >= 2 and r.depth / r.n > (r.acc / r.n) / math.sqrt(r.n)
    if confident or dwelt or statistical:
        r.st, r.n, r.ct, r.since = "breach", 1, [], t
        return OPEN, "confident" if confident else "probable"
    return None


def breach_evidence(r: Rule, t: float) -> None:
    """Evidence of a breach in force at t: compliant evidence before it no longer counts."""
    r.n += 1
    r.ct = [c for c in r.ct if c > t]
    r.last = max(r.last, t)


def force_open(r: Rule, t: float) -> bool:
    """For rules without spatial evidence (tamper, SOS, silence): True if newly opened."""
    if r.st == "breach":
        r.n, r.last = r.n + 1, t
        return False
    r.st, r.n, r.since, r.last, r.ct = "breach", 1, t, t, []
    return True


def force_clear(r: Rule) -> bool:
    """True if a breach (or pending one) ended."""
    was = r.st == "breach"
    r.st, r.n, r.ct, r.depth, r.acc = "clear", 0, [], 0.0, 0.0
    return was
