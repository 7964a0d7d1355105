"""The fault suite's API case (issue 14): an API process dies and comes back; the command-center
map and the officer's phone page reconnect by themselves (backoff, capped at 10 s), and what
happened meanwhile reaches them: a breach raised after the restart shows on both pages, and a
position moves the marker. The API is a real `tether api` process, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from playwright.async_api import Browser, Page

from ingest.live import LivePublisher
from ingest.state import DeviceState
from tests.e2e.test_pages import breach, browser, open_logged_in, shot  # noqa: F401
from tests.integration.api_world import seed
from tests.integration.conftest import db, settings  # noqa: F401
from tests.integration.receivers import free_port
from tests.integration.test_live_ws import pos
from tether.config import Settings

pytestmark = pytest.mark.slow


def start_api(s: Settings, port: int, log_path: str) -> subprocess.Popen:
    env = {**os.environ, "TETHER_DATABASE_URL": s.database_url, "TETHER_REDIS_URL": s.redis_url,
           "TETHER_REDIS_PREFIX": s.redis_prefix, "TETHER_MQTT_URL": s.mqtt_url,
           "TETHER_HTTP_HOST": "127.0.0.1", "TETHER_HTTP_PORT": str(port),
           "TETHER_LOG_LEVEL": "WARNING"}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-c", "import sys; from tether.cli import main;"
                                 " sys.exit(main())", "api"], env=env, stdout=subprocess.DEVNULL,
                                stderr=log)


async def healthy(base: str, proc: subprocess.Popen, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(base_url=base, timeout=2) as c:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the API process exited with {proc.returncode}"
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the API never became healthy")


async def conn_state(page: Page, state: str, timeout_ms: float) -> None:
    await page.wait_for_selector(f"#conn.{state}", timeout=timeout_ms)


@pytest.mark.timeout(150)
async def test_pages_reconnect_after_the_api_process_dies(browser: Browser, settings: Settings,  # noqa: F811
                                                          db, tmp_path) -> None:  # noqa: F811
    world = seed(db)
    sid, dev = world["subj_countyA"], world["dev_countyA"]
    user = lambda n: f"{n}-{world['tag']}"  # noqa: E731
    db.execute("UPDATE alerts SET status = 'resolved' WHERE subject_id = ANY(%s)",
               ([world[f"subj_{w}"] for w in ("city", "countyA", "countyB")],))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = str(tmp_path / "api.log")
    api = start_api(settings, port, log)
    state = DeviceState(settings.redis_url, settings.redis_prefix)
    try:
        await healthy(base, api)
        cmd = await open_logged_in(browser, f"{base}/", user("cmdCity"))
        phone = await open_logged_in(browser, f"{base}/officer", user("offA"), 360, 740)
        await asyncio.gather(conn_state(cmd, "ok", 10_000), conn_state(phone, "ok", 10_000))

        api.send_signal(signal.SIGKILL)  # a crash: no goodbye to the sockets
        await asyncio.to_thread(api.wait, 10)
        await asyncio.gather(conn_state(cmd, "down", 10_000), conn_state(phone, "down", 10_000))
        await asyncio.sleep(3)  # away long enough for the pages' backoff to grow
        await shot(cmd, "api-restart-map-down")

        api = start_api(settings, port, log)
        await healthy(base, api)
        back = time.monotonic()
        await asyncio.gather(conn_state(cmd, "ok", 15_000), conn_state(phone, "ok", 15_000))
        reconnect_s = time.monotonic() - back

        # What happens after the restart reaches both pages through the new process.
        await asyncio.sleep(0.5)
        aid = breach(db, sid, dev)
        sel = f"li[data-alert-id='{aid}']"
        await asyncio.gather(cmd.wait_for_selector(sel, timeout=5000),
                             phone.wait_for_selector(sel, timeout=5000))
        await cmd.evaluate("(sid) => window.tether.select(sid)", sid)
        await LivePublisher(state).publish([pos(sid, dev, lat=31.2031, lon=121.4031)])
        await cmd.wait_for_function("(sid) => { const p = window.tether.rendered(sid);"
                                    " return p && Math.abs(p[1] - 31.2031) < 1e-5; }", arg=sid,
                                    timeout=5000)
        await shot(cmd, "api-restart-map-back")
        await shot(phone, "api-restart-officer-back")
        print(f"\n[API SIGKILLed, restarted] both pages reconnected {reconnect_s:.1f} s after"
              " the new process was healthy; the breach and the position after it arrived")
        assert not cmd.errors and not phone.errors  # type: ignore[attr-defined]
    finally:
        if api.poll() is None:
            api.terminate()
            try:
                await asyncio.to_thread(api.wait, 15)
            except subprocess.TimeoutExpired:
                api.kill()
        await state.close()
