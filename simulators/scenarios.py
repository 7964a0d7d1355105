"""Scripted violations, each with the truth the script records: which alert type must open for
which subject, from about when (docs/rules.md decides what "unambiguous" needs).

A scripted subject stays at home (its GPS error bounded well inside its own zones' margins)
until its moment `t0`, then does one thing. Zones are placed so nothing but the script meets them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from simulators.geo import SPEEDS

ALL = ("exclusion", "near_miss", "curfew", "curfew_start", "victim", "tamper", "spoof",
       "separation", "offline", "late_upload")


@dataclass(slots=True)
class Timing:
    """What the server is configured with (defaults: its defaults), to know when truth is due."""
    separation_dwell_s: float = 300.0
    offline_wearable_s: float = 900.0
    late_after_s: float = 60.0
    tick_s: float = 1.0


@dataclass(slots=True)
class Expect:
    subject: str  # the sim subject's key
    type: str
    at: float  # run seconds from which the alert is due (roughly: the first confident fix)
    late: bool | None = None  # None: either


@dataclass(slots=True)
class Plan:
    """One scenario for one subject: devices, zones (created at arm time), timed actions."""
    name: str
    devices: tuple[str, ...]  # kinds: "wearable", "phone", "phone-owntracks"
    zones: list[dict] = field(default_factory=list)  # bodies in local metres, see fleet.py
    victim_at: tuple[float, float] | None = None  # offset from home
    actions: list[tuple[float, str, dict]] = field(default_factory=list)
    expect: list[Expect] = field(default_factory=list)


def _offset(rng: random.Random, r: float) -> tuple[float, float]:
    a = rng.uniform(0, 2 * math.pi)
    return r * math.cos(a), r * math.sin(a)


def plan(name: str, key: str, t0: float, duration: float, timing: Timing,
         rng: random.Random, wall_now: float) -> Plan | None:
    """The scenario `name` for subject `key`, its moment at run second t0; None when the run is
    too short for its truth to come due."""
    left = duration - t0 - 3
    if name == "exclusion":  # at home 100 m from a zone's edge; drives in at t0
        c = _offset(rng, 200)
        travel = (100 + 20) / SPEEDS["drive"]
        return Plan(name, ("wearable",), zones=[{"kind": "exclusion", "at": c, "radius_m": 100}],
                    actions=[(t0, "go", {"to": c, "mode": "drive"})],
                    expect=[Expect(key, "exclusion_entry", t0 + travel)]) \
            if left > travel + 5 else None
    if name == "near_miss":  # parked 25 m outside an edge, reporting 30 m: nothing is due
        c = _offset(rng, 125)
        return Plan(name, ("phone",), zones=[{"kind": "exclusion", "at": c, "radius_m": 100}],
                    actions=[(0, "park", {"acc": 30.0, "bound": 22.0})])
    if name == "curfew":  # a curfew in force around home; drives out at t0
        away = _offset(rng, 400)
        travel = (80 + 20) / SPEEDS["drive"]
        return Plan(name, ("wearable",), zones=[_curfew(wall_now - 120, 8)],
                    actions=[(t0, "go", {"to": away, "mode": "drive"})],
                    expect=[Expect(key, "curfew", t0 + travel)]) if left > travel + 5 else None
    if name == "curfew_start":  # out (400 m from home) when the curfew starts
        start = math.ceil((wall_now + t0) / 60) * 60  # windows start on whole minutes
        if start - wall_now < duration - 8:
            at = start - wall_now
            zone = _curfew(start, 8)
        else:  # too short for a minute boundary: a curfew created in force while out
            at, zone = t0, {**_curfew(wall_now - 120, 8), "create_at": t0}
        return Plan(name, ("wearable",), zones=[zone],
                    actions=[(0, "move_to", {"to": _offset(rng, 400)})],
                    expect=[Expect(key, "curfew", at)])
    if name == "victim":  # a victim 250 m away (link 150 m); drives to them at t0
        v = _offset(rng, 250)
        travel = (250 - 150 + 30) / SPEEDS["drive"]
        return Plan(name, ("wearable",), victim_at=v,
                    actions=[(t0, "go", {"to": (v[0] + 20, v[1]), "mode": "drive"})],
                    expect=[Expect(key, "victim_proximity", t0 + travel)]) \
            if left > travel + 5 else None
    if name == "tamper":
        return Plan(name, ("wearable",), actions=[(t0, "event", {"type": "strap_open"})],
                    expect=[Expect(key, "strap_tamper", t0)])
    if name == "spoof":
        return Plan(name, ("phone",), actions=[(t0, "mock", {})],
                    expect=[Expect(key, "location_spoofing", t0)])
    if name == "separation":  # leaves the phone at home and drives 500 m away
        travel = 500 / SPEEDS["drive"]
        due = travel + timing.separation_dwell_s + timing.tick_s
        return Plan(name, ("wearable", "phone"),
                    actions=[(t0, "leave_phone", {}),
                             (t0, "go", {"to": _offset(rng, 500), "mode": "drive"})],
                    expect=[Expect(key, "device_separation", t0 + due)]) \
            if left > due + 5 else None
    if name == "offline":  # stops reporting (no last will: a flat battery)
        due = timing.offline_wearable_s + 2 * timing.tick_s
        return Plan(name, ("wearable",), actions=[(t0, "silence", {})],
                    expect=[Expect(key, "device_offline", t0 + due)]) if left > due + 5 else None
    if name == "late_upload":  # out of coverage, drives through a zone, uploads afterwards
        c = _offset(rng, 150)
        back = 1 + 150 / SPEEDS["drive"] + 5  # in the zone's middle, then home again
        out_by = back + 60 / SPEEDS["drive"] + 2
        gap, late = out_by + timing.late_after_s + 5, True  # every breach fix is stale
        if left < gap + 5:
            gap, late = out_by + 4, None
        if left < gap + 5 or gap > timing.offline_wearable_s - 5:  # a gap, not an outage
            return None
        return Plan(name, ("wearable",), zones=[{"kind": "exclusion", "at": c, "radius_m": 60}],
                    actions=[(t0, "gap", {"seconds": gap}),
                             (t0 + 1, "go", {"to": c, "mode": "drive"}),
                             (t0 + back, "go", {"to": (0.0, 0.0), "mode": "drive"})],
                    expect=[Expect(key, "exclusion_entry", t0 + gap, late)])
    raise ValueError(f"unknown scenario {name!r} (one of {', '.join(ALL)})")


def _curfew(start_epoch: float, hours: int) -> dict:
    """An inclusion circle around home in force from `start_epoch` for `hours` (UTC clock: the
    simulator's jurisdictions are in UTC), every day."""
    s = int(start_epoch // 60 * 60)
    h, m = divmod(s // 60 % 1440, 60)
    eh = (h + hours) % 24
    return {"kind": "inclusion", "at": (0.0, 0.0), "radius_m": 80,
            "schedule": [{"days": list(range(7)), "start": f"{h:02d}:{m:02d}",
                          "end": f"{eh:02d}:{m:02d}"}]}


def parse_mix(text: str) -> dict[str, int]:
    """`exclusion=2,near_miss=3` or `all` (one of each) or `all=2`."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, n = part.partition("=")
        count = int(n) if n else 1
        if count < 0:
            raise ValueError(f"negative count in {part!r}")
        for one in (ALL if name == "all" else (name,)):
            if one not in ALL:
                raise ValueError(f"unknown scenario {one!r} (one of {', '.join(ALL)})")
            out[one] = out.get(one, 0) + count
    return out
