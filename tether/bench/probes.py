"""The bench's instruments: the ingest worker processes (their metrics, CPU and memory) and the
truth subjects (published from the bench, watched in the database)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime

import httpx
import msgspec
import psycopg

from ingest.mqtt import Broker, MqttPublisher
from tether.bench import world as bworld
from tether.config import Settings

POLL_S = 0.05


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1)


def _proc_cpu(pid: int) -> float:
    with suppress(OSError), open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _proc_rss_mb(pid: int) -> float:
    with suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def forget_session(broker: Broker, client_id: str) -> None:
    """A clean-session connect with the same id ends the persistent session it left."""
    import paho.mqtt.client as paho
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=True, protocol=paho.MQTTv311)
    c.connect(broker.host, broker.port, keepalive=10)
    c.loop(1.0)
    c.disconnect()


class Workers:
    """N `tether ingest` processes with their own metrics ports."""

    def __init__(self, s: Settings, n: int, tag: str, base_port: int) -> None:
        env = {**os.environ, "TETHER_DATABASE_URL": s.database_url,
               "TETHER_MQTT_URL": s.mqtt_url, "TETHER_REDIS_URL": s.redis_url,
               "TETHER_MQTT_ROOT": s.mqtt_root, "TETHER_OWNTRACKS_ROOT": s.owntracks_root,
               "TETHER_REDIS_PREFIX": s.redis_prefix, "TETHER_MQTT_SHARE_GROUP": tag,
               "TETHER_LOG_LEVEL": "WARNING"}
        self.ports = [base_port + k for k in range(n)]
        self.broker = Broker.from_url(s.mqtt_url)
        self.client_ids = [f"{tag}-w{k}" for k in range(n)]
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "ingest", "--client-id", self.client_ids[k],
             "--metrics-port", str(p)], env=env) for k, p in enumerate(self.ports)]
        self.http = httpx.AsyncClient(timeout=5.0)

    async def stored(self) -> int:
        total = 0
        for p, proc in zip(self.ports, self.procs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"ingest worker on metrics port {p} exited "
                                   f"({proc.returncode}); its log is above")
            r = await self.http.get(f"http://127.0.0.1:{p}/metrics")
            for line in r.text.splitlines():
                if line.startswith("tether_ingest_fixes_stored_total "):
                    total += int(float(line.split()[1]))
        return total

    async def ready(self, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while True:
            try:
                texts = [(await self.http.get(f"http://127.0.0.1:{p}/metrics")).text
                         for p in self.ports]
                if all("tether_ingest_mqtt_connects_total 1.0" in t for t in texts):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("ingest workers did not start")
            await asyncio.sleep(0.2)

    def cpu_s(self) -> float:
        return sum(_proc_cpu(p.pid) for p in self.procs)

    def rss_mb(self) -> float:
        return sum(_proc_rss_mb(p.pid) for p in self.procs)

    async def close(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        await self.http.aclose()
        for cid in self.client_ids:  # the broker forgets the workers' persistent sessions
            with suppress(OSError):
                forget_session(self.broker, cid)


def _fix(ts: float, x: float, y: float, acc: float) -> dict:
    lat, lon = bworld.latlon(x, y)
    return {"ts": round(ts, 3), "lat": lat, "lon": lon, "acc": acc}


class Truth:
    """The scripted subjects, published from here at 1 fix/s each, and the watch on what
    becomes visible in the database (rows of the near-miss probes, alerts)."""

    def __init__(self, w: bworld.BenchWorld, root: str, url: str) -> None:
        self.w, self.root, self.url = w, root, url
        self.breach_at: dict[str, float] = {}  # device -> wall time of its breach fix
        self.sent: dict[tuple[str, float], float] = {}  # (probe, ts) -> publish time
        self.stored_lat: list[float] = []
        self.stored_when: list[float] = []  # publish time of each stored_lat sample
        self.alert_lat: list[float] = []
        self.alerts: dict[tuple[int, str], float] = {}

    async def publish(self, pub: MqttPublisher, breach_times: dict[str, float],
                      stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set():
            now = time.time()
            msgs = []
            for d, home, inside in self.w.breach:
                at = inside if now >= breach_times.get(d, float("inf")) else home
                if at is inside and d not in self.breach_at:
                    self.breach_at[d] = now
                msgs.append((d, at, 10))
            for d, spot in self.w.near:
                msgs.append((d, (spot[0] + rng.uniform(-5, 5), spot[1]), 30))
                self.sent[(d, round(now, 3))] = now
            # All at once: one after another, each awaiting its PUBACK, the last would leave
            # seconds after its time stamp under load, and count that as Tether's latency.
            await asyncio.gather(*(pub.publish(f"{self.root}/devices/{d}/loc",
                                               msgspec.json.encode(_fix(now, x, y, acc)))
                                   for d, (x, y), acc in msgs))
            await asyncio.sleep(max(0.0, now + 1.0 - time.time()))

    async def watch(self, stop: asyncio.Event) -> None:
        probes = [d for d, _ in self.w.near]
        since = datetime.now(UTC)
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as c:
            while not stop.is_set():
                rows = await (await c.execute(
                    "SELECT device_id, fix_time FROM fixes WHERE device_id = ANY(%s)"
                    " AND fix_time > %s", (probes, since))).fetchall()
                seen = time.time()
                for d, t in rows:
                    sent = self.sent.pop((d, round(t.timestamp(), 3)), None)
                    if sent is not None:
                        self.stored_lat.append(seen - sent)
                        self.stored_when.append(sent)
                if rows:
                    since = max(t for _, t in rows)
                for sid, typ in await (await c.execute(
                        "SELECT subject_id, type FROM alerts")).fetchall():
                    self.alerts.setdefault((sid, typ), seen)
                await asyncio.sleep(POLL_S)

    def start_window(self, t: float) -> None:
        """Latency from here on: what was published before `t` is not sampled."""
        self.stored_lat.clear()
        self.stored_when.clear()
        self.sent = {k: v for k, v in self.sent.items() if v >= t}

    def worst_seconds(self, since: float, n: int = 5) -> list[tuple[int, float]]:
        """The `n` seconds of the hold (offset from `since`) whose slowest fix was slowest,
        with that latency (ms): a tail spread over the hold is load, one bunched is a stall."""
        worst: dict[int, float] = {}
        for t, lat in zip(self.stored_when, self.stored_lat, strict=True):
            k = int(t - since)
            worst[k] = max(worst.get(k, 0.0), lat)
        top = sorted(worst.items(), key=lambda kv: -kv[1])[:n]
        return [(k, round(v * 1000)) for k, v in top]

    def check(self) -> dict:
        by_subject = {self.w.subject_of[d]: d for d, _h, _i in self.w.breach}
        matched = {k for k in self.alerts if k[1] == "exclusion_entry" and k[0] in by_subject
                   and by_subject[k[0]] in self.breach_at}
        for k in matched:
            self.alert_lat.append(self.alerts[k] - self.breach_at[by_subject[k[0]]])
        expected = len(self.breach_at)
        spare = sorted({k[1] for k in self.alerts if k not in matched})
        if spare:
            print(f"  spurious alert types: {', '.join(spare)}", file=sys.stderr)
        return {"expected": expected, "raised": len(self.alerts),
                "missed": expected - len(matched), "spurious": len(self.alerts) - len(matched)}
