"""Helpers for engine scenarios: build a world, feed a track, collect the events."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np

from geofence.engine import World, evaluate
from geofence.rules import RuleEvent, RuleSettings, SubjectState
from geofence.schedule import parse_schedule
from geofence.timers import tick
from geofence.types import DeviceEvent, DeviceKind, Fix, Subject, VictimLink
from geofence.zones import Zone, ZoneIndex

BASE = (31.2304, 121.4737)  # Shanghai
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def offset(north_m: float, east_m: float,
           origin: tuple[float, float] = BASE) -> tuple[float, float]:
    lat = origin[0] + north_m / 111_320
    lon = origin[1] + east_m / (111_320 * math.cos(math.radians(origin[0])))
    return lat, lon


def square(half_m: float, origin: tuple[float, float] = BASE) -> dict:
    corners = [offset(-half_m, -half_m, origin), offset(-half_m, half_m, origin),
               offset(half_m, half_m, origin), offset(half_m, -half_m, origin)]
    ring = [[lon, lat] for lat, lon in corners]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def zone(zid: int, kind: str = "exclusion", geometry: dict | None = None, **kw) -> Zone:
    schedule = kw.pop("schedule", None)
    return Zone(zid, f"zone {zid}", kind, geometry or square(100), jurisdiction_id=1,
                created_at=kw.pop("created_at", EPOCH), schedule=parse_schedule(schedule), **kw)


def subject(tz: str = "Asia/Shanghai", **devices: DeviceKind) -> Subject:
    return Subject(7, (1,), tz, devices or {"w": DeviceKind.WEARABLE})


def fix(at: datetime, pos: tuple[float, float], device: str = "w", acc: float | None = 10,
        received: datetime | None = None, **kw) -> Fix:
    return Fix(device, at, pos[0], pos[1], received or at + timedelta(seconds=2),
               accuracy_m=acc, **kw)


class Run:
    """A subject's timeline fed one fix (or one batch) at a time, like the pipeline does."""

    def __init__(self, zones: list[Zone], subj: Subject | None = None,
                 victims: list[VictimLink] = (), settings: RuleSettings | None = None) -> None:
        self.subject = subj or subject()
        self.world = World(ZoneIndex(zones), {self.subject.id: self.subject},
                           {self.subject.id: list(victims)})
        self.settings = settings or RuleSettings()
        self.state = SubjectState()
        self.events: list[RuleEvent] = []

    def feed(self, fixes: list[Fix] = (), events: list[DeviceEvent] = ()) -> list[RuleEvent]:
        fixes = list(fixes)
        near_lists = self.world.zones.near(np.array([f.lon for f in fixes]),
                                           np.array([f.lat for f in fixes]))
        near = {f: z for f, z in zip(fixes, near_lists, strict=True)}
        out = evaluate(self.state, self.subject, self.world, self.settings, fixes, events, near)
        self.events += out
        return out

    def track(self, fixes: list[Fix]) -> list[RuleEvent]:
        out = []
        for f in fixes:
            out += self.feed([f])
        return out

    def tick(self, now: datetime) -> list[RuleEvent]:
        out = tick(self.state, self.subject, self.world, self.settings, now)
        self.events += out
        return out

    def opened(self) -> list[RuleEvent]:
        return [e for e in self.events if e.action == "open"]
