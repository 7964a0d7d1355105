"""A fleet of subjects with phones and wearables in a city, provisioned through the REST API,
reporting over MQTT (QoS 1), with scripted violations whose truth is checked against
`GET /api/alerts` at the end: expected / raised / missed / spurious.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass, field

import httpx

from simulators import scenarios
from simulators.devices import SimDevice, jitter_interval
from simulators.geo import INDOOR_ACC, OUTDOOR_ACC, Area, Mover, routine
from simulators.mqtt import Publisher
from simulators.rest import Api
from simulators.truth import Outcome, check

ARM_S = 2.0  # zones are created once every device has reported (a curfew judges last fixes)
GAP_PER_FIX = 0.004  # chance that a background device loses coverage at a report
GAP_S = (20.0, 150.0)  # kept under half the offline threshold: gaps are not scripted truth


@dataclass(slots=True)
class FleetSpec:
    api_url: str
    username: str
    password: str
    owntracks_root: str
    subjects: int = 100
    interval_s: float = 5.0
    duration_s: float | None = None
    area: Area = field(default_factory=lambda: Area(31.2304, 121.4737, 8000))
    mix: dict[str, int] = field(default_factory=dict)
    timing: scenarios.Timing = field(default_factory=scenarios.Timing)
    seed: int = 1
    prefix: str = ""
    connections: int = 2
    settle_s: float = 10.0
    progress: bool = True


@dataclass(slots=True)
class SimSubject:
    key: str
    mover: Mover
    devices: list[SimDevice]
    plan: scenarios.Plan | None = None
    id: int = 0
    moved_at: float = 0.0


class Fleet:
    def __init__(self, spec: FleetSpec, mqtt_url: str, root: str) -> None:
        self.spec, self.mqtt_url, self.root = spec, mqtt_url, root
        self.rng = random.Random(spec.seed)
        self.tag = spec.prefix or f"sim{uuid.uuid4().hex[:6]}"
        self.subjects: list[SimSubject] = []
        self.expect: list[scenarios.Expect] = []
        self.wall0 = time.time()
        self.sent = 0
        self.jurisdiction = 0
        self._zones: list[tuple[float, dict, SimSubject]] = []
        self.skipped: list[str] = []  # scenarios the run is too short for
        self._tty = sys.stderr.isatty()

    # --- build and provision ---------------------------------------------------------------

    def build(self) -> None:
        spec, rng = self.spec, self.rng
        duration = spec.duration_s or 3600.0
        plans = [n for n, k in spec.mix.items() for _ in range(k)]
        self.wall0 = time.time()
        for i in range(max(spec.subjects, len(plans))):
            key = f"{self.tag}-{i:05d}"
            p = None
            if i < len(plans):  # each scripted moment early in the run
                t0 = ARM_S + 2 + duration * rng.uniform(0.05, 0.25) if duration < 600 \
                    else ARM_S + rng.uniform(30, 300)
                p = scenarios.plan(plans[i], key, t0, duration, spec.timing, rng, self.wall0)
                if p is None:
                    self.skipped.append(plans[i])
            mover = routine(spec.area, rng)
            if p is not None or i < len(plans):
                mover.pinned = mover.home  # scripted subjects wait at home for their moment
            kinds = p.devices if p else rng.choices(
                [("wearable",), ("phone",), ("phone-owntracks",), ("wearable", "phone"),
                 ("wearable", "phone-owntracks")], [3, 1, 2, 2, 2])[0]
            devs = []
            for k in kinds:
                kind = "phone" if k.startswith("phone") else k
                did = f"{key}-{kind[0]}"
                ot = (f"{key}", kind) if k == "phone-owntracks" else None
                if ot:
                    did = f"{key}.{kind}"
                d = SimDevice(did, kind, ot, battery=rng.uniform(60 if p else 40, 100))
                d.next_at = rng.uniform(0, min(spec.interval_s, ARM_S))
                devs.append(d)
            s = SimSubject(key, mover, devs, p)
            if p and p.victim_at:
                v = SimDevice(f"{key}-v", "victim", battery=90.0)
                v.pinned = _add(mover.home, p.victim_at)
                v.next_at = rng.uniform(0, ARM_S)
                s.devices.append(v)
            if p:
                self.expect += p.expect
                for a in p.actions:
                    if a[1] == "park":
                        for d in devs:
                            d.fixed_acc, d.error_bound = a[2]["acc"], a[2]["bound"]
                    elif a[1] == "move_to":
                        mover.pinned = _add(mover.home, a[2]["to"])
                for d in devs:  # scripted truth must not hang on a GPS tail
                    d.error_bound = d.error_bound or 0.8 * INDOOR_ACC[1]
            self.subjects.append(s)

    async def provision(self, api: Api) -> None:
        self.jurisdiction = await api.jurisdiction(f"Simulation {self.tag}", "UTC")

        async def one(s: SimSubject) -> None:
            s.id = await api.subject(f"Subject {s.key}", self.jurisdiction)
            for d in s.devices:
                await api.device(d.id, d.kind, s.id)
            if s.plan and s.plan.victim_at:
                await api.victim(s.id, s.devices[-1].id, 150)
            for z in s.plan.zones if s.plan else ():
                self._zones.append((z.get("create_at", ARM_S), z, s))

        await asyncio.gather(*(one(s) for s in self.subjects))

    async def _create_zone(self, api: Api, z: dict, s: SimSubject) -> None:
        lat, lon = self.spec.area.to_latlon(*_add(s.mover.home, z["at"]))
        body = {"name": f"{z['kind']} {s.key}", "kind": z["kind"],
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "radius_m": z["radius_m"], "subject_id": s.id,
                "jurisdiction_id": self.jurisdiction}
        if "schedule" in z:
            body["schedule"] = z["schedule"]
        await api.zone(body)

    # --- run -------------------------------------------------------------------------------

    async def run(self, api: Api) -> int:
        spec = self.spec
        pubs = [Publisher(self.mqtt_url, f"{self.tag}-pub{i}") for i in range(spec.connections)]
        for p in pubs:
            await p.__aenter__()
        actions = sorted(((t, kind, args, s) for s in self.subjects if s.plan
                          for t, kind, args in s.plan.actions), key=lambda a: a[0])
        zones = sorted(self._zones, key=lambda z: z[0])
        start = time.monotonic()
        last_shown = 0.0
        try:
            while True:
                now = time.monotonic() - start
                if spec.duration_s is not None and now >= spec.duration_s:
                    break
                while zones and zones[0][0] <= now:
                    _, z, s = zones.pop(0)
                    await self._create_zone(api, z, s)
                while actions and actions[0][0] <= now:
                    _, kind, args, s = actions.pop(0)
                    out = self._act(s, kind, args, now)
                    await _publish(pubs, out)
                out = [m for s in self.subjects for m in self._due(s, now)]
                await _publish(pubs, out)
                self.sent += len(out)
                if spec.progress and now - last_shown >= (1.0 if self._tty else 10.0):
                    last_shown = now
                    self._show(now)
                await asyncio.sleep(0.1)
        finally:
            for p in pubs:
                await p.__aexit__(None, None, None)
            if spec.progress and self._tty:
                print(file=sys.stderr)
        return self.sent

    def _show(self, now: float) -> None:
        total = self.spec.duration_s
        due = sum(e.at <= now for e in self.expect)
        gaps = sum(now < d.gap_until for s in self.subjects for d in s.devices)
        lead = "\r" if self._tty else ""
        print(f"{lead}  {now:6.0f}/{total or 0:.0f} s  messages {self.sent:,}  "
              f"({self.sent / max(now, 1e-3):,.0f}/s)  in coverage gaps {gaps}  "
              f"violations due {due}/{len(self.expect)}   ", end="" if self._tty else "\n",
              file=sys.stderr, flush=True)

    def _due(self, s: SimSubject, now: float) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        moved = False
        for d in s.devices:
            if d.silent or now < d.next_at:
                continue
            if not moved:
                spd, hdg = s.mover.step(now - s.moved_at, self.rng)
                s.moved_at, moved = now, True
            dt = max(now - d.last_at, 0.0)
            d.last_at, d.next_at = now, now + jitter_interval(self.spec.interval_s, self.rng)
            if d.kind == "victim":
                d.next_at = now + min(self.spec.interval_s, 30.0)
            for ev in d.drain(dt):
                if (m := d.event(ev, self.root)) is not None:
                    out.append(m)
            where = d.pinned or s.mover.pos
            still = d.pinned is not None or spd == 0
            indoors = still and s.mover.indoors and d.kind != "victim"
            acc = d.fixed_acc or self.rng.uniform(*(INDOOR_ACC if indoors else OUTDOOR_ACC))
            ex, ey = d.err.step(dt or self.spec.interval_s, acc, self.rng, d.error_bound)
            lat, lon = self.spec.area.to_latlon(where[0] + ex, where[1] + ey)
            fix = d.fix(time.time(), lat, lon, acc, 0.0 if d.pinned else spd, hdg)
            if s.plan is None and d.kind != "victim" and self.rng.random() < GAP_PER_FIX:
                longest = min(GAP_S[1], self.spec.timing.offline_wearable_s / 2)
                d.gap_until = now + self.rng.uniform(min(GAP_S[0], longest / 2), longest)
            out += d.report(now, fix, self.root, self.spec.owntracks_root)
        return out

    def _act(self, s: SimSubject, kind: str, args: dict, now: float) -> list[tuple[str, bytes]]:
        """A scripted moment. The subject moves from where it is, as a person would."""
        m = s.mover
        if kind == "go":
            m.pinned = None
            m.go(_add(m.home, args["to"]), args["mode"])
            m.dwell_left = 1e9  # stays where it arrives
            s.moved_at = now
        elif kind == "event":
            d = s.devices[0]
            ev = d.event({"type": args["type"], "ts": round(time.time(), 3)}, self.root)
            return [ev] if ev else []
        elif kind == "mock":
            s.devices[0].mock_next, s.devices[0].next_at = True, now
        elif kind == "leave_phone":
            for d in s.devices:
                if d.kind == "phone":
                    d.pinned = m.pos
        elif kind == "silence":
            for d in s.devices:
                d.silent = True
        elif kind == "gap":
            for d in s.devices:
                d.gap_until = now + args["seconds"]
        return []

    async def check(self, api: Api, settle_s: float | None = None) -> Outcome:
        return await check(self, api, self.spec.settle_s if settle_s is None else settle_s)


def _add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] + b[0], a[1] + b[1]


async def _publish(pubs: list[Publisher], msgs: list[tuple[str, bytes]]) -> None:
    """QoS 1, spread over the connections; one device always on the same one (its order)."""
    if msgs:
        await asyncio.gather(*(pubs[hash(t) % len(pubs)].publish(t, p) for t, p in msgs))


async def simulate(spec: FleetSpec, mqtt_url: str, root: str) -> Outcome:
    fleet = Fleet(spec, mqtt_url, root)
    fleet.build()
    async with Api(spec.api_url, spec.username, spec.password) as api:
        await fleet.provision(api)
        await fleet.run(api)
        return await fleet.check(api)


async def run_fleet(mqtt_url: str, root: str, spec: FleetSpec, interval: float,
                    duration_s: float | None = None, seed: int = 1) -> int:
    """The demo's fleet part (tether/serve.py): waits for the API, provisions, runs."""
    spec.interval_s, spec.duration_s = interval, duration_s or spec.duration_s
    for _ in range(120):
        try:
            async with Api(spec.api_url, spec.username, spec.password) as api:
                break
        except (OSError, httpx.TransportError):  # the API of the same process is starting
            await asyncio.sleep(0.5)
    fleet = Fleet(spec, mqtt_url, root)
    fleet.build()
    async with Api(spec.api_url, spec.username, spec.password) as api:
        await fleet.provision(api)
        return await fleet.run(api)


__all__ = ["Fleet", "FleetSpec", "Outcome", "run_fleet", "simulate"]
