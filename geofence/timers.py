"""Time-driven checks: what the passing of time alone decides. Pure: `now` is an argument.

- At the start of a schedule window (or when a scheduled zone is created inside one) the last
  known fix of each device decides: a subject already outside at curfew is in breach though no
  new fix arrives. A device silent too long by then raises device_offline naming the zone.
- At the end of a window its breaches end.
- A device silent longer than its kind's limit raises one device_offline per outage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from geofence import keys
from geofence.engine import Judge, World, zone_type
from geofence.keys import RuleKind
from geofence.rules import (
    CLEAR,
    OPEN,
    Rule,
    RuleEvent,
    RuleSettings,
    SubjectState,
    force_clear,
    force_open,
    step,
)
from geofence.schedule import boundaries
from geofence.types import DeviceKind, Subject
from geofence.zones import CompiledZone, applies, suspended

FIRST_LOOK_BACK = timedelta(minutes=1)  # a subject never ticked before: how far back to look


def scheduled_zones(world: World, subject: Subject, st: SubjectState) -> list[CompiledZone]:
    """Scheduled zones applying to the subject: its inclusion zones, and the exclusion zones
    near any of its devices' last positions."""
    found = {c.zone.id: c for c in world.zones.inclusion_for(subject) if c.zone.schedule}
    own = [t for d, t in st.tracks.items() if d in subject.devices and t.t]
    if own:  # (scheduled inclusion zones are found by owner above, not by place)
        near = world.zones.near_scheduled_exclusions(np.array([t.lon for t in own]),
                                                     np.array([t.lat for t in own]))
        for zones in near:
            found.update((c.zone.id, c) for c in zones if c.zone.applies_to(subject))
    return list(found.values())


def _silent(st: SubjectState, device_id: str, kind: DeviceKind, now: float,
            s: RuleSettings) -> bool:
    t = st.tracks.get(device_id)
    return t is None or now - t.seen > s.offline_after_s(kind)


def tick(st: SubjectState, subject: Subject, world: World, s: RuleSettings,
         now: datetime) -> list[RuleEvent]:
    judge = Judge(world, subject, s)
    t_now = now.timestamp()
    after = datetime.fromtimestamp(st.ticked, UTC) if st.ticked else now - FIRST_LOOK_BACK
    devices = {d: k for d, k in subject.devices.items() if k != DeviceKind.VICTIM}
    in_force_now = []
    for c in scheduled_zones(world, subject, st):
        z = c.zone
        marks = boundaries(z.schedule, judge.tz, after, now)
        if after < z.created_at <= now and applies(z, subject, z.created_at):
            marks.append((z.created_at, True))
        if applies(z, subject, now):
            in_force_now.append(z.id)
        for at, starts in sorted(marks):
            if not z.exists_at(at) or (starts and suspended(z, subject, at)):
                continue
            for dev, kind in devices.items():
                key = keys.zone(z.id, dev)
                if not starts:
                    r = st.rules.get(key)
                    if r and r.st != "clear":
                        was_breach = r.st == "breach"
                        st.rules[key] = Rule()
                        if was_breach:
                            judge.emit(CLEAR, zone_type(c), at, device_id=dev, zone_id=z.id,
                                       details={"zone": z.name, "reason": "window ended"})
                    continue
                track = st.tracks.get(dev)
                if track is None or _silent(st, dev, kind, at.timestamp(), s):
                    judge.device_rule(st, RuleKind.OFFLINE, "device_offline", True, at, dev,
                                      details={"zone": z.name, "zone_id": z.id,
                                               "reason": "silent at the start of a window"})
                    continue
                x, y = c.frame.to_m(track.lon, track.lat)
                inside = c.depth_m(x, y)
                depth = inside if z.kind == "exclusion" else -inside
                out = step(st.rules.setdefault(key, Rule()), depth, track.acc, at.timestamp(), s)
                if out:
                    judge.emit(out[0], zone_type(c), at, device_id=dev, zone_id=z.id,
                               confidence=out[1],
                               position={"lat": track.lat, "lon": track.lon, "acc": track.acc,
                                         "ts": datetime.fromtimestamp(track.t, UTC).isoformat()},
                               details={"zone": z.name, "depth_m": round(depth, 1),
                                        "reason": "last known position at window start"})
    for dev, kind in devices.items() if subject.monitored(now) else ():
        if _silent(st, dev, kind, t_now, s) and dev in st.tracks:
            r = st.rules.setdefault(keys.device(RuleKind.OFFLINE, dev), Rule())
            if r.st != "breach":
                judge.device_rule(st, RuleKind.OFFLINE, "device_offline", True, now, dev,
                                  details={"silent_s": round(t_now - st.tracks[dev].seen),
                                           "zones_in_force": in_force_now})
    orders_expiring(judge, st, subject, s, now)
    leaves_overrun(judge, st, subject, world, devices, now)
    st.ticked = t_now
    return [e for e in judge.events if e.action in (OPEN, CLEAR)]


