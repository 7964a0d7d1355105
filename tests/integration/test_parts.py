"""`tether serve` keeps its parts apart: one failing part (here alert delivery raising what once
escaped it, issue 9) is restarted with backoff and named by /healthz, while ingest goes on
storing fixes and the API goes on answering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from tests.integration.conftest import count, eventually
from tests.integration.receivers import free_port
from tether import serve as processes
from tether.supervise import Health


@pytest.mark.timeout(90)
async def test_a_failing_part_leaves_ingest_and_the_api_running(settings, db, register,
                                                                publisher) -> None:
    s = settings.model_copy(update={"http_host": "127.0.0.1", "http_port": free_port(),
                                    "task_restart_max_s": 1.0})
    health = Health()
    parts = processes.parts(s, health, with_ingest=True, with_api=True)
    assert set(parts) == {"api", "alerts-delivery", "ingest"}
    starts = 0

    async def delivery() -> None:  # what escaped delivery before: a receiver's bad URL
        nonlocal starts
        starts += 1
        await asyncio.sleep(0.1)
        raise httpx.InvalidURL("Invalid port: '99999'")

    parts["alerts-delivery"] = delivery
    serving = asyncio.create_task(processes.run_parts(parts, health, s.task_restart_max_s),
                                  name="test-serve")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.http_port}",
                                     timeout=10) as c:
            async def degraded() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    r = await c.get("/healthz")
                    return (r.status_code == 503 and r.json()["failing"] == ["alerts-delivery"]
                            and r.json()["parts"]["alerts-delivery"]["failures"] >= 2)
                return False

            await eventually(degraded, timeout=30, what="/healthz naming the failing part")
            body = (await c.get("/healthz")).json()
            assert body["status"] == "degraded"
            assert body["parts"]["ingest"]["status"] == "running"
            assert body["parts"]["api"]["status"] == "running"
            assert "InvalidURL" in body["parts"]["alerts-delivery"]["last_error"]

            # Ingest still stores what a device sends, while delivery keeps failing.
            (dev,) = register(f"parts-{uuid.uuid4().hex[:8]}")
            fix = {"ts": datetime.now(UTC).isoformat(), "lat": 31.2304, "lon": 121.4737}
            await publisher.publish(f"{s.mqtt_root}/devices/{dev}/loc", json.dumps(fix))
            await eventually(lambda: count(db, "SELECT count(*) FROM fixes WHERE device_id = %s",
                                           dev) == 1, timeout=30, what="the fix stored")
            assert not serving.done() and starts >= 2  # restarted, never given up on
            assert (await c.get("/openapi.json")).status_code == 200
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


@pytest.mark.timeout(60)
async def test_all_parts_running_is_a_200(settings) -> None:
    s = settings.model_copy(update={"http_host": "127.0.0.1", "http_port": free_port()})
    health = Health()
    serving = asyncio.create_task(processes.serve(s, True, True, health=health), name="test-serve")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.http_port}",
                                     timeout=10) as c:
            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await c.get("/healthz")).status_code == 200
                return False

            await eventually(up, timeout=30, what="/healthz answering")
            body = (await c.get("/healthz")).json()
        assert body["status"] == "ok" and body["failing"] == []
        assert {"api", "alerts-delivery", "ingest", "api-alert-hub"} <= set(body["parts"])
        assert all(p["status"] == "running" for p in body["parts"].values())
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
