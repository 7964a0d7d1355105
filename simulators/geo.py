"""A city area and how people move in it: places, legs (walking, cycling, driving), and GPS
error that matches the accuracy a device reports (worse indoors).

Positions are kept in local metres (x east, y north) around the area's centre; an equirectangular
projection is far below GPS error over a city.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

SPEEDS = {"walk": 1.4, "cycle": 4.5, "drive": 11.0}  # m/s, urban averages
MODE_MIX = (("walk", 0.45), ("cycle", 0.2), ("drive", 0.35))
# Reported 68 % radius (m): outdoors a phone or wearable reports 4..15 m; indoors 20..60 m.
OUTDOOR_ACC = (4.0, 15.0)
INDOOR_ACC = (20.0, 60.0)
ERROR_CORRELATION_S = 30.0  # GPS error drifts, it does not jump from one fix to the next
SIGMA_PER_ACC = 1 / 1.515  # a 2-D Gaussian holds 68 % within 1.515 sigma


@dataclass(frozen=True, slots=True)
class Area:
    lat: float
    lon: float
    radius_m: float

    @classmethod
    def parse(cls, text: str) -> Area:
        """`lat,lon,radius_m`, e.g. `31.2304,121.4737,8000`."""
        try:
            lat, lon, r = (float(v) for v in text.split(","))
        except ValueError as e:
            raise ValueError(f"an area is lat,lon,radius_m, not {text!r}") from e
        if not (-80 <= lat <= 80 and -180 <= lon <= 180 and 500 <= r <= 200_000):
            raise ValueError(f"area out of range: {text!r}")
        return cls(lat, lon, r)

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        return (self.lat + y / 111_320,
                self.lon + x / (111_320 * math.cos(math.radians(self.lat))))

    def random_point(self, rng: random.Random, within: float = 0.9) -> tuple[float, float]:
        r, a = self.radius_m * within * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        return r * math.cos(a), r * math.sin(a)


def dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def seg_dist(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    n = dx * dx + dy * dy
    t = 0.0 if n == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / n))
    return dist(p, (a[0] + t * dx, a[1] + t * dy))


@dataclass(slots=True)
class GpsError:
    """A correlated (first-order Gauss-Markov) error whose size follows the reported accuracy."""

    ex: float = 0.0
    ey: float = 0.0

    def step(self, dt: float, acc: float, rng: random.Random, bound: float | None = None
             ) -> tuple[float, float]:
        rho = math.exp(-dt / ERROR_CORRELATION_S)
        s = acc * SIGMA_PER_ACC * math.sqrt(1 - rho * rho)
        self.ex = rho * self.ex + rng.gauss(0, s)
        self.ey = rho * self.ey + rng.gauss(0, s)
        if bound is not None:  # scripted near-misses: the truth must not depend on a tail
            n = math.hypot(self.ex, self.ey)
            if n > bound:
                self.ex, self.ey = self.ex * bound / n, self.ey * bound / n
        return self.ex, self.ey


@dataclass(slots=True)
class Mover:
    """One person's day: home, work and errands, moving between them by leg."""

    home: tuple[float, float]
    places: list[tuple[float, float]]  # work first, then errands
    pos: tuple[float, float]
    target: tuple[float, float] | None = None
    mode: str = "walk"
    dwell_left: float = 0.0
    indoors: bool = True
    pinned: tuple[float, float] | None = None  # a script holds the person here
    route: list[tuple[float, float]] = field(default_factory=list)

    def stops(self) -> list[tuple[float, float]]:
        return [self.home, *self.places]

    def go(self, to: tuple[float, float], mode: str) -> None:
        self.target, self.mode, self.indoors, self.dwell_left = to, mode, False, 0.0

    def step(self, dt: float, rng: random.Random) -> tuple[float, float]:
        """Advance dt seconds; returns the speed (m/s) and course (degrees)."""
        if self.pinned is not None:
            self.pos, self.target = self.pinned, None
            return 0.0, 0.0
        if self.target is None:
            self.dwell_left -= dt
            if self.dwell_left > 0:
                return 0.0, 0.0
            nxt = rng.choice([p for p in self.stops() if p != self.pos] or [self.home])
            mode = rng.choices([m for m, _ in MODE_MIX], [w for _, w in MODE_MIX])[0]
            self.go(nxt, mode)
        tx, ty = self.target
        d = dist(self.pos, self.target)
        v = SPEEDS[self.mode] * rng.uniform(0.8, 1.2)
        course = math.degrees(math.atan2(tx - self.pos[0], ty - self.pos[1])) % 360
        if d <= v * dt:
            self.pos, self.target = (tx, ty), None
            self.dwell_left, self.indoors = rng.uniform(120, 1800), True
            return 0.0, course
        f = v * dt / d
        self.pos = (self.pos[0] + (tx - self.pos[0]) * f, self.pos[1] + (ty - self.pos[1]) * f)
        return v, course


def routine(area: Area, rng: random.Random, errands: int = 2) -> Mover:
    home = area.random_point(rng)
    places = [area.random_point(rng) for _ in range(1 + errands)]
    return Mover(home, places, home, dwell_left=rng.uniform(0, 600))


def away_from(area: Area, m: Mover, margin: float, rng: random.Random,
              near: tuple[float, float] | None = None, within: float | None = None
              ) -> tuple[float, float]:
    """A point at least `margin` from every place and every straight leg of `m`'s routine
    (optionally within `within` of `near`): where a scripted zone or victim never meets the
    person's ordinary day."""
    stops = m.stops()
    for _ in range(2000):
        if near is not None and within is not None:
            r, a = rng.uniform(margin, within), rng.uniform(0, 2 * math.pi)
            p = (near[0] + r * math.cos(a), near[1] + r * math.sin(a))
        else:
            p = area.random_point(rng, 1.2)
        if all(seg_dist(p, a, b) > margin for a in stops for b in stops):
            return p
    raise RuntimeError("no place away from this routine: widen the area")
