"""The rules engine: a subject's fixes and events in, breach and clear events out. Pure.

`evaluate` judges what arrived; `tick` judges the passing of time (schedule boundaries and
silence); both mutate the given SubjectState and return RuleEvents. Nothing here reads a clock:
`now` is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from geofence import keys
from geofence.geodesy import haversine_m
from geofence.keys import ZONE_KINDS, RuleKind
from geofence.rules import (
    CLEAR,
    OPEN,
    Rule,
    RuleEvent,
    RuleSettings,
    SubjectState,
    Track,
    breach_evidence,
    force_clear,
    force_open,
    step,
)
from geofence.schedule import BoundaryMemo
from geofence.types import DeviceEvent, DeviceKind, Fix, Subject, VictimLink
from geofence.zones import CompiledZone, ZoneIndex, applies

_IMPAIRED = {"loc": lambda v: isinstance(v, int | float) and v < 0,  # permission not granted
             "bo": lambda v: v == 1, "ps": lambda v: v == 1, "hib": lambda v: v == 1}


@dataclass(slots=True)
class World:
    """Everything the engine judges against, loaded and compiled by the runner."""

    zones: ZoneIndex
    subjects: dict[int, Subject]
    victims: dict[int, list[VictimLink]]  # by subject
    boundaries: BoundaryMemo = field(default_factory=BoundaryMemo)  # schedules' next edges


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _pos(f: Fix) -> dict:
    return {"lat": f.lat, "lon": f.lon, "ts": f.fix_time.isoformat(), "acc": f.accuracy_m}


def zone_type(z: CompiledZone) -> str:
    if z.zone.kind == "exclusion":
        return "exclusion_entry"
    return "curfew" if z.zone.is_curfew else "inclusion_exit"


_PARTNER = {DeviceKind.PHONE: DeviceKind.WEARABLE, DeviceKind.WEARABLE: DeviceKind.PHONE}


class Judge:
    """Evaluation of one subject against one world; holds no state between calls."""

    def __init__(self, world: World, subject: Subject, settings: RuleSettings) -> None:
        self.w, self.subject, self.s = world, subject, settings
        self.tz = ZoneInfo(subject.timezone)
        self.events: list[RuleEvent] = []

    def kind(self, device_id: str) -> DeviceKind | None:
        """A victim's device counts as the victim's even if enrolled under another subject."""
        if any(v.device_id == device_id for v in self.w.victims.get(self.subject.id, ())):
            return DeviceKind.VICTIM
        return self.subject.devices.get(device_id)

    def emit(self, action: str, type_: str, at: datetime, **kw: object) -> None:
        self.events.append(RuleEvent(action, type_, self.subject.id, at, **kw))

    # --- fixes ---------------------------------------------------------------------------------

    def zones_for(self, f: Fix, near: list[CompiledZone], *rule_sets: dict[str, Rule]) -> dict:
        found = {c.zone.id: c for c in near if c.zone.applies_to(self.subject)}
        for c in self.w.zones.inclusion_for(self.subject):
            found[c.zone.id] = c
        for rules in rule_sets:
            for key, r in rules.items():  # a breach or pending one must see the fix ending it
                k = keys.parse(key) if r.st != "clear" else None
                if k and k.kind in ZONE_KINDS and k.device_id == f.device_id:
                    zid = k.ref
                    if zid in self.w.zones.by_id:
                        found[zid] = self.w.zones.by_id[zid]
        return found

    def zone_checks(self, f: Fix, near: list[CompiledZone],
                    *rule_sets: dict[str, Rule]) -> list[tuple[str, str, float | None, int, str]]:
        """The zone evidence of one fix: (rule key, alert type, signed depth, zone id, name)."""
        checks: list[tuple[str, str, float | None, int, str]] = []
        frames: dict = {}
        for zid, c in self.zones_for(f, near, *rule_sets).items():
            c = self.w.zones.at(zid, f.fix_time) or c  # an edited zone: as it was at the fix
            z = c.zone
            depth = None
            if applies(z, self.subject, f.fix_time):
                if c.frame.key not in frames:
                    frames[c.frame.key] = c.frame.to_m(f.lon, f.lat)
                inside = c.depth_m(*frames[c.frame.key])
                depth = inside if z.kind == "exclusion" else -inside
            checks.append((keys.zone(zid, f.device_id), zone_type(c), depth, zid, z.name))
            if z.buffer_m:
                checks.append((keys.buffer(zid, f.device_id), "exclusion_buffer",
                               None if depth is None else depth + z.buffer_m, zid, z.name))
        return checks

    def emit_zone(self, out: tuple[str, str | None], type_: str, f: Fix, zid: int, name: str,
                  depth: float | None) -> None:
        self.emit(out[0], type_, f.fix_time, device_id=f.device_id, zone_id=zid,
                  confidence=out[1], late=self.is_late(f), position=_pos(f),
                  details={"zone": name, "depth_m": round(depth or 0.0, 1)})

    def judge_zones(self, f: Fix, near: list[CompiledZone], rules: dict[str, Rule]) -> None:
        t, acc = f.fix_time.timestamp(), self.s.accuracy(f.accuracy_m)
        for key, type_, d, zid, name in self.zone_checks(f, near, rules):
            out = step(rules.setdefault(key, Rule()), d, acc, t, self.s)
            if out:
                self.emit_zone(out, type_, f, zid, name, d)

    def is_late(self, f: Fix) -> bool:
        return (f.received_at - f.fix_time).total_seconds() > self.s.late_after_s

    def judge_pair(self, key: str, type_: str, f: Fix, other: Track, limit_m: float,
                   rules: dict[str, Rule], apart: bool, dwell_s: float | None) -> None:
        """Victim proximity (apart=False) and device separation (apart=True)."""
        t = f.fix_time.timestamp()
        depth = None
        if abs(t - other.t) <= self.s.fresh_s:
            d = haversine_m(f.lat, f.lon, other.lat, other.lon)
            accs = self.s.accuracy(f.accuracy_m) + self.s.accuracy(other.acc)
            depth = (d - limit_m - accs) if apart else (limit_m - d)
        out = step(rules.setdefault(key, Rule()), depth,
                   self.s.accuracy(f.accuracy_m) + self.s.accuracy(other.acc), t, self.s,
                   dwell_s)
        if out:
            self.emit(out[0], type_, f.fix_time, device_id=f.device_id, confidence=out[1],
                      late=self.is_late(f), position=_pos(f),
                      details={"limit_m": limit_m, "depth_m": round(depth or 0.0, 1)})

    def device_rule(self, st: SubjectState, kind: RuleKind, type_: str, on: bool, at: datetime,
                    device_id: str, **kw: object) -> None:
        """A rule about the device itself: opened or cleared by one report, no hysteresis."""
        key = keys.device(kind, device_id)
        if on:
            if force_open(st.rules.setdefault(key, Rule()), at.timestamp()):
                self.emit(OPEN, type_, at, device_id=device_id, **kw)
        # A rule never opened needs no state: not one empty rule per device and kind per fix.
        elif (r := st.rules.get(key)) is not None and force_clear(r):
            self.emit(CLEAR, type_, at, device_id=device_id, **kw)

    def fix(self, st: SubjectState, f: Fix, near: list[CompiledZone]) -> None:
        """A fix newer than anything judged for its device."""
        kind = self.kind(f.device_id)
        track = st.tracks.setdefault(f.device_id, Track())
        track.seen = max(track.seen, f.received_at.timestamp())
        self.back_online(st, f.device_id, f.received_at)
        if f.mock or f.outlier:
            self.spoofing(st, f)
        elif ((spoof := st.rules.get(keys.device(RuleKind.SPOOF, f.device_id)))
              and spoof.st == "breach"
              and step(spoof, None, 0.0, f.fix_time.timestamp(), self.s)):
            self.emit(CLEAR, "location_spoofing", f.fix_time, device_id=f.device_id)
        if f.outlier:
            return
        if kind == DeviceKind.VICTIM:
            self.victim_fix(st, f)
        else:
            self.judge_zones(f, near, st.rules)
            for v in self.w.victims.get(self.subject.id, ()):
                if v.device_id in st.tracks:
                    self.judge_pair(keys.victim(v.id, f.device_id), "victim_proximity", f,
                                    st.tracks[v.device_id], v.radius_m, st.rules, False, None)
            self.separation(st, f, kind)
        if f.battery_pct is not None:
            self.battery(st, f.device_id, f.battery_pct, f.fix_time)
        track.t, track.lat, track.lon = f.fix_time.timestamp(), f.lat, f.lon
        track.acc = self.s.accuracy(f.accuracy_m)
        track.batt = f.battery_pct if f.battery_pct is not None else track.batt

    def victim_fix(self, st: SubjectState, f: Fix) -> None:
        """The victim moved: judge the distance to each of the subject's fresh devices."""
        for v in self.w.victims.get(self.subject.id, ()):
            if v.device_id != f.device_id:
                continue
            for dev, kind in self.subject.devices.items():
                if kind != DeviceKind.VICTIM and dev in st.tracks:
                    other = st.tracks[dev]
                    self.judge_pair(keys.victim(v.id, dev), "victim_proximity", f, other,
                                    v.radius_m, st.rules, False, None)

    def separation(self, st: SubjectState, f: Fix, kind: DeviceKind | None) -> None:
        other_kind = _PARTNER.get(kind)
        for dev, k in self.subject.devices.items():
            if k == other_kind and dev in st.tracks:
                self.judge_pair("sep", "device_separation", f, st.tracks[dev],
                                self.s.separation_m, st.rules, True, self.s.separation_dwell_s)

    def spoofing(self, st: SubjectState, f: Fix) -> None:
        """A mock-location fix at once; impossible jumps only when two come within the
        window (one is a GPS glitch). It ends after sustained good fixes (see `fix`)."""
        r = st.rules.setdefault(keys.device(RuleKind.SPOOF, f.device_id), Rule())
        t = f.fix_time.timestamp()
        if r.st == "breach":
            breach_evidence(r, t)
        elif f.mock or (r.st == "pending" and t - r.last <= self.s.spoof_window_s):
            force_open(r, t)
            self.emit(OPEN, "location_spoofing", f.fix_time, device_id=f.device_id,
                      confidence="confident" if f.mock else "probable", position=_pos(f),
                      late=self.is_late(f),
                      details={"reason": "mock location" if f.mock else "impossible jumps"})
        else:
            r.st, r.last = "pending", t

    def battery(self, st: SubjectState, device_id: str, pct: int, at: datetime) -> None:
        if pct <= self.s.battery_low_pct:
            self.device_rule(st, RuleKind.BATTERY, "battery_low", True, at, device_id,
                             details={"battery_pct": pct})
        elif pct >= self.s.battery_clear_pct:
            self.device_rule(st, RuleKind.BATTERY, "battery_low", False, at, device_id)

    def back_online(self, st: SubjectState, device_id: str, at: datetime) -> None:
        r = st.rules.get(keys.device(RuleKind.OFFLINE, device_id))
        if r and force_clear(r):
            self.emit(CLEAR, "device_offline", at, device_id=device_id)

    def late_fixes(self, st: SubjectState, fixes: list[Fix],
                   near: dict[Fix, list[CompiledZone]]) -> None:
        """Fixes older than the device's newest judged fix (a buffered upload arriving after
        newer ones): replayed in time order on scratch rules, so the breaches they reveal are
        raised while the subject's current state stays as it is. `late` is the contract's: the
        fix reached Tether more than `late_after_s` after its time. One that is merely older
        than another worker's newer fix (two workers share a device's fixes) is not late.

        Two things keep the outcome independent of the order fixes arrive in (several workers
        share a device's fixes; a batch may commit after a newer one):
        - a breach in force counts a replayed fix dated after its newest breach evidence, towards
          the clear (compliant) or against it (in breach), as if it had come in order;
        - a breach the replay finds, where the device's newest judged fix found none (the rule
          is clear), ended by that fix: it is cleared at that fix's time, not left open."""
        scratch: dict[str, Rule] = {}
        found: dict[str, tuple[str, int, str, str]] = {}  # key -> type, zone, name, device
        ended: dict[str, Fix] = {}  # key -> the replayed fix that ended its breach
        for f in fixes:
            track = st.tracks.setdefault(f.device_id, Track())
            track.seen = max(track.seen, f.received_at.timestamp())
            if f.outlier or self.kind(f.device_id) == DeviceKind.VICTIM:
                continue
            t, acc = f.fix_time.timestamp(), self.s.accuracy(f.accuracy_m)
            for key, type_, d, zid, name in self.zone_checks(f, near.get(f, []), scratch,
                                                             st.rules):
                out = step(scratch.setdefault(key, Rule()), d, acc, t, self.s)
                if out and out[0] == OPEN:
                    self.emit_zone(out, type_, f, zid, name, d)
                    found[key] = (type_, zid, name, f.device_id)
                elif out:
                    ended[key] = f
                real = st.rules.get(key)
                if real is not None and real.st == "breach" and t > real.last:
                    out = step(real, d, acc, t, self.s)
                    if out:
                        self.emit_zone(out, type_, f, zid, name, d)
        for key, (type_, zid, name, device_id) in found.items():
            real, newest = st.rules.get(key), st.tracks[device_id].t
            if real is not None and real.st != "clear":
                continue  # the live state's breach (or pending one) owns the incident
            if scratch[key].st == "clear":  # the replay saw the breach end
                at: datetime | None = ended[key].fix_time
            else:  # in breach at the end of the replay, compliant at the newest fix
                at = _ts(newest) if newest else None
            if at is not None:
                self.emit(CLEAR, type_, at, device_id=device_id, zone_id=zid,
                          details={"zone": name})

    def event(self, st: SubjectState, e: DeviceEvent) -> None:
        track = st.tracks.setdefault(e.device_id, Track())
        if e.type != "offline":  # the broker's last will speaks for the device, not the device
            track.seen = max(track.seen, e.received_at.timestamp())
            self.back_online(st, e.device_id, e.received_at)
        pos = None if e.lat is None else {"lat": e.lat, "lon": e.lon,
                                          "ts": e.event_time.isoformat(), "acc": None}
        kw = {"position": pos, "late": (e.received_at - e.event_time).total_seconds()
              > self.s.late_after_s}
        if e.type in ("strap_open", "tamper"):
            self.device_rule(st, RuleKind.STRAP, "strap_tamper", True, e.event_time,
                             e.device_id, details={"event": e.type}, **kw)
        elif e.type == "strap_closed":
            self.device_rule(st, RuleKind.STRAP, "strap_tamper", False, e.event_time,
                             e.device_id)
        elif e.type == "sos":  # every press counts: no state that could swallow the next one
            self.emit(OPEN, "sos", e.event_time, device_id=e.device_id, **kw)
        elif e.type == "battery_low":
            self.device_rule(st, RuleKind.BATTERY, "battery_low", True, e.event_time,
                             e.device_id, details={"battery_pct": e.battery_pct}, **kw)
        elif e.type == "charger_on":
            self.device_rule(st, RuleKind.BATTERY, "battery_low", False, e.event_time,
                             e.device_id)
        elif e.type == "owntracks_status":
            android = e.data.get("android")
            if isinstance(android, dict):
                why = sorted(k for k, bad in _IMPAIRED.items() if bad(android.get(k)))
                self.device_rule(st, RuleKind.IMPAIRED, "tracking_impaired", bool(why),
                                 e.received_at, e.device_id, details={"settings": why})
        if e.battery_pct is not None:
            self.battery(st, e.device_id, e.battery_pct, e.event_time)


