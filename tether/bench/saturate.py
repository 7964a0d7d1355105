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
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

from ingest.mqtt import Broker, MqttPublisher
from ingest.state import drop_prefix
from tether.bench import load as loadgen
from tether.bench import world as bworld
from tether.bench.ingest import _copy_rate
from tether.bench.probes import Truth, Workers, _pct, _proc_cpu
from tether.config import Settings

GROWTH_OK = 0.02  # a step keeps up while its backlog grows by less than this of its rate
REFINE_STEPS = 2  # after saturation: the edge within 2.8 % (steps are 25 % apart)


def _login(b: Broker) -> tuple[str, str] | None:
    return None if b.username is None else (b.username, b.password or "")


async def _passthrough(s: Settings, w: bworld.BenchWorld, tails: list[list[bytes]], tag: str,
                       procs: int, seconds: float) -> float:
    """The broker's ceiling for this load: generators at full speed, one bare subscriber."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("d", 2, lock=False)
    b = Broker.from_url(s.mqtt_url)
    root = f"{s.mqtt_root}-pt"
    sub = ctx.Process(target=loadgen.bare_subscriber, name="bench-bare-subscriber",
                      args=(b.host, b.port, f"{root}/#", f"{tag}-bare", stop, counts,
                            _login(b)))
    sub.start()
    await asyncio.sleep(1.0)
    load = loadgen.Load(b.host, b.port, [f"{root}/devices/{d}/loc" for d in w.devices], tails,
                        procs, f"{tag}-pt", _login(b))
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
                ) -> tuple[float, float, float]:
    """Offer `rate` for `seconds`; after a settling of up to 2 s, returns the rates stored and
    actually published, and the backlog's (published, not yet stored) growth per second: the
    slope of a line fitted to samples every 0.25 s, which the batches' commits make jump."""
    load.set(rate)
    await asyncio.sleep(min(2.0, seconds / 3))
    s0, p0, t0 = await workers.stored(), load.published(), time.monotonic()
    ts, backlog, stored, published = [0.0], [float(p0 - s0)], s0, p0
    while time.monotonic() - t0 < seconds - min(2.0, seconds / 3):
        await asyncio.sleep(0.25)
        stored, published = await workers.stored(), load.published()
        ts.append(time.monotonic() - t0)
        backlog.append(float(published - stored))
    took = max(ts[-1], 1e-3)
    slope = statistics.linear_regression(ts, backlog).slope if len(ts) > 2 else 0.0
    return (stored - s0) / took, (published - p0) / took, slope


async def _rise(workers: Workers, load: loadgen.Load, args: argparse.Namespace
                ) -> tuple[float, list[dict]]:
    """Offer more (x1.25 a step) until ingest falls behind (or the generators do), then
    `REFINE_STEPS` steps bisecting between the last rate that passed and the first that did
    not; returns the highest rate that passed (or 90 % of what the first step stored)."""
    steps: list[dict] = []

    async def step(rate: float) -> tuple[bool, float]:
        got, offered, growth = await _step(workers, load, rate, args.step_s)
        got -= args.breaches + args.near_misses  # the truth subjects' 1 fix/s each
        short = offered < 0.9 * rate  # the generators (or the broker) cannot offer more
        # Kept up: the backlog grew by less than 2 % of the rate. A looser test (half a
        # second of load over the step) passed a step that stored 93 % of it, and a 180-s
        # hold at that rate fell 16 s behind.
        ok = growth < GROWTH_OK * rate and not short
        steps.append({"target": round(rate), "published": round(offered),
                      "stored": round(got), "backlog_growth_per_s": round(growth), "ok": ok})
        print(f"  rise {rate:>9,.0f}/s target  {offered:>9,.0f}/s published  {got:>9,.0f}/s"
              f" stored  backlog {growth:>+8,.0f}/s  "
              f"{'ok' if ok else 'load generator short' if short else 'saturated'}",
              file=sys.stderr, flush=True)
        return ok, min(got, offered)

    rate, best = args.start_rate, 0.0
    while rate <= args.max_rate:
        ok, kept = await step(rate)
        if not ok:
            break
        best, rate = rate, rate * 1.25
    else:
        return best, steps
    if not best:
        return max(kept * 0.9, 100.0), steps
    failed = rate
    for _ in range(REFINE_STEPS):  # bisect between the last rate that passed and the first not
        between = (best * failed) ** 0.5
        load.set(0)  # the failed step's backlog would flatter the next one
        await _drained(workers, load, between, 180)
        ok, _ = await step(between)
        best, failed = (between, failed) if ok else (best, between)
    return best, steps


