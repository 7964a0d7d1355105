"""Process wiring: which parts one process runs (ingest, the API, alert delivery, a fleet),
each supervised so that one failing never stops the others."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import socket
import sys
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
INGEST_DRAIN_S = 10.0  # on shutdown, the batches taken get this long to be committed
ACK_FLUSH_S = 0.2  # ... and their acknowledgements this long to be written
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections in an ingest process


def parts(s: Settings, health: Health, with_ingest: bool, with_api: bool,
          fleet: tuple[list, float, str] | None = None, workers: int = 1) -> dict[str, Part]:
    """What one process runs, by name. Each part builds its resources afresh when it starts,
    so a restart after a failure begins clean. `workers` > 1: that many ingest processes, each
    a child of this one (a worker per core; Python holds one core per process)."""
    found: dict[str, Part] = {}
    if with_api:
        found["api"] = functools.partial(_api, s, health)
        found["alerts-delivery"] = functools.partial(_delivery, s)
    if with_ingest and workers > 1:
        for slot in range(workers):
            found[f"ingest-worker-{slot}"] = functools.partial(_child_worker, s, slot)
    elif with_ingest:
        found["ingest"] = functools.partial(_ingest, s, health)
    if fleet:
        from simulators.fleet import run_fleet
        devices, interval, fleet_url = fleet  # the fleet logs in as the setup's `dev` account
        found["fleet"] = functools.partial(run_fleet, fleet_url, s.mqtt_root, devices, interval)
    return found


async def run_parts(named: dict[str, Part], health: Health, max_backoff_s: float) -> None:
    """Every part supervised: a part failing is logged, counted and restarted with backoff
    while the others go on; only a cancellation (shutdown) ends them all."""
    async with asyncio.TaskGroup() as tg:
        for name, run in named.items():
            tg.create_task(supervised(name, run, health, max_backoff_s), name=name)


async def serve(s: Settings, with_ingest: bool, with_api: bool,
                 fleet: tuple[list, float, str] | None = None, health: Health | None = None,
                 workers: int = 1) -> None:
    """Until cancelled, or until SIGTERM/SIGINT: both cancel every part, so each closes what
    it holds (the ingest worker's unacknowledged messages stay with the broker and come back
    to the next worker: a stop never loses a fix)."""
    health = health if health is not None else Health()
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    stoppable = me is not None and _main_thread()
    if stoppable:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, me.cancel)
    try:
        await run_parts(parts(s, health, with_ingest, with_api, fleet, workers), health,
                        s.task_restart_max_s)
    except asyncio.CancelledError:
        log.info("stopped")
    finally:
        if stoppable:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def ingest_identity(s: Settings, slot: int = 0) -> Settings:
    """What an ingest worker logs in as, found at its start (blocking: run in a thread).

    - The broker login: a URL without a user gets the setup's service account, if the
      database records one (contract section 4); a URL with a user is used as given.
    - The client id: TETHER_MQTT_CLIENT_ID if set; else one per host, database and worker slot,
      `tether-{host}-{database id}-w{slot}`. Stable across restarts on purpose: the broker keeps
      the worker's persistent session (its queued and unacknowledged messages) under that id,
      and a restarted worker takes it back; a random id would strand them (docs/scaling.md).
      The database id keeps two deployments sharing a broker from taking each other's session.
    """
    from api.store.credentials import service_url
    from ingest.store.admin import database_identity

    update: dict[str, object] = {"mqtt_url": service_url(s.database_url, s.mqtt_url)}
    if "mqtt_client_id" not in s.model_fields_set:
        host = socket.gethostname().split(".")[0][:24] or "host"
        update["mqtt_client_id"] = f"tether-{host}-{database_identity(s.database_url)[:8]}" \
                                   f"-w{slot}"
    return s.model_copy(update=update)


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


async def _ingest(s: Settings, health: Health, slot: int = 0) -> None:
    from ingest import metrics
    from ingest.runner import ingest_worker
    metrics.watch_gc()
    # Young collections: at the default threshold (700 allocations) a worker holding 4,500
    # fixes/s collected 160 times a second, re-scanning batches still in flight and promoting
    # them; collections took 7 % of its CPU (tether_gc_pause_seconds, docs/bench.md).
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    # Found afresh on each start: a database down now fails the part, which retries.
    s = await asyncio.to_thread(ingest_identity, s, slot)
    logs.still_running()
    log.info("ingest identity", client_id=s.mqtt_client_id)
    async with _binding(s) as (binding, load_rows):
        await binding.ensure(load_rows)  # judge nothing against another database's state
        # redis-py and psycopg can swallow a cancellation that arrives with their answer
        # (Python 3.11's wait_for): a stop during start-up must not let the worker run on.
        logs.still_running()
        # Rule state stays this database's, and is rebuilt from PostgreSQL when lost.
        guard = asyncio.create_task(binding.run(load_rows, STATE_CHECK_S),
                                    name="ingest-state-guard")
        try:
            # The worker supervises its own parts (writer, timers, ...) and reports them in
            # `health`.
            async with ingest_worker(s, health) as worker:
                running = asyncio.create_task(worker.run(), name="ingest-worker")
                try:
                    await asyncio.shield(running)
                except asyncio.CancelledError:
                    # A stop (SIGTERM): commit and acknowledge what was taken, then close.
                    with contextlib.suppress(Exception):
                        await worker.drain(INGEST_DRAIN_S)
                        await asyncio.sleep(ACK_FLUSH_S)  # the acks reach the socket
                    raise
                finally:
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await running
        finally:
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard


STATE_CHECK_S = 5.0  # a Redis flushed under running workers is rebuilt within this


@contextlib.asynccontextmanager
async def _binding(s: Settings):
    from ingest.state import DeviceState, StateBinding, SubjectStates
    from ingest.store.admin import database_identity, last_heard

    identity = await asyncio.to_thread(database_identity, s.database_url)
    state = DeviceState(s.redis_url, s.redis_prefix)
    try:
        yield (StateBinding(SubjectStates(state), identity),
               functools.partial(asyncio.to_thread, last_heard, s.database_url))
    finally:
        await state.close()


CHILD_STOP_S = 15.0  # a child worker's graceful stop: its batch committed and acked, or left


async def _child_worker(s: Settings, slot: int) -> None:
    """One ingest worker as a child process (`tether ingest`), restarted by the supervisor
    when it exits; cancelled: SIGTERM, then SIGKILL after CHILD_STOP_S."""
    env = dict(os.environ)
    if "mqtt_client_id" in s.model_fields_set:
        env["TETHER_MQTT_CLIENT_ID"] = f"{s.mqtt_client_id}-w{slot}"
    else:
        env["TETHER_MQTT_CLIENT_ID"] = (await asyncio.to_thread(ingest_identity, s, slot)
                                        ).mqtt_client_id
    for name in ("database_url", "redis_url", "mqtt_url", "redis_prefix"):
        env[f"TETHER_{name.upper()}"] = str(getattr(s, name))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from tether.cli import main; sys.exit(main())",
        "ingest", env=env)
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), CHILD_STOP_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        raise
    raise RuntimeError(f"ingest worker {slot} exited with {code}")


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
