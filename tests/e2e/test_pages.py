"""The pages in headless Chromium (Debian's, software WebGL), against the real API server,
database, Redis and (for the wired test) the real ingest worker: log in; a published fix moves
the subject's marker; a breach shows on the map page and the officer page within 2 s;
acknowledging on the officer page updates the map page. Screenshots go to tests/e2e/artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from geofence.rules import RuleEvent
from ingest.live import LivePublisher
from ingest.state import DeviceState
from tests.integration.api_world import PASSWORD, seed
from tests.integration.conftest import db, running, settings  # noqa: F401
from tests.integration.test_live_ws import api_server, pos
from tether.config import Settings

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def open_logged_in(browser: Browser, url: str, user: str, width: int = 1280,
                         height: int = 800, context: BrowserContext | None = None) -> Page:
    ctx = context or await browser.new_context(viewport={"width": width, "height": height})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    await page.fill("#login input[name=username]", user)
    await page.fill("#login input[name=password]", PASSWORD)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#login", state="hidden")
    return page


async def marker_at(page: Page, sid: int) -> list[float] | None:
    return await page.evaluate("(sid) => window.tether && window.tether.rendered(sid)", sid)


def breach(conn: psycopg.Connection, sid: int, dev: str) -> int:
    """What the rules do on a breach fix: the alert row and its notification, one commit."""
    with conn.transaction():
        aid = conn.execute("INSERT INTO alerts (type, severity, subject_id, device_id, position)"
                         " VALUES ('exclusion_entry', 'critical', %s, %s, %s) RETURNING id",
                         (sid, dev, json.dumps({"lat": 31.2, "lon": 121.4, "ts": time.time(),
                                                "acc": 5}))).fetchone()[0]
        conn.execute("SELECT tether_notify(%s, 'opened', false)", (aid,))
    return aid


@pytest.mark.timeout(120)
async def test_map_and_officer_pages_live(browser: Browser, settings: Settings, db) -> None:  # noqa: F811
    world = seed(db)
    sid, dev = world["subj_countyA"], world["dev_countyA"]
    user = lambda n: f"{n}-{world['tag']}"  # noqa: E731
    # the seeded alerts are older history: resolve them so the feed starts empty
    db.execute("UPDATE alerts SET status = 'resolved' WHERE subject_id = ANY(%s)",
               ([world[f"subj_{w}"] for w in ("city", "countyA", "countyB")],))
    state = DeviceState(settings.redis_url, settings.redis_prefix)
    pub = LivePublisher(state)
    async with api_server(settings) as (base, _):
        cmd = await open_logged_in(browser, f"{base}/", user("cmdCity"))
        await cmd.wait_for_function("() => window.tether && window.tether.subjects.size >= 3")
        await cmd.evaluate("(sid) => window.tether.select(sid)", sid)
        await cmd.wait_for_function("(sid) => window.tether.rendered(sid)", arg=sid)
        before = await marker_at(cmd, sid)
        # a fix published moves the marker
        await pub.publish([pos(sid, dev, lat=31.2015, lon=121.4012)])
        await cmd.wait_for_function("(sid) => { const p = window.tether.rendered(sid);"
                                    " return p && Math.abs(p[1] - 31.2015) < 1e-5; }", arg=sid,
                                    timeout=5000)
        assert await marker_at(cmd, sid) != before
        await shot(cmd, "map-moved")

        phone = await open_logged_in(browser, f"{base}/officer", user("offA"), 360, 740)
        await phone.wait_for_function("() => window.tether && window.tether.state")
        await phone.wait_for_selector("#no-alerts:not([hidden])")
        await asyncio.sleep(0.5)  # both sockets open
        # judged while the database is away: shown at once, not actionable, until stored
        await pub.publish_alerts([RuleEvent("open", "exclusion_entry", sid, datetime.now(UTC),
                                            device_id=dev)])
        await cmd.wait_for_selector("li.alert.provisional", timeout=2000)
        assert await cmd.evaluate("() => document.querySelector('li.provisional .ack').disabled")
        started = time.monotonic()
        aid = breach(db, sid, dev)
        sel = f"li[data-alert-id='{aid}']"
        await asyncio.gather(cmd.wait_for_selector(sel, timeout=2000),
                             phone.wait_for_selector(sel, timeout=2000))
        shown_s = time.monotonic() - started
        # the stored alert replaces the provisional one
        await cmd.wait_for_selector("li.alert.provisional", state="detached", timeout=2000)
        assert shown_s < 2.0
        assert await cmd.evaluate("(sid) => window.tether.subjects.get(sid).st", sid) == "alarm"
        await shot(cmd, "map-alert")
        await shot(phone, "officer-alert")
        # the phone page fits 360 px: no sideways scrolling
        assert await phone.evaluate("() => document.documentElement.scrollWidth <= 360")

        await phone.fill(f"{sel} .note", "called the subject; on the way home")
        await phone.click(f"{sel} .ack")
        await cmd.wait_for_selector(f"{sel}.st-acknowledged", timeout=3000)
        assert await cmd.evaluate("(sid) => window.tether.subjects.get(sid).st", sid) == "ack"
        assert await cmd.evaluate("() => +document.getElementById('n-unacked').textContent") == 0
        await shot(cmd, "map-acknowledged")
        # resolve needs a note; afterwards the alert leaves both pages
        await phone.fill(f"{sel} .note", "resolved: zone entry was a visit to court")
        await phone.click(f"{sel} .resolve")
        await cmd.wait_for_selector(sel, state="detached", timeout=3000)
        await phone.wait_for_selector(sel, state="detached", timeout=3000)
        assert cmd.errors == [] and phone.errors == []  # type: ignore[attr-defined]
        print(f"breach shown on both pages after {shown_s * 1000:.0f} ms")
    await state.close()


@pytest.mark.timeout(120)
async def test_officer_installable_and_playback(browser: Browser, settings: Settings,  # noqa: F811
                                                db) -> None:  # noqa: F811
    world = seed(db)
    sid = world["subj_countyA"]
    db.execute("UPDATE alerts SET opened_at = '2026-05-01T12:05:00Z' WHERE id = %s",
               (world["alert_countyA"],))  # inside the fixes' hour, on the timeline
    async with api_server(settings) as (base, _):
        phone = await open_logged_in(browser, f"{base}/officer", f"offA-{world['tag']}", 360, 740)
        manifest = await phone.evaluate(
            "async () => (await fetch(document.querySelector('link[rel=manifest]').href)).json()")
        assert manifest["start_url"] == "/officer" and manifest["display"] == "standalone"
        await phone.wait_for_function(
            "async () => !!(await navigator.serviceWorker.getRegistration('/'))", timeout=10000)
        page = await open_logged_in(browser, f"{base}/playback?subject={sid}",
                                    f"offA-{world['tag']}")
        await page.wait_for_function("() => window.tether && window.tether.loaded >= 1")
        await page.fill("#from", "2026-05-01T00:00")
        await page.fill("#to", "2026-05-02T00:00")
        await page.click("#range button[type=submit]")
        await page.wait_for_function("() => window.tether.loaded >= 2 && "
                                     "window.tether.state.fixes.length === 10")
        assert len(await page.query_selector_all("#marks .mark")) == 1  # the seeded SOS alert
        await page.click("#play")
        await page.select_option("#speed", "1800")
        await page.wait_for_function("() => window.tether.state.i >= 2", timeout=10000)
        async with page.expect_download() as dl:
            await page.click("#csv")
        text = await asyncio.to_thread(Path(await (await dl.value).path()).read_text)
        assert text.splitlines()[0].startswith("device_id,fix_time,lat,lon")
        assert len(text.splitlines()) == 11
        await shot(page, "playback")
        assert page.errors == [] and phone.errors == []  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
async def test_real_ingest_moves_the_marker_and_a_breach_fix_alerts_both_pages(
        browser: Browser, settings: Settings, db) -> None:  # noqa: F811
    """Wired end to end: MQTT fix -> ingest worker -> Redis -> API -> the map page; then a fix
    inside the seeded exclusion zone -> the rules -> an alert on the map and the phone < 2 s."""
    from ingest.mqtt import Broker, MqttPublisher
    world = seed(db)
    sid, dev = world["subj_countyA"], world["dev_countyA"]
    db.execute("UPDATE alerts SET status = 'resolved' WHERE subject_id = ANY(%s)",
               ([world[f"subj_{w}"] for w in ("city", "countyA", "countyB")],))
    zone = (31.2058, 121.4031)  # 100 m around it: the subject's own exclusion zone
    db.execute("INSERT INTO zones (name, kind, geometry, radius_m, jurisdiction_id, subject_id,"
               " created_at) VALUES ('victim home', 'exclusion', %s, 100, %s, %s,"
               " now() - interval '1 hour')",
               (json.dumps({"type": "Point", "coordinates": [zone[1], zone[0]]}),
                world["countyA"], sid))
    async with api_server(settings) as (base, _), running(settings) as worker, \
            MqttPublisher(Broker.from_url(settings.mqtt_url)) as mqtt:
        await worker.rules.loaded.wait()
        cmd = await open_logged_in(browser, f"{base}/", f"cmdCity-{world['tag']}")
        await cmd.wait_for_function("() => window.tether && window.tether.subjects.size >= 3")
        await cmd.evaluate("(sid) => window.tether.select(sid)", sid)
        # a minute ago, 300 m south of the exclusion zone made above
        await mqtt.publish(f"{settings.mqtt_root}/devices/{dev}/loc", json.dumps(
            {"ts": time.time() - 60, "lat": 31.2031, "lon": 121.4031, "acc": 6}))
        await cmd.wait_for_function("(sid) => { const p = window.tether.rendered(sid);"
                                    " return p && Math.abs(p[1] - 31.2031) < 1e-5; }", arg=sid,
                                    timeout=5000)
        await shot(cmd, "map-moved-by-ingest")

        phone = await open_logged_in(browser, f"{base}/officer", f"offA-{world['tag']}", 360, 740)
        await phone.wait_for_function("() => window.tether && window.tether.state")
        await phone.wait_for_selector("#no-alerts:not([hidden])")
        await asyncio.sleep(0.5)  # both sockets open
        started = time.monotonic()
        # Walked in: a 5 m fix at the zone's centre is a confident breach on the first fix.
        await mqtt.publish(f"{settings.mqtt_root}/devices/{dev}/loc", json.dumps(
            {"ts": time.time(), "lat": zone[0], "lon": zone[1], "acc": 5}))
        sel = "li[data-alert-id]"
        await asyncio.gather(cmd.wait_for_selector(sel, timeout=2000),
                             phone.wait_for_selector(sel, timeout=2000))
        shown_s = time.monotonic() - started
        aid = int(await phone.get_attribute(sel, "data-alert-id"))
        assert db.execute("SELECT type, subject_id FROM alerts WHERE id = %s",
                          (aid,)).fetchone() == ("exclusion_entry", sid)
        assert shown_s < 2.0
        await shot(cmd, "map-alert-from-ingest")
        await shot(phone, "officer-alert-from-ingest")
        print(f"breach fix published -> alert on both pages after {shown_s * 1000:.0f} ms")
