"""One retry helper: exponential backoff for loops that wait out an unavailable dependency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tether import logs

T = TypeVar("T")


class Backoff:
    """Delays of `first`, doubling up to `cap`; `reset()` after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def reset(self) -> None:
        self.delay = self.first

    def grow(self) -> float:
        """The delay to wait now (the caller waits it its own way); the next one doubles."""
        waited = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return waited

    async def wait(self) -> float:
        logs.still_running()  # never sleep on a cancellation a library swallowed
        waited = self.grow()
        await asyncio.sleep(waited)
        return waited


async def retrying(op: Callable[[], Awaitable[T]], retry_on: tuple[type[BaseException], ...],
                   log: Any, what: str, first: float = 0.1, cap: float = 5.0,
                   on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Run `op` until it succeeds; an error of `retry_on` is logged and retried with backoff.
    Any other error propagates. A cancellation is never swallowed (`logs.still_running`)."""
    backoff = Backoff(first, cap)
    while True:
        try:
            return await op()
        except retry_on as e:
            logs.still_running()
            if on_retry is not None:
                on_retry(e)
            log.warning("dependency unavailable; retrying", op=what, error=str(e),
                        retry_s=backoff.delay)
            await backoff.wait()


async def every(interval_s: float, op: Callable[[], Awaitable[object]],
                retry_on: tuple[type[BaseException], ...], log: Any, what: str) -> None:
    """Run `op` every `interval_s` forever; a failure of `retry_on` is logged and skipped."""
    while True:
        logs.still_running()  # a cancellation a library swallowed ends the loop here
        try:
            await op()
        except retry_on as e:
            logs.still_running()
            log.warning("periodic task failed; next run as usual", op=what, error=str(e))
        # A cancellation swallowed inside `op` (Python 3.11's wait_for in psycopg_pool) would
        # otherwise leave this task asleep for the whole interval, and a TaskGroup stopping the
        # process waiting for it (seen: `tether serve` hanging on cancel, retention asleep).
        logs.still_running()
        await asyncio.sleep(interval_s)
