"""`tether bench --duration S --json PATH`: the sustained rate of one fix per MQTT message, with
5,000 shared zones plus per-subject zones and curfews in force, against baselines of the same run.

1. baselines: raw binary COPY into `fixes`; the broker passing the same load through to a bare
   QoS 1 subscriber (paho, one process) while the generators publish as fast as they can;
2. `--workers` `tether ingest` processes on the shared subscription (distinct `--client-id`);
3. rise: the offered rate grows by 25 % a step until ingest stores less than it is offered or
   a backlog builds (saturation); the highest rate that passed is held for S seconds;
4. during the hold, scripted truth subjects breach their zones and near-miss subjects park just
   outside theirs; latencies are measured from publish to row visible / alert visible;
5. every alert of the run is compared with the truth: expected / raised / missed / spurious.
The database, topic roots and Redis keys are throwaway and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from datetime import UTC, datetime

import httpx
import msgspec
import psycopg

from ingest.mqtt import Broker, MqttPublisher
from ingest.state import drop_prefix
from tether.bench import load as loadgen
from tether.bench import world as bworld
from tether.bench.ingest import _copy_rate
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


class Workers:
    """N `tether ingest` processes with their own metrics ports."""

    def __init__(self, s: Settings, n: int, tag: str, base_port: int) -> None:
        env = {**os.environ, "TETHER_DATABASE_URL": s.database_url,
               "TETHER_MQTT_URL": s.mqtt_url, "TETHER_REDIS_URL": s.redis_url,
               "TETHER_MQTT_ROOT": s.mqtt_root, "TETHER_OWNTRACKS_ROOT": s.owntracks_root,
               "TETHER_REDIS_PREFIX": s.redis_prefix, "TETHER_MQTT_SHARE_GROUP": tag,
               "TETHER_LOG_LEVEL": "WARNING"}
        self.ports = [base_port + k for k in range(n)]
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "ingest", "--client-id", f"{tag}-w{k}",
             "--metrics-port", str(p)], env=env) for k, p in enumerate(self.ports)]
        self.http = httpx.AsyncClient(timeout=5.0)

    async def stored(self) -> int:
        total = 0
        for p in self.ports:
            r = await self.http.get(f"http://127.0.0.1:{p}/metrics")
            for line in r.text.splitlines():
                if line.startswith("tether_ingest_fixes_stored_total "):
                    total += int(float(line.split()[1]))
        return total

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
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


class Truth:
    """The scripted subjects, published from here at 1 fix/s each, and the watch on what
    becomes visible in the database (rows of the near-miss probes, alerts)."""

    def __init__(self, w: bworld.BenchWorld, root: str, url: str) -> None:
        self.w, self.root, self.url = w, root, url
        self.breach_at: dict[str, float] = {}  # device -> wall time of its breach fix
        self.sent: dict[tuple[str, float], float] = {}  # (probe, ts) -> publish time
        self.stored_lat: list[float] = []
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
            for d, (x, y), acc in msgs:
                lat, lon = bworld.latlon(x, y)
                await pub.publish(f"{self.root}/devices/{d}/loc", msgspec.json.encode(
                    {"ts": round(now, 3), "lat": lat, "lon": lon, "acc": acc}))
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
                if rows:
                    since = max(t for _, t in rows)
                for sid, typ in await (await c.execute(
                        "SELECT subject_id, type FROM alerts")).fetchall():
                    self.alerts.setdefault((sid, typ), seen)
                await asyncio.sleep(POLL_S)

    def check(self) -> dict:
        by_subject = {self.w.subject_of[d]: d for d, _h, _i in self.w.breach}
        matched = {k for k in self.alerts if k[1] == "exclusion_entry" and k[0] in by_subject
                   and by_subject[k[0]] in self.breach_at}
        for k in matched:
            self.alert_lat.append(self.alerts[k] - self.breach_at[by_subject[k[0]]])
        expected = len(self.breach_at)
        return {"expected": expected, "raised": len(self.alerts),
                "missed": expected - len(matched), "spurious": len(self.alerts) - len(matched)}


async def _passthrough(s: Settings, w: bworld.BenchWorld, tails: list[list[bytes]], tag: str,
                       procs: int, seconds: float) -> float:
    """The broker's ceiling for this load: generators at full speed, one bare subscriber."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("d", 2, lock=False)
    b = Broker.from_url(s.mqtt_url)
    root = f"{s.mqtt_root}-pt"
    sub = ctx.Process(target=loadgen.bare_subscriber, name="bench-bare-subscriber",
                      args=(b.host, b.port, f"{root}/#", f"{tag}-bare", stop, counts))
    sub.start()
    await asyncio.sleep(1.0)
    load = loadgen.Load(b.host, b.port, [f"{root}/devices/{d}/loc" for d in w.devices], tails,
                        procs, f"{tag}-pt")
    try:
        load.set(1e9)
        await asyncio.sleep(1.5)  # connected and up to speed
        got0, t0 = counts[0], time.monotonic()
        await asyncio.sleep(seconds)
        return (counts[0] - got0) / (time.monotonic() - t0)
    finally:
        load.close()
        stop.set()
        sub.join(5)