def evaluate(st: SubjectState, subject: Subject, world: World, settings: RuleSettings,
             fixes: Iterable[Fix], events: Iterable[DeviceEvent],
             near: dict[Fix, list[CompiledZone]]) -> list[RuleEvent]:
    """Judge one subject's new fixes (its own devices' and its victims') and device events.

    `near` maps each fix (by identity) to the zones whose box contains it (one vectorised
    index query per batch, made by the caller). Items are judged in time order; per device,
    fixes older than its newest judged fix take the late path.
    """
    judge = Judge(world, subject, settings)
    # Outside a monitoring order nothing is judged (the ingest filter keeps such fixes out of
    # storage too; this holds for a fix that raced an order's end).
    items = sorted([*((f.fix_time, 0, f) for f in fixes if subject.monitored(f.fix_time)),
                    *((e.event_time, 1, e) for e in events if subject.monitored(e.event_time))],
                   key=lambda x: (x[0], x[1]))
    late: list[Fix] = []
    for _, is_event, item in items:
        if is_event:
            judge.event(st, item)
        elif item.fix_time.timestamp() <= st.tracks.get(item.device_id, Track()).t:
            late.append(item)
        else:
            judge.fix(st, item, near.get(item, []))
    if late:
        judge.late_fixes(st, late, near)
    return judge.events
