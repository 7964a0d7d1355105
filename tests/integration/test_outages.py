"""Outages of the database, Redis and the broker, and a worker killed mid-batch: no fix lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from urllib.parse import urlsplit

from tests.integration.conftest import count, eventually, publish_all, running
from tests.integration.proxy import CuttableProxy
from tether.config import Settings

T0 = time.time() - 1800


def fixes(device: str, root: str, start: int, n: int) -> list[tuple[str, bytes]]:
    return [(f"{root}/devices/{device}/loc",
             json.dumps({"ts": T0 + i / 10, "lat": 31.2, "lon": 121.4 + i * 1e-6}).encode())
            for i in range(start, start + n)]


def stored(db, device: str) -> int:
    return count(db, "SELECT count(*) FROM fixes WHERE device_id = %s", device)


def via(url: str, proxy: CuttableProxy) -> str:
    u = urlsplit(url)
    netloc = u.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return u._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()


async def test_database_outage_holds_fixes_until_it_returns(settings: Settings, db, register,
                                                            publisher) -> None:
    (d,) = register(f"dbout-{uuid.uuid4().hex[:8]}")
    pg = urlsplit(settings.database_url)
    proxy = await CuttableProxy(pg.hostname, pg.port or 5432).start()
    s = settings.model_copy(update={"database_url": via(settings.database_url, proxy)})
    try:
        async with running(s):
            await publish_all(publisher, fixes(d, s.mqtt_root, 0, 100))
            await eventually(lambda: stored(db, d) == 100, what="100 rows before the outage")
            await proxy.sever()
            await publish_all(publisher, fixes(d, s.mqtt_root, 100, 300))
            await asyncio.sleep(1.5)
            assert stored(db, d) == 100  # nothing can land while the database is away
            proxy.restore()
            await eventually(lambda: stored(db, d) == 400, timeout=40, what="all 400 rows")
    finally:
        await proxy.stop()


async def test_redis_outage_holds_fixes_until_they_can_be_judged(
        settings: Settings, db, register, publisher) -> None:
    """The rule state lives in Redis: rather than store fixes unjudged (a breach nobody would
    ever see), ingest holds them, and the broker keeps what follows."""
    (d,) = register(f"rdout-{uuid.uuid4().hex[:8]}")
    r = urlsplit(settings.redis_url)
    proxy = await CuttableProxy(r.hostname, r.port or 6379).start()
    s = settings.model_copy(update={"redis_url": via(settings.redis_url, proxy)})
    try:
        async with running(s) as worker:
            await proxy.sever()
            await publish_all(publisher, fixes(d, s.mqtt_root, 0, 50))
            await asyncio.sleep(1.5)
            assert stored(db, d) == 0
            proxy.restore()
            await eventually(lambda: stored(db, d) == 50, timeout=30, what="rows after Redis")
            await publish_all(publisher, fixes(d, s.mqtt_root, 50, 10))
            await eventually(lambda: stored(db, d) == 60, what="rows after Redis returns")
            await eventually(lambda: _state_ts(worker, d), what="live state after Redis returns")
    finally:
        await proxy.stop()


async def _state_ts(worker, device: str) -> bool:
    state = await worker.state.device(device)
    return abs(float(state.get("ts", 0)) - (T0 + 5.9)) < 1e-3


async def test_broker_outage_loses_nothing(settings: Settings, db, register, publisher) -> None:
    (d,) = register(f"mqout-{uuid.uuid4().hex[:8]}")
    m = urlsplit(settings.mqtt_url)
    proxy = await CuttableProxy(m.hostname, m.port or 1883).start()
    login = m.netloc.rpartition("@")[0]  # the same broker login, through the proxy
    s = settings.model_copy(update={
        "mqtt_url": f"mqtt://{login + '@' if login else ''}127.0.0.1:{proxy.port}"})
    try:
        async with running(s) as worker:
            await publish_all(publisher, fixes(d, s.mqtt_root, 0, 100))
            await eventually(lambda: stored(db, d) == 100, what="100 rows before the outage")
            await proxy.sever()
            await eventually(lambda: not worker.source.connected.is_set(), what="disconnect")
            # Devices keep publishing to the broker; it queues them in the worker's session.
            await publish_all(publisher, fixes(d, s.mqtt_root, 100, 500))
            proxy.restore()
            await eventually(lambda: stored(db, d) == 600, timeout=40, what="all 600 rows")
    finally:
        await proxy.stop()


async def test_burst_larger_than_the_stock_broker_queue_arrives_whole(
        settings: Settings, db, register, publisher) -> None:
    (d,) = register(f"burst-{uuid.uuid4().hex[:8]}")
    async with running(settings):
        pass  # creates the persistent session, then the worker goes away
    n = 6000  # stock Mosquitto would keep 1,000 queued (plus 20 in flight) and drop the rest
    await publish_all(publisher, fixes(d, settings.mqtt_root, 0, n))
    async with running(settings):
        await eventually(lambda: stored(db, d) == n, timeout=60,
                         what=lambda: f"{n} rows, have {stored(db, d)}")


async def test_sigkilled_worker_loses_no_received_fix(settings: Settings, db, register,
                                                      publisher) -> None:
    """Messages received but not yet committed when the worker dies are redelivered."""
    (d,) = register(f"kill-{uuid.uuid4().hex[:8]}")
    pg = urlsplit(settings.database_url)
    proxy = await CuttableProxy(pg.hostname, pg.port or 5432).start()
    env = {**os.environ, "TETHER_DATABASE_URL": via(settings.database_url, proxy),
           "TETHER_MQTT_ROOT": settings.mqtt_root, "TETHER_OWNTRACKS_ROOT":
           settings.owntracks_root, "TETHER_MQTT_CLIENT_ID": settings.mqtt_client_id,
           "TETHER_MQTT_SHARE_GROUP": settings.mqtt_share_group,
           "TETHER_REDIS_PREFIX": settings.redis_prefix, "TETHER_LOG_LEVEL": "INFO"}

    drains: list[asyncio.Task] = []
    procs: list[asyncio.subprocess.Process] = []
    logs: list[bytearray] = []

    async def keep_log(p: asyncio.subprocess.Process, log: bytearray) -> None:
        # Keep reading its log: a full pipe would block the worker on its next log line.
        while line := await p.stderr.readline():
            log += line

    async def start() -> asyncio.subprocess.Process:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tether.cli", "ingest", env=env,
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
        procs.append(p)
        logs.append(log := bytearray())
        async with asyncio.timeout(20):
            while b"mqtt connected" not in log:
                if not (line := await p.stderr.readline()):
                    raise AssertionError(f"worker exited before connecting:\n{log.decode()}")
                log += line
        drains.append(asyncio.create_task(keep_log(p, log), name="test-worker-log"))
        return p

    try:
        worker = await start()
        await proxy.sever()  # the worker will receive but cannot commit
        await publish_all(publisher, fixes(d, settings.mqtt_root, 0, 300))
        await asyncio.sleep(1.5)
        assert stored(db, d) == 0
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        proxy.restore()
        worker = await start()
        try:
            await eventually(lambda: stored(db, d) == 300, timeout=40, what="all 300 rows")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):  # a graceful stop takes at most ~10 s
                    await worker.wait()
            except TimeoutError:
                raise AssertionError("worker did not stop on SIGTERM:\n"
                                     + logs[-1][-6000:].decode(errors="replace")) from None
    finally:
        for p in procs:  # nothing outlives the test, whatever failed
            if p.returncode is None:
                p.kill()
                await p.wait()
        await proxy.stop()
        await asyncio.gather(*drains, return_exceptions=True)
