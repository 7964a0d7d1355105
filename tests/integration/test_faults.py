"""The fault suite: a simulated fleet keeps publishing while PostgreSQL, Mosquitto, Redis or an
ingest worker fails, and every fix the broker acknowledged to a device is stored exactly once.

Everything runs on PRIVATE instances this module starts on free ports (a throwaway PostgreSQL
cluster with TimescaleDB made by initdb, its own Redis, its own Mosquitto with logins), never the
machine's shared services, which other runs use. The ingest worker is a real `tether ingest`
process, so a SIGKILL is a real one. Each test prints fixes sent (acknowledged by the broker),
stored, lost and duplicated; lost and duplicated must be 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import psycopg
import pytest
import redis.asyncio as aioredis

from api.store import credentials as cred
from ingest.store import migrate
from tests.integration.conftest import eventually
from tests.integration.receivers import free_port
from tests.integration.test_broker_auth import ADMIN_PW, DYNSEC, start_mosquitto

PGBIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DYNSEC is None or not (PGBIN / "initdb").exists()
                                 or shutil.which("redis-server") is None,
                                 reason="needs Debian's postgresql-15, redis-server, mosquitto")]


def _as_postgres(*cmd: str) -> list[str]:
    """initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@dataclass
class PrivatePg:
    dir: Path
    port: int

    @classmethod
    def create(cls, base: Path) -> PrivatePg:
        d = base / "pg"
        d.mkdir()
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            shutil.chown(d, "postgres")
        subprocess.run(_as_postgres(str(PGBIN / "initdb"), "-D", str(d), "-A", "trust", "-U",
                                    "tether", "--no-sync"), check=True, capture_output=True)
        port = free_port()
        with open(d / "postgresql.conf", "a") as f:
            f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{d}'\nshared_preload_libraries = 'timescaledb'\n"
                    "timescaledb.telemetry_level = off\nfsync = off\nmax_connections = 60\n")
        pg = cls(d, port)
        pg.start()
        with psycopg.connect(pg.url("postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE tether")
        return pg

    def url(self, db: str = "tether") -> str:
        return f"postgresql://tether@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        subprocess.run(_as_postgres(str(PGBIN / "pg_ctl"), "-D", str(self.dir), "-w", "-l",
                                    str(self.dir / "log"), "start"), check=True,
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_postgres(str(PGBIN / "pg_ctl"), "-D", str(self.dir), "-w", "-m",
                                    "fast", "stop"), check=False, capture_output=True)