async def _drained(workers: Workers, load: loadgen.Load, rate: float, within_s: float
                   ) -> None:
    """Until less than half a second of the offered rate waits to be stored."""
    deadline = time.monotonic() + within_s
    while load.published() - await workers.stored() > rate * 0.5 \
            and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the workers' metrics
        await asyncio.sleep(0.2)


async def _settle(workers: Workers, load: loadgen.Load, rate: float) -> None:
    """The saturated step's backlog drains with the load paused, then the hold's rate runs a
    second: the hold measures the rate sustained, not a backlog drained, and no latency or
    breach of the hold waits behind that backlog."""
    load.set(0)
    await _drained(workers, load, rate, 180)
    load.set(rate)
    await asyncio.sleep(1.0)


async def _hold(workers: Workers, load: loadgen.Load, seconds: float) -> dict:
    cpu0, gen0, broker0 = workers.cpu_s(), load.cpu_s(), _broker_cpu()
    # the services are shared with whatever else runs here: an upper bound of this run's share
    db0, redis0 = _cpu_of("postgres"), _cpu_of("redis-server")
    s0, t0 = await workers.stored(), time.monotonic()
    rss = 0.0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(1.0, seconds / 5))
        rss = max(rss, workers.rss_mb())
    s1, t1 = await workers.stored(), time.monotonic()
    took = t1 - t0
    return {"fixes_per_s": (s1 - s0) / took, "backlog_at_end": load.published() - s1,
            "rss_mb": rss,
            "cpu": {"ingest_cores": round((workers.cpu_s() - cpu0) / took, 2),
                    "load_generator_cores": round((load.cpu_s() - gen0) / took, 2),
                    "broker_cores": round((_broker_cpu() - broker0) / took, 2),
                    "database_cores": round((_cpu_of("postgres") - db0) / took, 2),
                    "redis_cores": round((_cpu_of("redis-server") - redis0) / took, 2),
                    "machine_cores": os.cpu_count()}}


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
    b = Broker.from_url(s.mqtt_url)
    workers = load = None
    stop = asyncio.Event()
    try:
        store.migrate(url, s.migrations_dir)
        w = bworld.seed(url, args.subjects, args.zones, args.breaches, args.near_misses, tag,
                        rng)
        tails = w.tails(rng)
        copy = _copy_rate(url, args.copy_rows)
        passthrough = await _passthrough(s, w, tails, tag, args.generators, args.baseline_s)
        workers = Workers(s, args.workers, tag, args.metrics_port)
        await workers.ready()
        load = loadgen.Load(b.host, b.port, [f"{s.mqtt_root}/devices/{d}/loc"
                                             for d in w.devices], tails, args.generators, tag,
                            _login(b))
        truth = Truth(w, s.mqtt_root, url)
        times: dict[str, float] = {}  # breach moments, set when the hold starts
        async with MqttPublisher(b, f"{tag}-truth") as pub:
            tasks = [asyncio.create_task(truth.publish(pub, times, stop, rng),
                                         name="bench-truth-publish"),
                     asyncio.create_task(truth.watch(stop), name="bench-truth-watch")]
            # Warm-up: every device heard once; then the per-subject zones and curfews come
            # into force (the workers reload their world within a second or so).
            load.set(args.start_rate)
            heard = len(w.devices) + len(w.breach) + len(w.near)
            deadline = time.monotonic() + 120
            while await workers.stored() < heard and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the workers' metrics
                await asyncio.sleep(0.5)
            zones = bworld.add_subject_zones(url, w)
            print(f"  warm-up done; {zones:,} per-subject zones and curfews in force",
                  file=sys.stderr)
            load.set(0)  # the warm-up's backlog and the world reload are over first
            await asyncio.sleep(3.0)
            await _drained(workers, load, args.start_rate, 180)
            passed, steps = await _rise(workers, load, args)
            # A step is seconds long, the hold minutes: at the very edge a backlog builds, and
            # its wait would be measured as latency. The hold offers a fraction of the edge.
            rate = passed * args.hold_fraction
            print(f"  hold {rate:,.0f}/s ({args.hold_fraction:g} x {passed:,.0f}/s, the highest"
                  f" step that kept up) for {args.duration:g} s", file=sys.stderr, flush=True)
            await _settle(workers, load, rate)
            # Breaches and latency samples belong to the hold alone.
            t_start = time.time()
            times.update({d: t_start + args.duration * (0.1 + 0.7 * k / max(1, len(w.breach)))
                          for k, (d, _h, _i) in enumerate(w.breach)})
            truth.start_window(t_start)
            held = await _hold(workers, load, args.duration)
            load.set(0)
            await asyncio.sleep(args.settle_s)  # what is due is stored and judged
            stop.set()
            await asyncio.gather(*tasks)
        alerts = truth.check()
        held["cpu"].update(workers=args.workers, generators=args.generators)
        return {"fixes_per_s": round(held["fixes_per_s"]),
                "baselines": {"mqtt_passthrough_per_s": round(passthrough),
                              "copy_rows_per_s": round(copy)},
                "latency_ms": {"stored_p50": _pct(truth.stored_lat, 0.5),
                               "stored_p99": _pct(truth.stored_lat, 0.99),
                               "alert_p50": _pct(truth.alert_lat, 0.5),
                               "alert_p99": _pct(truth.alert_lat, 0.99)},
                "alerts": alerts, "rss_mb": round(held["rss_mb"], 1), "cpu": held["cpu"],
                "_run": {"offered_per_s": round(rate), "highest_step_per_s": round(passed),
                         "hold_s": args.duration,
                         "backlog_at_end": held["backlog_at_end"], "steps": steps,
                         "stored_worst_s": truth.worst_seconds(t_start),
                         "subjects": len(w.devices), "zones_shared": args.zones,
                         "zones_per_subject": 2}}
    finally:
        stop.set()
        if load is not None:
            load.close()
        if workers is not None:
            await workers.close()
        store.drop_database(admin, tag)
        await drop_prefix(s.redis_url, f"{tag}:")


