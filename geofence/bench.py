"""`tether bench --engine`: the rules engine alone, without I/O.

10,000 subjects walking near home (each with a curfew-scheduled home zone) against 5,000 shared
exclusion zones (schools, parks) scattered over a 100 km square; fixes judged in batches as the
ingest runner does: one spatial-index query per batch, then per subject decode state, evaluate,
compute the next due time, encode state.
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np

from geofence.engine import World, evaluate
from geofence.rules import RuleSettings, SubjectState
from geofence.schedule import parse_schedule
from geofence.timers import next_due
from geofence.types import DeviceKind, Fix, Subject
from geofence.zones import Zone, ZoneIndex

CENTER = (31.0, 121.0)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
CURFEW = parse_schedule([{"days": list(range(7)), "start": "22:00", "end": "06:00"}])


def _at(rng: random.Random, spread_m: float, origin: tuple[float, float] = CENTER):
    n, e = rng.uniform(-spread_m, spread_m), rng.uniform(-spread_m, spread_m)
    return (origin[0] + n / 111_320,
            origin[1] + e / (111_320 * math.cos(math.radians(origin[0]))))


def build(n_subjects: int, n_zones: int, seed: int = 5) -> tuple[World, list[tuple]]:
    rng = random.Random(seed)
    zones = []
    for i in range(n_zones):
        lat, lon = _at(rng, 50_000)
        zones.append(Zone(i + 1, f"school {i}", "exclusion",
                          {"type": "Point", "coordinates": [lon, lat]}, 1, CREATED,
                          radius_m=rng.uniform(50, 300), buffer_m=100))
    subjects, homes = {}, []
    for s in range(n_subjects):
        home = _at(rng, 50_000)
        zid = n_zones + s + 1
        zones.append(Zone(zid, f"home {s}", "inclusion",
                          {"type": "Point", "coordinates": [home[1], home[0]]}, 1, CREATED,
                          radius_m=150, subject_id=s + 1, schedule=CURFEW))
        subjects[s + 1] = Subject(s + 1, (1,), "Asia/Shanghai",
                                  {f"w{s}": DeviceKind.WEARABLE})
        homes.append((s + 1, f"w{s}", home))
    return World(ZoneIndex(zones), subjects, {}), homes


def run(n_subjects: int = 10_000, n_zones: int = 5_000, rounds: int = 3,
        batch: int = 2_000) -> dict:
    started = time.perf_counter()
    world, homes = build(n_subjects, n_zones)
    compile_s = time.perf_counter() - started
    rs, rng = RuleSettings(), random.Random(9)
    enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder(SubjectState)
    states = {sid: enc.encode(SubjectState()) for sid, _, _ in homes}
    t0 = datetime(2026, 6, 1, 12, tzinfo=UTC)  # midday: curfews not in force
    judged, elapsed, alerts = 0, 0.0, 0
    for r in range(rounds):
        now = t0 + timedelta(minutes=r)
        fixes = [Fix(dev, now, *_at(rng, 2_000, home), now, accuracy_m=rng.uniform(5, 40))
                 for _, dev, home in homes]
        owner = {dev: sid for sid, dev, _ in homes}
        tic = time.perf_counter()
        for i in range(0, len(fixes), batch):
            chunk = fixes[i:i + batch]
            near_lists = world.zones.near(np.array([f.lon for f in chunk]),
                                          np.array([f.lat for f in chunk]))
            near = {f: z for f, z in zip(chunk, near_lists, strict=True)}
            for f in chunk:
                sid = owner[f.device_id]
                st = dec.decode(states[sid])
                alerts += len(evaluate(st, world.subjects[sid], world, rs, [f], (), near))
                next_due(st, world.subjects[sid], world, rs, now)
                states[sid] = enc.encode(st)
        elapsed += time.perf_counter() - tic
        judged += len(fixes)
    return {"subjects": n_subjects, "shared_zones": n_zones, "zones_total": len(world.zones),
            "compile_s": compile_s, "fixes": judged, "seconds": elapsed,
            "fixes_per_s": judged / elapsed, "events": alerts}


def main(n_subjects: int, n_zones: int) -> int:
    r = run(n_subjects, n_zones)
    print(f"tether bench --engine: {r['subjects']:,} subjects, {r['shared_zones']:,} shared "
          f"zones ({r['zones_total']:,} with the subjects' home curfews), no I/O")
    print(f"  compile zones and index      {r['compile_s']:>8.2f} s")
    print(f"  fixes judged                 {r['fixes_per_s']:>8,.0f} /s "
          f"({r['fixes']:,} in {r['seconds']:.2f} s, {r['events']} breach events)")
    return 0
