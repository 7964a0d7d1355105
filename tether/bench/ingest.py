"""`tether bench`: ingest throughput as ratios to raw baselines measured in the same run.

Each consumer is measured draining a preloaded broker queue (its persistent session filled while
it was away), so the publisher's own speed does not cap the number:
- broker:  a plain aiomqtt subscriber that only counts (the MQTT ceiling of one process);
- COPY:    raw binary COPY of the same fixes straight into the hypertable (the database ceiling);
- ingest:  a Tether ingest worker, from first delivery to the last row committed.
A throwaway database and topic root are used and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from geofence.types import Fix
from ingest import store
from ingest.mqtt import Broker, MqttPublisher, PlainSubscriber
from ingest.runner import ingest_worker
from ingest.state import drop_prefix
from tether.config import Settings

ROUND = 3


def _payloads(devices: list[str], n: int, per_msg: int, root: str) -> list[tuple[str, bytes]]:
    """Each device walks (a few metres per fix) from its own start, one fix per second."""
    rng = random.Random(3)
    t0 = time.time() - 86400
    where = {d: [31.2 + rng.random() / 10, 121.4 + rng.random() / 10] for d in devices}
    out, i = [], 0
    while i < n:
        d = devices[(i // per_msg) % len(devices)]
        items = []
        for k in range(min(per_msg, n - i)):
            p = where[d]
            p[0] += rng.uniform(-3e-5, 3e-5)
            p[1] += rng.uniform(-3e-5, 3e-5)
            items.append({"ts": round(t0 + (i + k), 3), "lat": round(p[0], 6),
                          "lon": round(p[1], 6), "acc": 10, "batt": 80})
        out.append((f"{root}/devices/{d}/loc",
                    json.dumps(items[0] if per_msg == 1 else items).encode()))
        i += len(items)
    return out


async def _publish(broker: Broker, msgs: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    async with MqttPublisher(broker) as pub:
        for i in range(0, len(msgs), 1000):
            await asyncio.gather(*(pub.publish(t, p) for t, p in msgs[i:i + 1000]))
    return time.perf_counter() - started


async def _plain_drain(s: Settings, msgs: list[tuple[str, bytes]], topic: str) -> float:
    broker = Broker.from_url(s.mqtt_url)
    sub = PlainSubscriber(broker, f"bench-plain-{uuid.uuid4().hex[:6]}", topic)
    await sub.create_session()
    await _publish(broker, msgs)
    return await sub.drain(len(msgs))


async def _ingest_drain(s: Settings, msgs: list[tuple[str, bytes]], expected: int,
                        burst: int | None = None) -> float:
    """`burst=1`: messages handed over one at a time (the receiver's old way)."""
    before = store.count_fixes(s.database_url)
    async with ingest_worker(s) as worker:  # first: create the persistent session
        task = asyncio.create_task(worker.run(), name="bench-ingest-session")
        await worker.source.connected.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _publish(Broker.from_url(s.mqtt_url), msgs)
    async with ingest_worker(s) as worker:
        if burst is not None:
            worker.source.burst = burst
        started = time.perf_counter()
        task = asyncio.create_task(worker.run(), name="bench-ingest")
        while store.count_fixes(s.database_url) - before < expected:  # noqa: ASYNC110 - polls the DB
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return elapsed


def _copy_rate(url: str, n: int) -> float:
    now = datetime.now(UTC)
    fixes = [Fix("copy-baseline", datetime.fromtimestamp(time.time() - 86400 + i * 0.01, UTC),
                 31.2, 121.4, now, accuracy_m=10, battery_pct=80) for i in range(n)]
    started = time.perf_counter()
    store.copy_baseline(url, fixes)
    return n / (time.perf_counter() - started)


async def run(s: Settings, n: int, batch: int, n_devices: int,
              compare_receive: bool = True) -> dict:
    tag = uuid.uuid4().hex[:8]
    u = urlsplit(s.database_url)
    admin = urlunsplit(u._replace(path="/postgres"))
    db = f"tether_bench_{tag}"
    store.create_database(admin, db)
    url = urlunsplit(u._replace(path="/" + db))
    try:
        store.migrate(url, s.migrations_dir)
        s = s.model_copy(update={"database_url": url, "mqtt_root": f"bench-{tag}/tether/v1",
                                 "owntracks_root": f"bench-{tag}/owntracks",
                                 "mqtt_client_id": f"bench-{tag}", "redis_prefix": f"bench-{tag}:",
                                 "mqtt_share_group": f"bench-{tag}"})
        devices = [f"bench-{i:05d}" for i in range(n_devices)]
        store.register_devices(url, devices)
        result: dict = {"fixes": n, "copy_rows_per_s": _copy_rate(url, n)}
        for per_msg in sorted({1, batch}):
            msgs = _payloads(devices, n, per_msg, f"{s.mqtt_root}/m{per_msg}")
            plain = await _plain_drain(s, msgs, f"{s.mqtt_root}/m{per_msg}/#")
            s_k = s.model_copy(update={"mqtt_root": f"{s.mqtt_root}/m{per_msg}",
                                       "mqtt_client_id": f"{s.mqtt_client_id}-{per_msg}"})
            took = await _ingest_drain(s_k, msgs, n)
            result[f"per_msg_{per_msg}"] = {
                "messages": len(msgs), "broker_msgs_per_s": len(msgs) / plain,
                "ingest_fixes_per_s": n / took, "ingest_msgs_per_s": len(msgs) / took}
            if per_msg == 1 and compare_receive:  # the same load through the old receive path
                s_o = s_k.model_copy(update={"mqtt_root": f"{s.mqtt_root}/m1old",
                                             "mqtt_client_id": f"{s.mqtt_client_id}-1old"})
                old = _payloads(devices, n, 1, s_o.mqtt_root)
                took = await _ingest_drain(s_o, old, n, burst=1)
                result["per_msg_1"]["ingest_fixes_per_s_receive_per_message"] = n / took
        return result
    finally:
        store.drop_database(admin, db)
        await drop_prefix(s.redis_url, f"bench-{tag}:")


def main(s: Settings, args: argparse.Namespace) -> int:
    try:
        import uvloop
        r = uvloop.run(run(s, args.fixes, args.batch, args.devices))
    except ImportError:
        r = asyncio.run(run(s, args.fixes, args.batch, args.devices))
    copy = r["copy_rows_per_s"]
    print(f"tether bench: {r['fixes']:,} fixes, one ingest process, this machine, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"  raw binary COPY into fixes        {copy:>10,.0f} rows/s")
    for key, v in r.items():
        if not key.startswith("per_msg_"):
            continue
        k = key.removeprefix("per_msg_")
        print(f"  {k} fix(es) per MQTT message ({v['messages']:,} messages):")
        print(f"    broker drain, plain subscriber  {v['broker_msgs_per_s']:>10,.0f} msgs/s")
        ratio = v["ingest_msgs_per_s"] / v["broker_msgs_per_s"]
        print(f"    ingest drain, stored            {v['ingest_fixes_per_s']:>10,.0f} fixes/s"
              f"  = {ratio:.2f} x broker msgs/s, {v['ingest_fixes_per_s'] / copy:.2f} x COPY")
        if "ingest_fixes_per_s_receive_per_message" in v:
            old = v["ingest_fixes_per_s_receive_per_message"]
            print(f"    same, receiver message by message {old:>8,.0f} fixes/s"
                  f"  (bursts: {v['ingest_fixes_per_s'] / old:.2f} x)")
    if args.json:
        print(json.dumps(r, indent=2))
    return 0