@dataclass
class PrivateRedis:
    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        # No AOF here on purpose: a restart loses everything, the worst case the rule state
        # must survive (the setup turns AOF on for the real one).
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no",
                                      "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class PrivateBroker:
    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not (self.dir / "dynsec.json").exists():
            subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(self.dir / "dynsec.json"),
                            cred.ADMIN_USER, ADMIN_PW], check=True, capture_output=True)
        self.proc = start_mosquitto(self.dir, self.port, "autosave_interval 10\n")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            self.proc.send_signal(sig)  # SIGTERM: Mosquitto saves its store before exiting
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def _wait_port(port: int, limit_s: float = 10) -> None:
    import socket
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@dataclass
class World:
    pg: PrivatePg
    redis: PrivateRedis
    broker: PrivateBroker
    accounts: dict
    root: str = "tether/v1"
    workers: list[subprocess.Popen] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, slot: int = 0) -> dict[str, str]:
        return {**os.environ, "TETHER_DATABASE_URL": self.pg.url(),
                "TETHER_REDIS_URL": self.redis.url, "TETHER_MQTT_URL": self.broker.url,
                "TETHER_MQTT_CLIENT_ID": f"fault-ingest-{slot}", "TETHER_BATCH_AGE_MS": "50",
                "TETHER_LOG_LEVEL": "WARNING", "TETHER_REDIS_PREFIX": "tether:",
                "TETHER_OFFLINE_WEARABLE_S": "6", "TETHER_TICK_INTERVAL_S": "0.2",
                **self.extra_env}

    def start_worker(self, slot: int = 0) -> subprocess.Popen:
        with open(self.pg.dir.parent / f"ingest-{slot}.log", "ab") as log:
            p = subprocess.Popen([sys.executable, "-c",
                                  "import sys; from tether.cli import main; sys.exit(main())",
                                  "ingest"], env=self.env(slot), stdout=subprocess.DEVNULL,
                                 stderr=log)
        self.workers.append(p)
        return p

    def enrol(self, n: int, prefix: str = "f") -> list[str]:
        devices = [f"{prefix}{i}" for i in range(n)]
        with psycopg.connect(self.pg.url(), autocommit=True) as db:
            j = db.execute("INSERT INTO jurisdictions (name) VALUES ('faults') RETURNING id")
            jid = j.fetchone()[0]
            for d in devices:
                s = db.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES (%s, %s)"
                               " RETURNING id", (d, jid)).fetchone()[0]
                db.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, 'wearable',"
                           " %s)", (d, s))
        return devices

    async def subscribed(self) -> None:
        """Until the ingest's session exists: before it, the broker has no one to keep a
        device's message for (the setup's first `tether ingest` start creates it for good)."""
        probe = self.enrol(1, f"probe{len(self.workers)}-")[0]
        dev = self.accounts["dev"]
        async with aiomqtt.Client("127.0.0.1", self.broker.port, username=dev["username"],
                                  password=dev["password"]) as c:
            for i in range(300):
                await c.publish(f"{self.root}/devices/{probe}/loc", json.dumps(
                    {"ts": time.time(), "lat": 1, "lon": 1, "seq": i}), qos=1)
                with psycopg.connect(self.pg.url()) as db:
                    if db.execute("SELECT 1 FROM fixes WHERE device_id = %s", (probe,)
                                  ).fetchone():
                        return
                await asyncio.sleep(0.1)
        raise AssertionError("the ingest worker never subscribed")

    def stored(self) -> tuple[set[tuple[str, int]], int]:
        """(the distinct (device, seq) stored, the number of rows)."""
        with psycopg.connect(self.pg.url()) as db:
            rows = db.execute("SELECT device_id, seq FROM fixes WHERE device_id NOT LIKE"
                              " 'probe%'").fetchall()
        return set(rows), len(rows)


@pytest.fixture
def world() -> Iterator[World]:
    with private_world() as w:
        yield w


def _mosquitto(base: Path) -> tuple[PrivateBroker, Callable[[str], dict]]:
    broker = PrivateBroker(base)
    broker.start()
    return broker, lambda pg_url: asyncio.run(cred.provision(
        pg_url, broker.url, {"admin": {"username": cred.ADMIN_USER, "password": ADMIN_PW}},
        ("ingest", "dev")))


@contextlib.contextmanager
def private_world(make_broker: Callable[[Path], tuple] = _mosquitto,
                  world_type: type[World] | None = None) -> Iterator[World]:
    """PostgreSQL, Redis and a broker of its own (Mosquitto unless `make_broker` says: it
    returns the started broker and how to make the accounts), migrated and provisioned;
    removed after."""
    base = Path(tempfile.mkdtemp(prefix="tether-faults-"))
    pg = PrivatePg.create(base)
    red = PrivateRedis(base)
    red.start()
    (base / "mqtt").mkdir()
    broker, accounts = make_broker(base / "mqtt")
    w = None
    try:
        migrate(pg.url())
        w = (world_type or World)(pg, red, broker, accounts(pg.url()))
        yield w
    finally:
        for p in w.workers if w else ():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        broker.stop()
        red.stop()
        pg.stop()
        if not os.environ.get("TETHER_KEEP_FAULTS"):  # set it to read the workers' logs
            shutil.rmtree(base, ignore_errors=True)


