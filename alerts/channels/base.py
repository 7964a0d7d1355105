"""The one small interface every delivery channel implements (see `alerts.channels`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

# A claimed notification, as `alerts.store.OutboxStore.claim` returns it: the outbox row
# (id, idempotency_key, channel, event, payload, attempts, created_at) and the user's addresses
# (notify_webhook, notify_format, notify_secret, email), read at claim time.
Notification = dict[str, Any]


class DeliveryError(Exception):
    """A failed attempt, with the receiver's status when it gave one; retried with backoff."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Context:
    """What the delivery worker lends a channel for one attempt. The attempt's overall deadline
    is the worker's (`asyncio.timeout` around `send`); `timeout_s` is for clients that want
    their own, a little inside it."""

    http: httpx.AsyncClient
    timeout_s: float
    now_ms: int  # the wall clock, read once by the worker (signatures that carry a timestamp)
    smtp_url: str | None = None
    smtp_from: str = "tether@localhost"


# Sends one notification; returns the receiver's success status (e.g. 200, 250), raises
# DeliveryError (or anything: the worker counts any exception as a failed attempt).
Send = Callable[[Notification, Context], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Channel:
    name: str  # the user's `notify_format` for webhook channels; else the route's own name
    route: str  # `notifications.channel`: which address of the user it goes to
    send: Send
    default: bool = False  # the route's channel when no other one's name matches