async def _step(workers: Workers, load: loadgen.Load, rate: float, seconds: float
                ) -> tuple[float, int]:
    """Offer `rate` for `seconds`; returns the stored rate after a 2 s settling, and the
    backlog (published, not yet stored) at the end."""
    load.set(rate)
    await asyncio.sleep(min(2.0, seconds / 3))
    s0, t0 = await workers.stored(), time.monotonic()
    await asyncio.sleep(seconds - min(2.0, seconds / 3))
    s1 = await workers.stored()
    return (s1 - s0) / (time.monotonic() - t0), load.published() - s1


async def run(s: Settings, args: argparse.Namespace) -> dict:
    from urllib.parse import urlsplit, urlunsplit

    from ingest import store

    tag = f"bench{uuid.uuid4().hex[:8]}"
    u = urlsplit(s.database_url)
    admin = urlunsplit(u._replace(path="/postgres"))
    url = urlunsplit(u._replace(path="/" + tag))
    store.create_database(admin, tag)
    s = s.model_copy(update={"database_url": url, "mqtt_root": f"{tag}/tether/v1",
                             "owntracks_root": f"{tag}/owntracks", "redis_prefix": f"{tag}:"})
    rng = random.Random(5)
    workers = load = None
    try:
        store.migrate(url, s.migrations_dir)
        w = bworld.seed(url, args.subjects, args.zones, args.breaches, args.near_misses, tag,
                        rng)
        tails = w.tails(rng)
        copy = _copy_rate(url, args.copy_rows)
        passthrough = await _passthrough(s, w, tails, tag, args.generators,
                                         args.baseline_s)
        workers = Workers(s, args.workers, tag, args.metrics_port)
        await workers.ready()
        b = Broker.from_url(s.mqtt_url)
        load = loadgen.Load(b.host, b.port, [f"{s.mqtt_root}/devices/{d}/loc"
                                             for d in w.devices], tails, args.generators, tag)
        steps, rate, best = [], args.start_rate, 0.0
        while rate <= args.max_rate:
            got, backlog = await _step(workers, load, rate, args.step_s)
            ok = got >= 0.97 * rate and backlog < rate
            steps.append({"offered": round(rate), "stored": round(got), "backlog": backlog,
                          "ok": ok})
            print(f"  rise {rate:>9,.0f}/s offered  {got:>9,.0f}/s stored  backlog "
                  f"{backlog:>8,}  {'ok' if ok else 'saturated'}", file=sys.stderr, flush=True)
            if not ok:
                break
            best, rate = rate, rate * 1.25
        hold = best or args.start_rate / 2
        load.set(hold)
        for _ in range(100):  # let the backlog of the saturated step drain first
            if load.published() - await workers.stored() < hold * 0.5:
                break
            await asyncio.sleep(0.2)
        truth = Truth(w, s.mqtt_root, url)
        stop = asyncio.Event()
        t_start = time.time()
        times = {d: t_start + args.duration * (0.1 + 0.7 * k / max(1, len(w.breach)))
                 for k, (d, _h, _i) in enumerate(w.breach)}
        async with MqttPublisher(b, f"{tag}-truth") as pub:
            tasks = [asyncio.create_task(truth.publish(pub, times, stop, rng), name="truth-pub"),
                     asyncio.create_task(truth.watch(stop), name="truth-watch")]
            cpu0, gen0, broker0 = workers.cpu_s(), load.cpu_s(), _broker_cpu()
            s0, t0 = await workers.stored(), time.monotonic()
            rss = 0.0
            while time.monotonic() - t0 < args.duration:
                await asyncio.sleep(1.0)
                rss = max(rss, workers.rss_mb())
            s1, t1 = await workers.stored(), time.monotonic()
            backlog = load.published() - s1
            cpu = {"ingest_cores": round((workers.cpu_s() - cpu0) / (t1 - t0), 2),
                   "load_generator_cores": round((load.cpu_s() - gen0) / (t1 - t0), 2),
                   "broker_cores": round((_broker_cpu() - broker0) / (t1 - t0), 2),
                   "machine_cores": os.cpu_count(), "workers": args.workers,
                   "generators": args.generators}
            load.set(0)
            await asyncio.sleep(args.settle_s)  # what is due is stored and judged
            stop.set()
            await asyncio.gather(*tasks)
        alerts = truth.check()
        fixes_per_s = (s1 - s0) / (t1 - t0)
        return {"fixes_per_s": round(fixes_per_s),
                "baselines": {"mqtt_passthrough_per_s": round(passthrough),
                              "copy_rows_per_s": round(copy)},
                "latency_ms": {"stored_p50": _pct(truth.stored_lat, 0.5),
                               "stored_p99": _pct(truth.stored_lat, 0.99),
                               "alert_p50": _pct(truth.alert_lat, 0.5),
                               "alert_p99": _pct(truth.alert_lat, 0.99)},
                "alerts": alerts, "rss_mb": round(rss, 1), "cpu": cpu,
                "_run": {"offered_per_s": round(hold), "hold_s": args.duration,
                         "backlog_at_end": backlog, "steps": steps,
                         "subjects": len(w.devices), "zones_shared": args.zones,
                         "zones_per_subject": 2}}
    finally:
        if load is not None:
            load.close()
        if workers is not None:
            await workers.close()
        store.drop_database(admin, tag)
        await drop_prefix(s.redis_url, f"{tag}:")