class Fleet:
    """Devices publishing one fix each per tick with QoS 1; a fix counts as sent once the broker
    acknowledged it (PUBACK). Reconnects with backoff while the broker is away."""

    def __init__(self, w: World, devices: list[str], interval_s: float = 0.1) -> None:
        self.w, self.devices, self.interval_s = w, devices, interval_s
        self.acked: set[tuple[str, int]] = set()
        self.seq = 0
        self.running = True
        self.held = False  # devices keep their fixes (connected or not) while held

    async def run(self) -> None:
        dev = self.w.accounts["dev"]
        while self.running:
            try:
                async with aiomqtt.Client("127.0.0.1", self.w.broker.port,
                                          username=dev["username"], password=dev["password"],
                                          protocol=aiomqtt.ProtocolVersion.V311) as c:
                    c.pending_calls_threshold = 10_000  # one publish per device in flight
                    while self.running:
                        if self.held:
                            await asyncio.sleep(0.05)
                            continue
                        self.seq += 1
                        seq, now = self.seq, time.time()
                        await asyncio.gather(*(self._one(c, d, seq, now) for d in self.devices))
                        await asyncio.sleep(self.interval_s)
            except aiomqtt.MqttError:
                await asyncio.sleep(1.0)  # paho's (and most trackers') shortest reconnect delay

    async def _one(self, c: aiomqtt.Client, device: str, seq: int, now: float) -> None:
        body = json.dumps({"ts": now, "lat": 31.2 + seq * 1e-6, "lon": 121.4, "acc": 8,
                           "seq": seq})
        await c.publish(f"{self.w.root}/devices/{device}/loc", body, qos=1, timeout=3)
        self.acked.add((device, seq))


@contextlib.asynccontextmanager
async def fleet(w: World, devices: list[str], interval_s: float = 0.1) -> AsyncIterator[Fleet]:
    f = Fleet(w, devices, interval_s)
    task = asyncio.create_task(f.run(), name="fault-fleet")
    try:
        yield f
    finally:
        f.running = False
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await asyncio.wait_for(task, 15)


async def settle(w: World, f: Fleet, what: str, limit_s: float = 60) -> None:
    """Wait until every acknowledged fix is stored, then report and check the counts."""
    def missing() -> str:
        gone = f.acked - w.stored()[0]
        seqs = sorted({s for _, s in gone})
        alive = [p.poll() for p in w.workers]
        return (f"{len(gone)} acknowledged fixes not stored (seq {seqs[:3]}..{seqs[-3:]} of"
                f" {f.seq}; workers' exit codes {alive})")
    await eventually(lambda: f.acked <= w.stored()[0], limit_s, missing)
    kept, rows = w.stored()
    lost, duplicated = len(f.acked - kept), rows - len(kept)
    print(f"\n[{what}] sent {len(f.acked)}, stored {rows}, lost {lost}, duplicated {duplicated}")
    assert (lost, duplicated) == (0, 0)
    with psycopg.connect(w.pg.url()) as db:
        assert db.execute("SELECT count(*) FROM ingest_rejects").fetchone()[0] == 0


async def _publish_fix(w: World, device: str, lat: float, lon: float, seq: int,
                       age_s: float = 0) -> float:
    dev, now = w.accounts["dev"], time.time() - age_s
    async with aiomqtt.Client("127.0.0.1", w.broker.port, username=dev["username"],
                              password=dev["password"]) as c:
        await c.publish(f"{w.root}/devices/{device}/loc", json.dumps(
            {"ts": now, "lat": lat, "lon": lon, "acc": 5, "seq": seq}), qos=1)
    return now


