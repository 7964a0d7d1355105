"""Keeps a process's parts running apart: one part failing never stops the others.

A part (ingest, the API, timers, alert delivery, ...) runs as `supervised(...)` inside the
process's TaskGroup. An exception from a part is logged, counted and the part restarted with
backoff; only a cancellation (shutdown) ends it. `Health` records each part's state for
`/healthz`, so an operator sees which part is unhealthy while the rest keeps monitoring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from tether import logs

log = logs.get("supervise")
restarts = Counter("tether_part_restarts_total", "parts restarted after a failure", ["part"])


@dataclass(slots=True)
class PartState:
    status: str = "starting"  # starting | running | failed
    failures: int = 0
    last_error: str | None = None
    since: float = field(default_factory=time.monotonic)


class Health:
    """Each part's state, shared by the supervisor and `/healthz` (one process, one event loop)."""

    def __init__(self) -> None:
        self.parts: dict[str, PartState] = {}

    def set(self, part: str, status: str, error: str | None = None) -> None:
        p = self.parts.setdefault(part, PartState())
        if status == "failed":
            p.failures += 1
            p.last_error = error
        p.status, p.since = status, time.monotonic()

    @property
    def healthy(self) -> bool:
        return all(p.status != "failed" for p in self.parts.values())

    def report(self) -> dict[str, dict[str, object]]:
        return {name: {"status": p.status, "failures": p.failures, "last_error": p.last_error}
                for name, p in sorted(self.parts.items())}


async def supervised(part: str, run: Callable[[], Awaitable[None]], health: Health,
                     max_backoff_s: float = 30.0, healthy_after_s: float = 60.0) -> None:
    """Run `run()` until cancelled; restart it with backoff whenever it fails or returns.

    The backoff resets after the part has run `healthy_after_s` without failing, so a part that
    fails once a day restarts at once, while one failing in a loop does not spin.
    """
    backoff = 0.5
    while True:
        started = time.monotonic()
        health.set(part, "running")
        try:
            await run()
            logs.still_running()  # a library may have swallowed our cancellation: end, not loop
            error = "returned"  # a part runs until cancelled; returning is a fault too
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the point of a supervisor: any fault of a part is contained
            logs.still_running()
            error = f"{type(e).__name__}: {e}"
            log.exception("part failed; restarting", part=part, retry_s=backoff)
        health.set(part, "failed", error)
        restarts.labels(part).inc()
        if time.monotonic() - started > healthy_after_s:
            backoff = 0.5
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
