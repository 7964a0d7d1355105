"""The bench's world, in its throwaway database: subjects with a wearable each, 5,000 shared
exclusion zones, and per subject an exclusion zone and an all-day curfew (an inclusion zone
with a schedule) in force, so every fix is judged against zones that bind it.

Geometry (local metres on a 400 m grid around the centre): shared zones (50 m circles) sit on
grid nodes, homes near cell centres (>= 210 m from any node); the load's fixes stay within 20 m
of home, inside the 300 m curfew circle. So the load raises nothing, and the truth subjects'
scripted fixes are the only breaches.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

CENTRE = (31.2304, 121.4737)
GRID_M = 400.0
ALL_DAY = [{"days": list(range(7)), "start": "00:00", "end": "00:00"}]  # end <= start: 24 h


def latlon(x: float, y: float) -> tuple[float, float]:
    return (CENTRE[0] + y / 111_320,
            CENTRE[1] + x / (111_320 * math.cos(math.radians(CENTRE[0]))))


def _circle(x: float, y: float) -> Jsonb:
    lat, lon = latlon(x, y)
    return Jsonb({"type": "Point", "coordinates": [round(lon, 7), round(lat, 7)]})


@dataclass(slots=True)
class BenchWorld:
    devices: list[str]
    homes: list[tuple[float, float]]
    breach: list[tuple[str, tuple[float, float], tuple[float, float]]]  # device, home, inside
    near: list[tuple[str, tuple[float, float]]]  # device, parked spot (25 m outside an edge)
    subject_of: dict[str, int]
    jurisdiction: int
    all_homes: list[tuple[float, float]]

    def tails(self, rng: random.Random) -> list[list[bytes]]:
        """Per load device, eight positions 20 m around home, pre-encoded (15 m apart: at
        one fix every 0.5 s still a plausible 110 km/h for the jump filter)."""
        out = []
        for x, y in self.homes:
            mine = []
            for k in range(8):
                a = 2 * math.pi * k / 8
                lat, lon = latlon(x + 20 * math.cos(a), y + 20 * math.sin(a))
                mine.append(b',"lat":%.7f,"lon":%.7f,"acc":%d,"batt":%d}' % (
                    lat, lon, rng.randint(6, 15), rng.randint(40, 95)))
            out.append(mine)
        return out


def seed(url: str, n_load: int, shared_zones: int, n_breach: int, n_near: int, tag: str,
         rng: random.Random) -> BenchWorld:
    side = math.ceil(math.sqrt(max(shared_zones, n_load + n_breach + n_near)))
    cells = [(i, j) for i in range(side) for j in range(side)]
    rng.shuffle(cells)
    half = side * GRID_M / 2

    def home(c: tuple[int, int]) -> tuple[float, float]:
        return ((c[0] + 0.5) * GRID_M - half + rng.uniform(-40, 40),
                (c[1] + 0.5) * GRID_M - half + rng.uniform(-40, 40))

    load = [f"{tag}-{i:06d}" for i in range(n_load)]
    breach = [f"{tag}-b{i:04d}" for i in range(n_breach)]
    near = [f"{tag}-n{i:04d}" for i in range(n_near)]
    names = load + breach + near
    homes = [home(c) for c in cells[:len(names)]]
    with psycopg.connect(url) as conn, conn.transaction():
        j = conn.execute("INSERT INTO jurisdictions (name, timezone) VALUES ('bench', 'UTC')"
                         " RETURNING id").fetchone()[0]
        subjects = [r[0] for r in conn.execute(
            "INSERT INTO subjects (name, jurisdiction_id) SELECT 'bench ' || g, %s"
            " FROM generate_series(1, %s) g ORDER BY g RETURNING id", (j, len(names)))]
        with conn.cursor().copy("COPY devices (id, kind, subject_id) FROM STDIN") as copy:
            for d, s in zip(names, subjects, strict=True):
                copy.write_row((d, "wearable", s))
        rows = []
        for k in range(shared_zones):  # on grid nodes, shared by every subject
            i, jj = divmod(k, side)
            rows.append((f"shared {k}", "exclusion", _circle(i * GRID_M - half,
                                                             jj * GRID_M - half), 50.0, None,
                         None))
        _copy_zones(conn, rows, j)
        breach_spots, near_spots = [], []
        for n, (d, (x, y)) in enumerate(zip(names, homes, strict=True)):
            if n >= n_load + n_breach:  # parked 25 m outside its own zone's edge
                near_spots.append((d, (x + 70 - 40 - 25, y)))
            elif n >= n_load:  # its own zone's centre is 70 m from home
                breach_spots.append((d, (x, y), (x + 70, y)))
    return BenchWorld(load, homes[:n_load], breach_spots, near_spots,
                      dict(zip(names, subjects, strict=True)), j, homes)


def add_subject_zones(url: str, w: BenchWorld) -> int:
    """Per subject: an exclusion zone (40 m) and an all-day curfew (300 m around home). Added
    once every device has been heard: a curfew created in force raises a device never heard
    (docs/rules.md), which would be truth nobody scripted."""
    rows = []
    names = [*w.devices, *(d for d, _h, _i in w.breach), *(d for d, _s in w.near)]
    for n, (d, (x, y)) in enumerate(zip(names, w.all_homes, strict=True)):
        s = w.subject_of[d]
        own = (x + 70, y) if n >= len(w.devices) else (x + 200, y + 200)
        rows.append((f"own {d}", "exclusion", _circle(*own), 40.0, s, None))
        rows.append((f"curfew {d}", "inclusion", _circle(x, y), 300.0, s, Jsonb(ALL_DAY)))
    with psycopg.connect(url) as conn, conn.transaction():
        _copy_zones(conn, rows, w.jurisdiction)
    return len(rows)


def _copy_zones(conn: psycopg.Connection, rows: list[tuple], jurisdiction: int) -> None:
    with conn.cursor().copy("COPY zones (name, kind, geometry, radius_m, subject_id,"
                            " schedule, jurisdiction_id, created_at) FROM STDIN") as copy:
        for r in rows:
            copy.write_row((*r, jurisdiction, "now"))