@pytest.mark.timeout(240)
async def test_postgres_down_30_s_loses_no_fix(world: World) -> None:
    """No fix lost, the backlog drains, and a zone breach during the outage is raised on time:
    judged ahead (ingest/ahead.py) and shown to screens and phones as `alert_provisional`
    within seconds, then stored once when the database is back."""
    w = world
    devices = w.enrol(20)
    intruder = w.enrol(1, "intruder")[0]
    with psycopg.connect(w.pg.url(), autocommit=True) as db:
        j = db.execute("SELECT s.jurisdiction_id FROM devices d JOIN subjects s ON"
                       " s.id = d.subject_id WHERE d.id = %s", (intruder,)).fetchone()[0]
        db.execute("INSERT INTO zones (name, kind, geometry, radius_m, jurisdiction_id,"
                   " created_at) VALUES ('school', 'exclusion', %s, 200, %s,"
                   " now() - interval '1 hour')",
                   (json.dumps({"type": "Point", "coordinates": [120.0, 30.0]}), j))
    w.start_worker()
    await w.subscribed()
    red = aioredis.Redis.from_url(w.redis.url)
    async with fleet(w, devices) as f, red.pubsub() as ps:
        await ps.subscribe("tether:live:alerts")
        await eventually(lambda: len(w.stored()[0]) > 100, 30, "ingest running")
        # 1 km north, a minute before: outside, and no impossible jump to the next fix
        await _publish_fix(w, intruder, 30.01, 120.0, 1, age_s=60)
        await eventually(lambda: (intruder, 1) in w.stored()[0], 30, "the intruder heard")
        await asyncio.to_thread(w.pg.stop)
        down = len(f.acked)
        await asyncio.sleep(2)
        sent_at = await _publish_fix(w, intruder, 30.0, 120.0, 2)  # the zone's centre
        raised = None
        while raised is None and time.time() - sent_at < 10:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=1)
            for a in json.loads(m["data"])["items"] if m else []:
                if a["type"] == "exclusion_entry" and a["event"] == "opened":
                    raised = time.time()
        assert raised is not None, "no provisional alert within 10 s of the breach"
        print(f"\n[PostgreSQL down] breach shown {raised - sent_at:.2f} s after its fix")
        await asyncio.sleep(max(0.0, 30 - (time.time() - sent_at)))
        assert len(f.acked) > down + 1000  # the fleet went on: the broker took its fixes
        await asyncio.to_thread(w.pg.start)
        await asyncio.sleep(3)
    await red.aclose()
    f.acked |= {(intruder, 1), (intruder, 2)}
    await settle(w, f, "PostgreSQL stopped 30 s", 90)
    with psycopg.connect(w.pg.url()) as db:
        # (not device_offline: the intruder falls silent after its breach)
        stored = db.execute("SELECT type, opened_at FROM alerts WHERE device_id = %s"
                            " AND type <> 'device_offline'", (intruder,)).fetchall()
    assert [t for t, _ in stored] == ["exclusion_entry"]  # stored once, when it was back
    assert abs(stored[0][1].timestamp() - sent_at) < 1  # dated at the fix


@pytest.mark.timeout(180)
async def test_broker_restart_delivers_queued_qos1(world: World) -> None:
    """The worker away: the broker queues its share in the persistent session and keeps it
    across its own restart (saved on a clean stop). Mosquitto 2.0 does not restore the share
    group's subscription itself (docs/faults.md), so the devices are held until the worker is
    back: what they send then reaches it."""
    w = world
    devices = w.enrol(20)
    worker = w.start_worker()
    await w.subscribed()
    async with fleet(w, devices) as f:
        await eventually(lambda: len(w.stored()[0]) > 100, 30, "ingest running")
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 20)
        await asyncio.sleep(2)
        queued = len(f.acked - w.stored()[0])
        assert queued > 100
        f.held = True
        await asyncio.to_thread(w.broker.stop)
        await asyncio.to_thread(w.broker.start)
        w.start_worker()
        await w.subscribed()
        f.held = False
        await asyncio.sleep(3)
    await settle(w, f, f"broker restarted with {queued} queued", 60)


@pytest.mark.timeout(180)
async def test_broker_restart_under_load_loses_nothing(world: World) -> None:
    """The common case: the broker restarts under a running worker and fleet. The worker is
    back (reconnect within 1 s, ingest/mqtt.py) before the devices (1 s and up), so nothing the
    broker acknowledges after its restart finds the share group missing."""
    w = world
    devices = w.enrol(20)
    w.start_worker()
    await w.subscribed()
    async with fleet(w, devices) as f:
        await eventually(lambda: len(w.stored()[0]) > 100, 30, "ingest running")
        for _ in range(2):
            await asyncio.to_thread(w.broker.stop)
            await asyncio.to_thread(w.broker.start)
            before = len(f.acked)
            await eventually(lambda n=before: len(f.acked) > n + 500, 30, "the fleet is back")
    await settle(w, f, "broker restarted twice under load", 60)


