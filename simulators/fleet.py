"""A fleet of simulated trackers: each walks around its home and reports over MQTT.

Issue [5/7] grows this into phones and wearables with realistic gaps and breaches; for now every
device walks at a few metres per second and reports one fix per interval.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

import msgspec

from simulators.mqtt import Publisher


@dataclass(slots=True)
class SimDevice:
    device_id: str
    lat: float
    lon: float
    heading: float
    battery: float = 100.0
    seq: int = 0

    def step(self, seconds: float, rng: random.Random) -> dict:
        self.heading = (self.heading + rng.gauss(0, 25)) % 360
        dist = rng.uniform(0, 1.5) * seconds  # walking pace
        self.lat += dist * math.cos(math.radians(self.heading)) / 111_320
        self.lon += dist * math.sin(math.radians(self.heading)) / (
            111_320 * math.cos(math.radians(self.lat)))
        self.battery = max(5.0, self.battery - seconds / 864)  # about a day per charge
        self.seq += 1
        return {"ts": round(time.time(), 3), "lat": round(self.lat, 7),
                "lon": round(self.lon, 7), "acc": round(rng.uniform(4, 30), 1),
                "batt": int(self.battery), "src": "gps", "seq": self.seq}


def make_fleet(prefix: str, count: int, center: tuple[float, float], spread_m: float,
               rng: random.Random) -> list[SimDevice]:
    out = []
    for i in range(count):
        r, a = spread_m * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        lat = center[0] + r * math.cos(a) / 111_320
        lon = center[1] + r * math.sin(a) / (111_320 * math.cos(math.radians(center[0])))
        out.append(SimDevice(f"{prefix}{i:05d}", lat, lon, rng.uniform(0, 360)))
    return out


async def run_fleet(mqtt_url: str, root: str, devices: list[SimDevice], interval_s: float,
                    duration_s: float | None = None, seed: int = 1) -> int:
    """Publish one fix per device per interval, spread evenly over the interval."""
    rng = random.Random(seed)
    sent = 0
    deadline = None if duration_s is None else time.monotonic() + duration_s
    async with Publisher(mqtt_url) as pub:
        while deadline is None or time.monotonic() < deadline:
            started = time.monotonic()
            for i, d in enumerate(devices):
                await pub.publish(f"{root}/devices/{d.device_id}/loc",
                                  msgspec.json.encode(d.step(interval_s, rng)))
                sent += 1
                lag = started + interval_s * (i + 1) / len(devices) - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
    return sent