def _broker_cpu() -> float:
    try:
        out = subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True, text=True)
        return sum(_proc_cpu(int(p)) for p in out.stdout.split())
    except OSError:
        return 0.0


def table(r: dict) -> str:
    run, b, lat, a = r["_run"], r["baselines"], r["latency_ms"], r["alerts"]
    ratio = r["fixes_per_s"] / b["mqtt_passthrough_per_s"] if b["mqtt_passthrough_per_s"] else 0
    cpu = r["cpu"]
    rows = [
        ("raw binary COPY into `fixes`", f"{b['copy_rows_per_s']:,} rows/s", ""),
        ("broker → bare QoS 1 subscriber (paho, 1 process)",
         f"{b['mqtt_passthrough_per_s']:,} msgs/s", "1"),
        (f"Tether ingest + rules, 1 fix per message, {cpu['workers']} worker(s), "
         f"{run['hold_s']:g} s held", f"{r['fixes_per_s']:,} fixes/s",
         f"{ratio:.2f} × subscriber"),
        ("publish → stored, p50 / p99", f"{lat['stored_p50']} / {lat['stored_p99']} ms", ""),
        ("publish → alert, p50 / p99", f"{lat['alert_p50']} / {lat['alert_p99']} ms", ""),
        ("scripted alerts: expected / raised / missed / spurious",
         f"{a['expected']} / {a['raised']} / {a['missed']} / {a['spurious']}", ""),
        ("ingest RSS, CPU", f"{r['rss_mb']} MB, {cpu['ingest_cores']} cores",
         f"load generator {cpu['load_generator_cores']} cores, broker "
         f"{cpu['broker_cores']}"),
    ]
    out = [f"tether bench: {run['subjects']:,} subjects, {run['zones_shared']:,} shared zones "
           f"+ {run['zones_per_subject']} per subject, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
           "", "| what | rate | ratio |", "|---|---|---|"]
    out += [f"| {w} | {v} | {x} |" for w, v, x in rows]
    return "\n".join(out)


def main(s: Settings, args: argparse.Namespace) -> int:
    try:
        import uvloop
        r = uvloop.run(run(s, args))
    except ImportError:
        r = asyncio.run(run(s, args))
    print(table(r))
    if args.json:  # exactly the keys; the run's details are in the table and log
        text = json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    ok = r["alerts"]["missed"] == 0 and r["alerts"]["spurious"] == 0
    return 0 if ok else 1
