"""`tether bench --alerts`: time from an MQTT breach fix to the alert on an officer's phone.

A throwaway world: two sibling counties, one officer in each, N subjects of county A each with
an exclusion zone. Both officers hold /ws/alerts open. Each breach is one confident fix
published over MQTT; the time from publish to the alert on officer A's socket is measured,
and officer B (another county) must receive nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import uvicorn
from websockets.asyncio.client import connect

from api.app import create_app
from api.auth import hash_password
from ingest import store
from ingest.mqtt import Broker, MqttPublisher
from ingest.runner import ingest_worker
from ingest.state import drop_prefix
from tether.config import Settings

CENTER = (31.2304, 121.4737)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world(url: str, n: int, tag: str) -> dict:
    with psycopg.connect(url, autocommit=True) as db:
        one = lambda sql, *a: db.execute(sql, a).fetchone()[0]  # noqa: E731
        city = one("INSERT INTO jurisdictions (name) VALUES ('city') RETURNING id")
        a = one("INSERT INTO jurisdictions (name, parent_id) VALUES ('A', %s) RETURNING id", city)
        b = one("INSERT INTO jurisdictions (name, parent_id) VALUES ('B', %s) RETURNING id", city)
        pw = hash_password("phone-pass")
        off_a = one("INSERT INTO users (username, password_hash, role, jurisdiction_id) VALUES"
                    " ('offA', %s, 'officer', %s) RETURNING id", pw, a)
        one("INSERT INTO users (username, password_hash, role, jurisdiction_id) VALUES"
            " ('offB', %s, 'officer', %s) RETURNING id", pw, b)
        devices = []
        for i in range(n):
            s = one("INSERT INTO subjects (name, jurisdiction_id, officer_id) VALUES"
                    " (%s, %s, %s) RETURNING id", f"s{i}", a, off_a)
            d = f"al-{tag}-{i}"
            db.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, 'wearable', %s)",
                       (d, s))
            lat, lon = CENTER[0] + i * 0.01, CENTER[1]
            db.execute("INSERT INTO zones (name, kind, geometry, radius_m, jurisdiction_id,"
                       " subject_id, created_at) VALUES ('victim home', 'exclusion', %s, 200,"
                       " %s, %s, now() - interval '1 hour')",
                       (json.dumps({"type": "Point", "coordinates": [lon, lat]}), a, s))
            devices.append((d, lat, lon))
        return {"devices": devices}


async def _phone(base: str, user: str) -> tuple:
    async with httpx.AsyncClient(base_url=base) as c:
        tok = (await c.post("/api/auth/token", data={"username": user,
                                                     "password": "phone-pass"})).json()
    ws = await connect(f"{base.replace('http', 'ws')}/ws/alerts?token={tok['access_token']}")
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    return ws


async def measure(s: Settings, n: int = 50) -> dict:
    tag = uuid.uuid4().hex[:8]
    u = urlsplit(s.database_url)
    admin, name = urlunsplit(u._replace(path="/postgres")), f"tether_alerts_{tag}"
    store.create_database(admin, name)
    url = urlunsplit(u._replace(path="/" + name))
    port = _free_port()
    s = s.model_copy(update={
        "database_url": url, "mqtt_root": f"al-{tag}/tether/v1", "owntracks_root": f"al-{tag}/ot",
        "mqtt_client_id": f"al-{tag}", "mqtt_share_group": f"al-{tag}",
        "redis_prefix": f"al-{tag}:", "http_port": port})
    try:
        store.migrate(url, s.migrations_dir)
        world = _world(url, n, tag)
        server = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port,
                                               log_level="warning"))
        api_task = asyncio.create_task(server.serve(), name="bench-api")
        while not server.started:  # noqa: ASYNC110 - uvicorn offers only this flag
            await asyncio.sleep(0.02)
        latencies, got_b = [], []
        async with ingest_worker(s) as worker, MqttPublisher(Broker.from_url(s.mqtt_url)) as pub:
            ingest_task = asyncio.create_task(worker.run(), name="bench-ingest")
            await worker.source.connected.wait()
            await worker.rules.loaded.wait()
            base = f"http://127.0.0.1:{port}"
            phone_a, phone_b = await _phone(base, "offA"), await _phone(base, "offB")
            await asyncio.sleep(0.3)
            try:
                for d, lat, lon in world["devices"]:
                    sent = time.perf_counter()
                    await pub.publish(f"{s.mqtt_root}/devices/{d}/loc", json.dumps(
                        {"ts": time.time(), "lat": lat, "lon": lon, "acc": 5}))
                    msg = json.loads(await asyncio.wait_for(phone_a.recv(), 10))
                    latencies.append(time.perf_counter() - sent)
                    assert msg["alert"]["device_id"] == d and msg["event"] == "opened", msg
                with contextlib.suppress(TimeoutError):
                    got_b.append(await asyncio.wait_for(phone_b.recv(), 1.0))
            finally:
                await phone_a.close()
                await phone_b.close()
                ingest_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ingest_task
                server.should_exit = True
                await api_task
        latencies.sort()
        return {"n": n, "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
                "max_ms": latencies[-1] * 1000, "other_county_received": len(got_b)}
    finally:
        store.drop_database(admin, name)
        await drop_prefix(s.redis_url, f"al-{tag}:")


def main(s: Settings, n: int) -> int:
    r = asyncio.run(measure(s, n))
    print(f"tether bench --alerts: {r['n']} breaches, MQTT publish -> alert on /ws/alerts")
    print(f"  p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms"
          f" (batch age {s.batch_age_ms} ms); officer of another county received"
          f" {r['other_county_received']}")
    return 0 if r["other_county_received"] == 0 else 1