def orders_expiring(judge: Judge, st: SubjectState, subject: Subject, s: RuleSettings,
                    now: datetime) -> None:
    """order_expiring once per order, from `order_expiring_s` before its end; a renewal that
    moves the end further away clears it (and a later approach raises it again)."""
    for o in subject.orders or ():
        r = st.rules.setdefault(keys.order(o.id), Rule())
        warn_at = o.ends_at - timedelta(seconds=s.order_expiring_s)
        details = {"order_id": o.id, "ends_at": o.ends_at.isoformat()}
        if warn_at <= now < o.ends_at:
            if force_open(r, now.timestamp()):
                judge.emit(OPEN, "order_expiring", now, details=details)
        elif now < warn_at and force_clear(r):
            judge.emit(CLEAR, "order_expiring", now, details={**details, "reason": "renewed"})


def leaves_overrun(judge: Judge, st: SubjectState, subject: Subject, world: World,
                   devices: dict[str, DeviceKind], now: datetime) -> None:
    """At a leave's end plus the grace period (once per leave): is the subject back inside the
    inclusion zones in force then? Their last known positions decide; no position is not back.
    With no inclusion zone in force then there is nothing to be back in, and no alert."""
    for lv in subject.leaves:
        due = lv.suspended_until
        r = st.rules.setdefault(keys.leave(lv.id), Rule())
        if lv.returned or due > now or r.st == "breach" or r.last >= due.timestamp():
            continue
        r.last = due.timestamp()  # looked at: a later trip away is not this leave's overrun
        home = [c for c in world.zones.inclusion_for(subject)
                if c.zone.leave_id is None and applies(c.zone, subject, due)]
        if not home:
            continue
        tracks = [st.tracks[d] for d in devices if d in st.tracks and st.tracks[d].t]
        last = max(tracks, key=lambda t: t.t, default=None)
        back = last is not None and all(
            c.depth_m(*c.frame.to_m(last.lon, last.lat)) >= -last.acc for c in home)
        if not back and force_open(r, now.timestamp()):
            r.last = due.timestamp()
            pos = None if last is None else {
                "lat": last.lat, "lon": last.lon, "acc": last.acc,
                "ts": datetime.fromtimestamp(last.t, UTC).isoformat()}
            judge.emit(OPEN, "leave_overrun", now, position=pos,
                       details={"leave_id": lv.id, "ends_at": lv.ends_at.isoformat(),
                                "due_back_at": due.isoformat(),
                                "reason": "no position" if last is None else "not back"})


def next_due(st: SubjectState, subject: Subject, world: World, s: RuleSettings,
             now: datetime) -> datetime:
    """When this subject next needs a tick (at most an hour away, as a safety net)."""
    due = now + timedelta(hours=1)
    tz = ZoneInfo(subject.timezone)
    for c in scheduled_zones(world, subject, st):
        b = world.boundaries.next(c.zone.schedule, tz, now)
        if b is not None:
            due = min(due, b)
        if c.zone.created_at > now:
            due = min(due, c.zone.created_at)
    for o in subject.orders or ():
        warn_at = o.ends_at - timedelta(seconds=s.order_expiring_s)
        if warn_at > now:
            due = min(due, warn_at)
    for lv in subject.leaves:
        if not lv.returned and lv.suspended_until > now:
            due = min(due, lv.suspended_until)
    for dev, kind in subject.devices.items():
        t = st.tracks.get(dev)
        r = st.rules.get(keys.device(RuleKind.OFFLINE, dev))
        if kind != DeviceKind.VICTIM and t is not None and (r is None or r.st != "breach"):
            limit = datetime.fromtimestamp(t.seen + s.offline_after_s(kind), UTC)
            due = min(due, max(limit, now) + timedelta(seconds=1))
    return due