@pytest.mark.timeout(120)
async def test_sigterm_commits_and_acks_the_batch_in_hand(world: World) -> None:
    """Graceful stop: a worker holding an uncommitted batch (its age limit is long) is sent
    SIGTERM; it takes nothing more, commits and acknowledges what it took, and exits. Nothing
    waits with the broker for the next worker: its session, resumed, gets no redelivery."""
    w = world
    devices = w.enrol(10)
    w.start_worker()
    await w.subscribed()
    await stop_workers(w)
    w.extra_env = {"TETHER_BATCH_AGE_MS": "60000"}  # the batch is filled, never flushed by age
    worker = w.start_worker()
    await asyncio.sleep(3)  # connected, session resumed
    dev = w.accounts["dev"]
    async with aiomqtt.Client("127.0.0.1", w.broker.port, username=dev["username"],
                              password=dev["password"]) as c:
        for seq in range(20):
            await asyncio.gather(*(c.publish(f"{w.root}/devices/{d}/loc", json.dumps(
                {"ts": time.time() - 100 + seq, "lat": 31.2, "lon": 121.4, "acc": 8,
                 "seq": seq}), qos=1) for d in devices))
    await asyncio.sleep(2)
    assert len(w.stored()[0]) == 0  # taken, not committed: the batch waits for its age
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    kept, rows = w.stored()
    print(f"\n[SIGTERM with a batch in hand] sent 200, stored {rows} before exit")
    assert kept == {(d, s) for d in devices for s in range(20)} and rows == 200
    ingest = w.accounts["ingest"]
    redelivered = 0
    async with aiomqtt.Client("127.0.0.1", w.broker.port, identifier="fault-ingest-0",
                              clean_session=False, username=ingest["username"],
                              password=ingest["password"]) as c:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for _ in c.messages:
                    redelivered += 1
    assert redelivered == 0  # every message of the batch was acknowledged before the exit


async def stop_workers(w: World) -> None:
    for p in w.workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            await asyncio.to_thread(p.wait, 20)


@pytest.mark.timeout(180)
async def test_sigkill_mid_batch_loses_and_doubles_nothing(world: World) -> None:
    w = world
    devices = w.enrol(50)
    worker = w.start_worker()
    await w.subscribed()
    async with fleet(w, devices, 0.02) as f:
        await eventually(lambda: len(w.stored()[0]) > 500, 30, "ingest running")
        for _ in range(3):  # killed three times while batches are in flight
            await asyncio.sleep(1.5)
            worker.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait, 10)
            worker = w.start_worker()
        await asyncio.sleep(3)
    await settle(w, f, "ingest SIGKILLed 3 times", 60)


@pytest.mark.timeout(180)
async def test_redis_restart_keeps_alerts_once_and_flags_silent_trackers(world: World) -> None:
    w = world
    devices = w.enrol(10)
    silent = w.enrol(1, "quiet")[0]
    w.start_worker()
    await w.subscribed()
    async with fleet(w, [*devices, silent]) as f:
        await eventually(lambda: (silent, 5) in w.stored()[0], 30, "the quiet one heard")
        f.devices = devices  # the quiet tracker stops here
        await asyncio.to_thread(w.redis.stop)  # everything Redis held is gone
        await asyncio.sleep(1)
        await asyncio.to_thread(w.redis.start)
        await asyncio.sleep(3)
    await settle(w, f, "Redis restarted empty", 60)
    with psycopg.connect(w.pg.url()) as db:
        def offline() -> list[tuple]:
            return db.execute("SELECT device_id, status FROM alerts WHERE type ="
                              " 'device_offline' AND device_id = %s", (silent,)).fetchall()
        await eventually(lambda: offline() == [(silent, "open")], 30,
                         lambda: f"one offline alert for {silent}, got {offline()}")
        await asyncio.sleep(2)
        assert offline() == [(silent, "open")]  # once
