"""`tether bench --correlate`: crime-scene correlation over a seeded hypertable.

Seeds N fixes (default 1,000,000) of 1,000 subjects walking over a city for a week, plants three
subjects at a scene (within 100 m, within the hour) and decoys just outside (150 m away, or at
the scene a day later), then asks GET /api/correlate through the real app: the planted three
must come back, nothing else, and the latency of random scenes is measured.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx

from api.app import create_app
from api.auth import hash_password
from api.store.demo import add_user
from geofence.types import Fix
from ingest import store
from tether.config import Settings

START = datetime(2026, 3, 1, tzinfo=UTC)
SCENE = (31.2304, 121.4737)
SCENE_TIME = START + timedelta(days=3, hours=2, minutes=17)


def _walks(devices: list[str], n: int, rng: random.Random) -> list[Fix]:
    per = n // len(devices)
    step = timedelta(days=7) / per
    out = []
    for d in devices:
        lat, lon = SCENE[0] + rng.uniform(-0.2, 0.2), SCENE[1] + rng.uniform(-0.2, 0.2)
        t = START + rng.random() * step
        for _ in range(per):
            lat += rng.uniform(-4e-4, 4e-4)
            lon += rng.uniform(-4e-4, 4e-4)
            out.append(Fix(d, t, lat, lon, t, accuracy_m=10))
            t += step
    return out


def _near(metres: float, bearing: float) -> tuple[float, float]:
    return (SCENE[0] + metres * math.cos(bearing) / 111_320,
            SCENE[1] + metres * math.sin(bearing) / (111_320 * math.cos(math.radians(SCENE[0]))))


def _plant(devices: list[str]) -> tuple[list[Fix], set[str]]:
    fixes, hits = [], set(devices[:3])
    for i, d in enumerate(devices[:3]):  # at the scene, within the window
        at = SCENE_TIME + timedelta(minutes=10 * i - 10, seconds=7)
        fixes.append(Fix(d, at, *_near(30 + 30 * i, i), at, accuracy_m=8))
    for d in devices[3:6]:  # 150 m away at the time, or at the scene a day later
        at = SCENE_TIME + timedelta(seconds=11)
        fixes.append(Fix(d, at, *_near(150, 2.0), at, accuracy_m=8))
        later = SCENE_TIME + timedelta(days=1, seconds=13)
        fixes.append(Fix(d, later, *_near(5, 1.0), later, accuracy_m=8))
    return fixes, hits


async def run(s: Settings, n: int, queries: int = 20) -> dict:
    tag = uuid.uuid4().hex[:8]
    u = urlsplit(s.database_url)
    admin, db = urlunsplit(u._replace(path="/postgres")), f"tether_corr_{tag}"
    store.create_database(admin, db)
    url = urlunsplit(u._replace(path="/" + db))
    try:
        store.migrate(url, s.migrations_dir)
        rng = random.Random(17)
        devices = [f"corr-{i:04d}" for i in range(1000)]
        store.register_devices(url, devices)
        # The random walks keep away from the scene's minute so only the planted fixes count.
        fixes = [f for f in _walks(devices, n, rng)
                 if abs((f.fix_time - SCENE_TIME).total_seconds()) > 3600
                 or math.dist((f.lat, f.lon), SCENE) > 0.01]
        planted, expected_devices = _plant(devices)
        seeded = time.perf_counter()
        store.copy_baseline(url, fixes + planted)
        seed_s = time.perf_counter() - seeded
        await add_user(url, {"username": "bench", "password_hash": hash_password("bench-pass"),
                             "role": "admin", "jurisdiction_id": None, "phone": None,
                             "email": None, "notify_webhook": None, "notify_format": "json",
                             "notify_secret": None})
        app = create_app(s.model_copy(update={"database_url": url}))
        await app.state.store.open()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://bench") as c:
                tok = (await c.post("/api/auth/token", data={
                    "username": "bench", "password": "bench-pass"})).json()["access_token"]
                h = {"Authorization": f"Bearer {tok}"}
                scene = {"lat": SCENE[0], "lon": SCENE[1], "radius_m": 100,
                         "from": (SCENE_TIME - timedelta(minutes=30)).isoformat(),
                         "to": (SCENE_TIME + timedelta(minutes=30)).isoformat()}
                found = (await c.get("/api/correlate", params=scene, headers=h)).json()
                got = {a["device_id"] for a in found}
                latencies = []
                for _ in range(queries):
                    t = START + timedelta(hours=rng.uniform(1, 160))
                    q = {"lat": SCENE[0] + rng.uniform(-0.2, 0.2),
                         "lon": SCENE[1] + rng.uniform(-0.2, 0.2), "radius_m": 500,
                         "from": t.isoformat(), "to": (t + timedelta(hours=2)).isoformat()}
                    tic = time.perf_counter()
                    r = await c.get("/api/correlate", params=q, headers=h)
                    latencies.append(time.perf_counter() - tic)
                    r.raise_for_status()
        finally:
            await app.state.store.close()
        return {"fixes": len(fixes) + len(planted), "seed_s": seed_s, "correct":
                got == expected_devices, "found": sorted(got), "expected":
                sorted(expected_devices), "p50_ms": statistics.median(latencies) * 1000,
                "p95_ms": sorted(latencies)[int(0.95 * (len(latencies) - 1))] * 1000}
    finally:
        store.drop_database(admin, db)


def main(s: Settings, n: int) -> int:
    r = asyncio.run(run(s, n))
    print(f"tether bench --correlate: {r['fixes']:,} fixes of 1,000 subjects over a week "
          f"(COPY {r['seed_s']:.1f} s)")
    print(f"  planted scene (100 m, 1 h): found {r['found']} - "
          + ("exactly the planted subjects" if r["correct"] else f"WRONG, want {r['expected']}"))
    print(f"  random scenes (500 m, 2 h) through GET /api/correlate: p50 {r['p50_ms']:.0f} ms,"
          f" p95 {r['p95_ms']:.0f} ms")
    return 0 if r["correct"] else 1
