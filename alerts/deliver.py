"""The delivery worker: sends what the outbox holds, retries with backoff, escalates.

Several processes may run it: claims take rows with SKIP LOCKED and a lease. A delivery is
retried with the same Idempotency-Key, so a receiver can drop a repeat after a crash
mid-send; in normal operation each notification is sent until one attempt succeeds, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import structlog
from prometheus_client import Counter, Histogram

from alerts import formats
from alerts.channels import Context, DeliveryError, Registry, registry
from alerts.settings import AlertSettings
from alerts.store import OutboxStore, Unavailable

log = structlog.get_logger("alerts")  # configured by the command that starts the process
deliveries = Counter("tether_deliveries_total", "notification delivery attempts",
                     ["channel", "outcome"])
delivery_seconds = Histogram("tether_delivery_seconds", "time to deliver one notification",
                             ["channel"])
escalations = Counter("tether_alerts_escalated_total", "critical alerts escalated")
loop_errors = Counter("tether_delivery_loop_errors_total", "delivery loop steps that failed",
                      ["loop", "kind"])
record_errors = Counter("tether_delivery_record_errors_total",
                        "attempts that could not be recorded (due again after the lease)")


# Recording an attempt gets its own bound, so "in flight" has an end the lease can outlast.
RECORD_TIMEOUT_S = 15.0
LEASE_MARGIN_S = 5.0
ERROR_TEXT_CHARS = 500
LOOP_BACKOFF_MAX_S = 30.0

__all__ = ["Deliverer", "DeliveryError"]


class Deliverer:
    """Claims due notifications and sends each in a task of its own: at most `concurrency` at
    once, at most `per_receiver` per user, each under an overall deadline. Any exception of an
    attempt is that attempt's failure (recorded, retried with backoff), so no receiver, URL or
    payload can stop delivery or hold up another officer's notification."""

    def __init__(self, store: OutboxStore, settings: AlertSettings,
                 channels: Registry = registry) -> None:
        self.store, self.s, self.channels = store, settings, channels
        # A claim's lease must outlast the attempt and its recording, or a second worker (or
        # this one) could hand out a notification still in flight.
        self.lease = timedelta(seconds=max(settings.delivery_lease_s, settings.delivery_timeout_s
                                           + RECORD_TIMEOUT_S + LEASE_MARGIN_S))
        # The overall deadline (`_attempt`) is what ends an attempt; httpx's own per-operation
        # timeouts, a little longer, only back it up.
        self.http = httpx.AsyncClient(
            timeout=settings.delivery_timeout_s + 1.0, follow_redirects=False,
            limits=httpx.Limits(max_connections=settings.delivery_concurrency,
                                max_keepalive_connections=settings.delivery_concurrency))
        self._in_flight: dict[int, int] = {}  # user id -> attempts under way
        self._attempts: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()  # an attempt ended: there may be room to claim again

    async def close(self) -> None:
        await self.http.aclose()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._loop("deliver", self.deliver_once, self.s.delivery_poll_s,
                                          self._rest), name="alerts-deliver")
                tg.create_task(self._loop("escalate", self.escalate_once, 1.0),
                               name="alerts-escalate")
                tg.create_task(self._loop("prune", self.prune_once, 3600.0), name="alerts-prune")
        finally:
            await self._cancel_attempts()

    async def _cancel_attempts(self) -> None:
        # An attempt cut short stays leased, and is due again after the lease (same key).
        for t in self._attempts:
            t.cancel()
        if self._attempts:
            await asyncio.gather(*self._attempts, return_exceptions=True)

    async def _loop(self, name: str, step: Callable[[], Awaitable[int]], pause: float,
                    rest: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Runs `step` until cancelled, resting `pause` when it found nothing to do. A failing
        step is logged, counted and tried again: the database being away is expected, anything
        else is a bug (backed off), but neither ends delivery."""
        backoff = 0.0
        while True:
            try:
                busy = await step()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Unavailable as e:
                loop_errors.labels(name, "unavailable").inc()
                log.warning("outbox unavailable; retrying", loop=name, error=str(e))
                busy = 0
            except Exception:
                loop_errors.labels(name, "error").inc()
                backoff = min(max(backoff * 2, 1.0), LOOP_BACKOFF_MAX_S)
                log.exception("delivery loop step failed; retrying", loop=name, retry_s=backoff)
                busy = 0
            if backoff:
                await asyncio.sleep(max(pause, backoff))
            elif not busy:
                await rest(pause)

    async def _rest(self, seconds: float) -> None:
        """Until the next poll, or sooner when an attempt ends and makes room."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._freed.wait()

    async def deliver_once(self) -> int:
        """Claim due notifications and start their attempts; returns how many were started."""
        self._freed.clear()  # before looking: an attempt ending from now on wakes `_rest`
        room = self.s.delivery_concurrency - len(self._attempts)
        if room <= 0:
            return 0
        due = await self.store.claim(min(self.s.delivery_batch, room), self.lease,
                                     busy_users=list(self._in_flight),
                                     per_user=self.s.delivery_per_receiver)
        for n in due:
            uid = n["user_id"]
            self._in_flight[uid] = self._in_flight.get(uid, 0) + 1
            task = asyncio.create_task(self._attempt(n), name=f"alerts-attempt-{n['id']}")
            self._attempts.add(task)
            task.add_done_callback(lambda t, uid=uid: self._done(t, uid))
        return len(due)

    def _done(self, task: asyncio.Task[None], uid: int) -> None:
        self._attempts.discard(task)
        left = self._in_flight.get(uid, 1) - 1
        if left > 0:
            self._in_flight[uid] = left
        else:
            self._in_flight.pop(uid, None)
        self._freed.set()

    async def prune_once(self) -> int:
        n = await self.store.prune(timedelta(days=self.s.notification_retention_days))
        if n:
            log.info("old notifications pruned", count=n)
        return 0  # then rest an hour, however many went

    async def escalate_once(self) -> int:
        ids = await self.store.escalate_due(timedelta(seconds=self.s.escalate_after_s))
        if ids:
            escalations.inc(len(ids))
            log.info("alerts escalated", alert_ids=ids)
        return len(ids)

    async def _attempt(self, n: dict) -> None:
        """One attempt, whatever happens: sent, or a failed attempt recorded and retried."""
        started = time.monotonic()
        code, error = None, None
        try:
            async with asyncio.timeout(self.s.delivery_timeout_s):
                ch = self.channels.pick(n)  # the one place a channel is chosen: by registry
                code = await ch.send(n, Context(
                    self.http, self.s.delivery_timeout_s, int(time.time() * 1000),
                    self.s.smtp_url, self.s.smtp_from))
        except DeliveryError as e:
            code, error = e.status_code, str(e)
        except TimeoutError:
            error = f"no answer within {self.s.delivery_timeout_s:g} s (overall deadline)"
        except Exception as e:  # any fault of a receiver, URL or payload is this attempt's
            error = f"{type(e).__name__}: {e}"
            log.warning("delivery attempt raised", notification=n.get("id"), exc_info=True)
        elapsed = time.monotonic() - started
        ok = error is None
        if error is not None:  # from the receiver, bounded; PostgreSQL text cannot hold NUL
            error = error.replace("\x00", "\\0")[:ERROR_TEXT_CHARS]
        try:
            channel = str(n["channel"])
            deliveries.labels(channel, "ok" if ok else "failed").inc()
            delivery_seconds.labels(channel).observe(elapsed)
            retry = None
            if not ok:
                age = time.time() - n["created_at"].timestamp()
                if age < self.s.delivery_give_up_s:
                    retry = timedelta(seconds=formats.retry_delay_s(n["attempts"] + 1))
                log.warning("delivery failed", notification=n["id"], channel=channel,
                            error=error, retry_s=retry.total_seconds() if retry else None)
            async with asyncio.timeout(RECORD_TIMEOUT_S):
                await self.store.record(n["id"], ok, code, error, int(elapsed * 1000), retry)
        except Exception as e:
            # Not recorded: the notification stays leased and is due again when the lease
            # ends, with the same idempotency key, so a receiver can drop the repeat.
            record_errors.inc()
            log.warning("delivery attempt not recorded; due again after the lease",
                        notification=n.get("id"), error=f"{type(e).__name__}: {e}")
