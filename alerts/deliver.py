"""The delivery worker: sends what the outbox holds, retries with backoff, escalates.

Several processes may run it: claims take rows with SKIP LOCKED and a lease. A delivery is
retried with the same Idempotency-Key, so a receiver can drop a repeat after a crash
mid-send; in normal operation each notification is sent until one attempt succeeds, once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib
import httpx
import structlog
from prometheus_client import Counter, Histogram

from alerts import formats
from alerts.store import OutboxStore, Unavailable

log = structlog.get_logger("alerts")  # configured by the command that starts the process
deliveries = Counter("tether_deliveries_total", "notification delivery attempts",
                     ["channel", "outcome"])
delivery_seconds = Histogram("tether_delivery_seconds", "time to deliver one notification",
                             ["channel"])
escalations = Counter("tether_alerts_escalated_total", "critical alerts escalated")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    smtp_url: str | None = None  # smtp://user:password@host:port; None: e-mail disabled
    smtp_from: str = "tether@localhost"
    escalate_after_s: float = 300.0
    give_up_after_s: float = 86_400.0
    poll_s: float = 0.2
    timeout_s: float = 10.0
    batch: int = 50
    lease_s: float = 60.0
    retention_days: float = 90.0  # delivered and failed notifications are kept this long


class DeliveryError(Exception):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class Deliverer:
    def __init__(self, store: OutboxStore, settings: DeliverySettings) -> None:
        self.store, self.s = store, settings
        self.http = httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._loop(self.deliver_once, self.s.poll_s), name="alerts-deliver")
            tg.create_task(self._loop(self.escalate_once, 1.0), name="alerts-escalate")
            tg.create_task(self._loop(self.prune_once, 3600.0), name="alerts-prune")

    async def _loop(self, step, pause: float) -> None:
        while True:
            try:
                busy = await step()
            except Unavailable as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # never swallow a cancellation
                    raise asyncio.CancelledError from e
                log.warning("outbox unavailable; retrying", error=str(e))
                busy = 0
            if not busy:
                await asyncio.sleep(pause)

    async def prune_once(self) -> int:
        n = await self.store.prune(timedelta(days=self.s.retention_days))
        if n:
            log.info("old notifications pruned", count=n)
        return 0  # then rest an hour, however many went

    async def escalate_once(self) -> int:
        ids = await self.store.escalate_due(timedelta(seconds=self.s.escalate_after_s))
        if ids:
            escalations.inc(len(ids))
            log.info("alerts escalated", alert_ids=ids)
        return len(ids)

    async def deliver_once(self) -> int:
        due = await self.store.claim(self.s.batch, timedelta(seconds=self.s.lease_s))
        await asyncio.gather(*(self._attempt(n) for n in due))
        return len(due)

    async def _attempt(self, n: dict) -> None:
        started = time.monotonic()
        code, error = None, None
        try:
            code = await (self._webhook(n) if n["channel"] == "webhook" else self._email(n))
        except DeliveryError as e:
            code, error = e.status_code, str(e)
        elapsed = time.monotonic() - started
        ok = error is None
        deliveries.labels(n["channel"], "ok" if ok else "failed").inc()
        delivery_seconds.labels(n["channel"]).observe(elapsed)
        retry = None
        if not ok:
            age = time.time() - n["created_at"].timestamp()
            if age < self.s.give_up_after_s:
                retry = timedelta(seconds=formats.retry_delay_s(n["attempts"] + 1))
            log.warning("delivery failed", notification=n["id"], channel=n["channel"],
                        error=error, retry_s=retry.total_seconds() if retry else None)
        await self.store.record(n["id"], ok, code, error, int(elapsed * 1000), retry)

    async def _webhook(self, n: dict) -> int:
        if not n["notify_webhook"]:
            raise DeliveryError("the user has no webhook any more")
        d = formats.webhook(n["notify_webhook"], n["notify_format"], n["notify_secret"],
                            n["payload"], str(n["idempotency_key"]), int(time.time() * 1000))
        try:
            r = await self.http.post(d.url, content=d.body, headers=d.headers)
        except httpx.HTTPError as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from e
        if not 200 <= r.status_code < 300:
            raise DeliveryError(f"HTTP {r.status_code}: {r.text[:200]}", r.status_code)
        return r.status_code

    async def _email(self, n: dict) -> int:
        if not self.s.smtp_url:
            raise DeliveryError("no SMTP server configured (TETHER_SMTP_URL)")
        if not n["email"]:
            raise DeliveryError("the user has no e-mail address any more")
        u = urlsplit(self.s.smtp_url)
        subject, text = formats.email(n["payload"])
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.s.smtp_from, n["email"], subject
        msg["Message-ID"] = f"<{n['idempotency_key']}@tether>"  # the same on every retry
        msg.set_content(text)
        try:
            await aiosmtplib.send(msg, hostname=u.hostname, port=u.port or 25,
                                  username=unquote(u.username) if u.username else None,
                                  password=unquote(u.password) if u.password else None,
                                  start_tls=u.scheme == "smtp+starttls",
                                  timeout=self.s.timeout_s)
        except (aiosmtplib.SMTPException, OSError) as e:
            raise DeliveryError(f"SMTP: {e}") from e
        return 250
