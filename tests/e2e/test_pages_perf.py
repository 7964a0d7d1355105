"""The command-center map with 10,000 subjects each moving once a second, in headless Chromium
with software WebGL: time from a delta's arrival to the frame that shows it, and the longest
main-thread task (a `longtask` observer). `page.route_web_socket` plays the server's `/ws/live`
(the snapshot, then a `positions` batch every 250 ms carrying a quarter of the fleet, as the
hub's flush sends them); everything else (page, MapLibre, login) is the real API server.
The numbers are printed and written to tests/e2e/artifacts/perf.json (docs/live.md has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import statistics
from datetime import UTC, datetime

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, WebSocketRoute

from api import pages
from tests.e2e.test_pages import ARTIFACTS, browser, shot  # noqa: F401
from tests.integration.conftest import eventually
from tests.integration.receivers import free_port
from tether.config import Settings

N = 10_000
FLUSH_S = 0.25
RUN_S = 12.0
CENTER = (121.47, 31.23)
LONGTASKS = """window.__longtasks = [];
new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__longtasks.push(e.duration)))
  .observe({ type: 'longtask', buffered: true });"""


def _snapshot(pos: list[list[float]]) -> str:
    now = datetime.now(UTC).isoformat()
    return json.dumps({"type": "snapshot", "zones": [], "alerts": [], "silent_after_s": 900,
                       "subjects": [{"id": i + 1, "name": f"subject {i + 1}",
                                     "devices": [{"id": f"dev-{i + 1}", "kind": "wearable"}],
                                     "last_position": {"device_id": f"dev-{i + 1}",
                                                       "lon": p[0], "lat": p[1], "ts": now,
                                                       "acc": 8}} for i, p in enumerate(pos)]})


async def _feed(ws: WebSocketRoute, pos: list[list[float]], stats: dict) -> None:
    ws.send(_snapshot(pos))
    seq, part, per = 0, 0, N // int(1 / FLUSH_S)
    while True:  # until the measurement ends (cancelled)
        await asyncio.sleep(FLUSH_S)
        seq += 1
        now = datetime.now(UTC).isoformat()
        items = []
        for i in range(part * per, (part + 1) * per):  # each subject once a second
            p = pos[i]
            p[0] += random.uniform(-2e-4, 2e-4)
            p[1] += random.uniform(-2e-4, 2e-4)
            items.append({"subject_id": i + 1, "device_id": f"dev-{i + 1}", "lon": p[0],
                          "lat": p[1], "ts": now, "acc": 8})
        part = (part + 1) % int(1 / FLUSH_S)
        ws.send(json.dumps({"type": "positions", "seq": seq, "items": items}))
        stats["sent"] = seq


async def _measure(browser: Browser, base: str, zoom: float) -> dict:  # noqa: F811
    rnd = random.Random(7)
    pos = [[CENTER[0] + rnd.uniform(-0.15, 0.15), CENTER[1] + rnd.uniform(-0.12, 0.12)]
           for _ in range(N)]
    stats: dict = {"sent": 0}
    tasks: set[asyncio.Task] = set()

    def handler(ws: WebSocketRoute) -> None:
        t = asyncio.get_running_loop().create_task(_feed(ws, pos, stats), name="perf-feed")
        tasks.add(t)

    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    await ctx.add_init_script(LONGTASKS)
    await ctx.add_init_script("sessionStorage.setItem('tether.token', 'played-by-the-test')")
    await ctx.route_web_socket(re.compile(r"/ws/live(\?|$)"), handler)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{base}/")
    await page.wait_for_function(f"() => window.tether && window.tether.subjects.size === {N}",
                                 timeout=30000)
    await page.evaluate(f"() => window.tether.map.jumpTo({{center: {list(CENTER)},"
                        f" zoom: {zoom}}})")
    await asyncio.sleep(2)  # settle after the jump
    await page.evaluate("() => { window.__longtasks.length = 0;"
                        " window.tether.state.renderMs.length = 0; }")
    sent_before = stats["sent"]
    await asyncio.sleep(RUN_S)
    sent_by_then = stats["sent"]
    r = await page.evaluate("() => ({render: window.tether.state.renderMs.slice(),"
                            " apply: window.tether.state.applyMs.slice(-40),"
                            " longtasks: window.__longtasks.slice(),"
                            " applied: window.tether.applied,"
                            " drawn: window.tether.renderedCount()})")
    assert errors == []
    await shot(page, f"perf-zoom{zoom:g}")
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await ctx.close()
    render = sorted(r["render"])
    return {"zoom": zoom, "subjects": N, "deltas_sent": stats["sent"],
            "deltas_measured": sent_by_then - sent_before, "sent_by_then": sent_by_then,
            "applied": r["applied"],
            "drawn_features": r["drawn"], "render_samples": len(render),
            "arrival_to_render_ms_p50": round(statistics.median(render)) if render else None,
            "arrival_to_render_ms_p95": round(render[int(0.95 * (len(render) - 1))])
            if render else None,
            "apply_ms_p50": round(statistics.median(r["apply"]), 1) if r["apply"] else None,
            "longest_task_ms": round(max(r["longtasks"], default=0)),
            "long_tasks": len(r["longtasks"])}


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ten_thousand_subjects_moving_once_a_second(browser: Browser) -> None:  # noqa: F811
    app = FastAPI()
    pages.install(app, Settings())  # the pages alone: the test plays the server's socket
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(srv.serve(), name="perf-pages")
    results = []
    try:
        await eventually(lambda: srv.started, 10, "page server up")
        for zoom in (13, 10):  # single subjects, unclustered; then the fleet in clusters
            results.append(await _measure(browser, f"http://127.0.0.1:{port}", zoom))
    finally:
        srv.should_exit = True
        await task
    ARTIFACTS.mkdir(exist_ok=True)
    await asyncio.to_thread((ARTIFACTS / "perf.json").write_text, json.dumps(results, indent=2))
    for r in results:
        print(json.dumps(r))
        # deltas kept reaching the screen
        assert r["render_samples"] >= 0.5 * r["deltas_measured"], r
        assert r["applied"] >= r["sent_by_then"] - 8, r  # the page keeps up: no growing backlog