def _cpu_of(name: str) -> float:
    """CPU seconds of every process with this exact name (read from /proc, nothing touched)."""
    try:
        out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
        return sum(_proc_cpu(int(p)) for p in out.stdout.split())
    except OSError:
        return 0.0


def _broker_cpu() -> float:
    return _cpu_of("mosquitto")


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
         f"{ratio:.2f} x subscriber"),
        ("publish → stored, p50 / p99", f"{lat['stored_p50']} / {lat['stored_p99']} ms", ""),
        ("publish → alert, p50 / p99", f"{lat['alert_p50']} / {lat['alert_p99']} ms", ""),
        ("scripted alerts: expected / raised / missed / spurious",
         f"{a['expected']} / {a['raised']} / {a['missed']} / {a['spurious']}", ""),
        ("ingest RSS, CPU", f"{r['rss_mb']} MB, {cpu['ingest_cores']} cores",
         f"load generator {cpu['load_generator_cores']}, broker {cpu['broker_cores']}, "
         f"PostgreSQL {cpu['database_cores']}, Redis {cpu['redis_cores']} cores"),
    ]
    out = [f"tether bench: {run['subjects']:,} subjects, {run['zones_shared']:,} shared zones "
           f"+ {run['zones_per_subject']} per subject, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
           "", "| what | rate | ratio |", "|---|---|---|"]
    out += [f"| {w} | {v} | {x} |" for w, v, x in rows]
    if run.get("stored_worst_s"):
        out += ["", "slowest seconds of the hold (s after its start: slowest publish → stored):"
                " " + ", ".join(f"{k} s: {ms:,} ms" for k, ms in run["stored_worst_s"])]
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
