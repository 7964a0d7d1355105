"""Process wiring: which parts one process runs (ingest, the API, alert delivery, a fleet),
each supervised so that one failing never stops the others."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tether import logs
from tether.config import Settings
from tether.supervise import Health, supervised

if TYPE_CHECKING:
    import uvicorn

log = logs.get("tether")


Part = Callable[[], Awaitable[None]]
API_STOP_S = 5.0  # on shutdown, open requests and sockets get this long to finish


def parts(s: Settings, health: Health, with_ingest: bool, with_api: bool,
          fleet: tuple[list, float] | None = None) -> dict[str, Part]:
    """What one process runs, by name. Each part builds its resources afresh when it starts,
    so a restart after a failure begins clean."""
    found: dict[str, Part] = {}
    if with_api:
        found["api"] = functools.partial(_api, s, health)
        found["alerts-delivery"] = functools.partial(_delivery, s)
    if with_ingest:
        found["ingest"] = functools.partial(_ingest, s, health)
    if fleet:
        from simulators.fleet import run_fleet
        devices, interval = fleet
        found["fleet"] = functools.partial(run_fleet, s.mqtt_url, s.mqtt_root,
                                           devices, interval)
    return found


async def run_parts(named: dict[str, Part], health: Health, max_backoff_s: float) -> None:
    """Every part supervised: a part failing is logged, counted and restarted with backoff
    while the others go on; only a cancellation (shutdown) ends them all."""
    async with asyncio.TaskGroup() as tg:
        for name, run in named.items():
            tg.create_task(supervised(name, run, health, max_backoff_s), name=name)


async def serve(s: Settings, with_ingest: bool, with_api: bool,
                 fleet: tuple[list, float] | None = None, health: Health | None = None) -> None:
    health = health if health is not None else Health()
    await run_parts(parts(s, health, with_ingest, with_api, fleet), health,
                    s.task_restart_max_s)


async def _api(s: Settings, health: Health) -> None:
    import uvicorn

    from api.app import create_app
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 before
    # the app sees the peer; the app decides, from `trusted_proxies` (api/deps.py `caller`).
    server = uvicorn.Server(uvicorn.Config(create_app(s, health=health), host=s.http_host,
                                           port=s.http_port, log_level="warning",
                                           proxy_headers=False))
    log.info("api listening", url=f"http://{s.http_host}:{s.http_port}")
    serving = asyncio.ensure_future(_http(server))
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        # Shutdown: let uvicorn stop as on a signal, so its lifespan closes the pool cleanly.
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(serving, API_STOP_S)
        raise
    if not server.should_exit:
        raise RuntimeError("the API server stopped by itself")


async def _http(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as e:  # uvicorn exits the process when it cannot start: a failure here
        raise RuntimeError(f"the API server could not start (exit {e.code}): port in use?") \
            from e


async def _delivery(s: Settings) -> None:
    async with notifications(s) as deliverer:
        await deliverer.run()


async def _ingest(s: Settings, health: Health) -> None:
    from ingest.runner import ingest_worker
    # The worker supervises its own parts (writer, timers, ...) and reports them in `health`.
    async with ingest_worker(s, health) as worker:
        await worker.run()


@contextlib.asynccontextmanager
async def notifications(s: Settings):
    from alerts.deliver import Deliverer
    from alerts.store import OutboxStore

    store = OutboxStore(s.database_url)
    await store.open()
    deliverer = Deliverer(store, s)  # s holds the alerts' section of the settings
    try:
        yield deliverer
    finally:
        await deliverer.close()
        await store.close()
