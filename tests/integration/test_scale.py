"""Scale-out: several ingest workers on the shared subscription store the same fixes and raise
the same alerts as one, and how throughput grows with 1, 2 and 3 workers (measured in one run).
Private PostgreSQL, Redis and Mosquitto (tests/integration/test_faults.py's `world`)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import aiomqtt
import psycopg
import pytest

from tests.integration.conftest import eventually
from tests.integration.test_faults import World, private_world
from tests.integration.test_rules_e2e import BASE, circle_zone, offset

pytestmark = pytest.mark.slow


@pytest.fixture
def world() -> Iterator[World]:
    with private_world() as w:
        yield w


def walk(device: str, t0: float) -> list[tuple[str, bytes]]:
    """600 m north to the centre of a 200 m exclusion zone and out again, a fix a second."""
    out = []
    for k, north in enumerate([*range(600, -1, -50), *range(50, 601, 50)]):
        lat, lon = offset(north)
        out.append((device, json.dumps({"ts": t0 + k, "lat": lat, "lon": lon, "acc": 5,
                                        "seq": k}).encode()))
    return out


async def publish(w: World, items: list[tuple[str, bytes]]) -> None:
    dev = w.accounts["dev"]
    async with aiomqtt.Client("127.0.0.1", w.broker.port, username=dev["username"],
                              password=dev["password"], max_inflight_messages=1000) as c:
        c.pending_calls_threshold = 100_000
        for i in range(0, len(items), 500):
            await asyncio.gather(*(c.publish(f"{w.root}/devices/{d}/loc", p, qos=1)
                                   for d, p in items[i:i + 500]))


async def retire(w: World, slots: range) -> None:
    """End the workers' persistent sessions: an offline session in the share group would go on
    receiving its share of new messages (docs/scaling.md, scaling down)."""
    for slot in slots:
        async with aiomqtt.Client("127.0.0.1", w.broker.port, identifier=f"fault-ingest-{slot}",
                                  clean_session=True, username=w.accounts["ingest"]["username"],
                                  password=w.accounts["ingest"]["password"]):
            pass


async def stop(w: World) -> None:
    for p in w.workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            await asyncio.to_thread(p.wait, 20)


def enrol_zone(w: World, n: int, prefix: str) -> list[str]:
    devices = w.enrol(n, prefix)
    with psycopg.connect(w.pg.url(), autocommit=True) as db:
        j = db.execute("SELECT s.jurisdiction_id FROM devices d JOIN subjects s ON"
                       " s.id = d.subject_id WHERE d.id = %s", (devices[0],)).fetchone()[0]
        circle_zone(db, j, 200)
    return devices


def results(w: World, prefix: str) -> tuple[list, list]:
    with psycopg.connect(w.pg.url()) as db:
        fixes = db.execute("SELECT substr(device_id, length(%s) + 1), seq, outlier FROM fixes"
                           " WHERE device_id LIKE %s || '%%' ORDER BY 1, 2",
                           (prefix, prefix)).fetchall()
        # Not device_offline: the first group falls silent while the second runs.
        alerts = db.execute("SELECT substr(device_id, length(%s) + 1), type, status,"
                            " breach_count, cleared_at IS NOT NULL FROM alerts"
                            " WHERE device_id LIKE %s || '%%' AND type <> 'device_offline'"
                            " ORDER BY 1, 2", (prefix, prefix)).fetchall()
    return fixes, alerts


@pytest.mark.timeout(240)
async def test_three_workers_store_and_alert_the_same_as_one(world: World) -> None:
    w = world
    t0 = time.time() - 600
    for n_workers, prefix in ((1, "one-"), (3, "three-")):
        devices = enrol_zone(w, 12, prefix)
        slots = range(10 * n_workers, 10 * n_workers + n_workers)
        for slot in slots:
            w.start_worker(slot)
        await w.subscribed()
        items = [m for d in devices for m in walk(d, t0)]
        await publish(w, items)
        n_items = len(items)
        await eventually(lambda p=prefix, n=n_items: len(results(w, p)[0]) == n, 60,
                         f"{len(items)} fixes with {n_workers} workers")
        await eventually(lambda p=prefix: len(results(w, p)[1]) >= 12, 60,
                         lambda p=prefix, n=n_workers: f"12 zone entries raised with"
                         f" {n} workers: {results(w, p)[1]}")
        await asyncio.sleep(2)  # anything late (a clear) has time to land
        await stop(w)
        await retire(w, slots)
    one, three = results(w, "one-"), results(w, "three-")
    print(f"\n1 worker: {len(one[0])} fixes, {len(one[1])} alerts; 3 workers: {len(three[0])}"
          f" fixes, {len(three[1])} alerts")
    assert one[0] == three[0]  # every fix, once, with the same outlier verdicts
    # One incident per subject and zone either way (never two, never none), cleared either way.
    # Not compared: the breach count. One subject's fixes reach several workers at once, and a
    # batch committed after a newer one replays its fixes (the late path): a breach they show
    # is counted again on the incident (tests/unit/test_rules_order.py: the clear does not
    # depend on the order).
    assert [(*a[:3], a[4]) for a in one[1]] == [(*a[:3], a[4]) for a in three[1]]
    assert {a[1] for a in one[1]} == {"exclusion_entry"} and len(one[1]) == 12
    assert all(a[3:] == (1, True) for a in one[1])  # one worker: entered once, cleared


@pytest.mark.timeout(400)
async def test_throughput_with_one_two_and_three_workers(world: World) -> None:
    """A preloaded queue drained by k workers (k = 1, 2, 3), each run on fresh sessions."""
    w = world
    devices = w.enrol(200, "tp-")
    n_fixes = 12_000
    rates = {}
    for k in (1, 2, 3):
        slots = range(100 * k, 100 * k + k)
        for slot in slots:  # the sessions first, so the broker keeps each worker's share
            w.start_worker(slot)
        await w.subscribed()
        await stop(w)
        with psycopg.connect(w.pg.url()) as db:
            before = db.execute("SELECT count(*) FROM fixes").fetchone()[0]
        t0 = time.time() - 3600 + k * 600
        items = [(devices[i % len(devices)], json.dumps(
            {"ts": t0 + i / len(devices) * 0.05, "lat": BASE[0], "lon": BASE[1], "acc": 8,
             "seq": i}).encode()) for i in range(n_fixes)]
        await publish(w, items)
        for slot in slots:
            w.start_worker(slot)

        def stored(before: int = before) -> int:
            with psycopg.connect(w.pg.url()) as db:
                return db.execute("SELECT count(*) FROM fixes").fetchone()[0] - before
        # Timed from the first stored batch: process start-up is not ingest throughput.
        await eventually(lambda: stored() > 0, 60, "the first batch")
        started, first = time.perf_counter(), stored()
        await eventually(lambda: stored() >= n_fixes, 180, lambda: f"{stored()} of {n_fixes}")
        rates[k] = (n_fixes - first) / (time.perf_counter() - started)
        await stop(w)
        await retire(w, slots)
    print("\nworkers  fixes/s  per worker  (1 fix per message, rules on, 2-core machine)")
    for k, r in rates.items():
        print(f"{k:7}  {r:7.0f}  {r / k:10.0f}")
    assert all(r > 0 for r in rates.values())
