"""Webhook, format `json` (contract §5): the alert plus `event`, signed with the user's secret."""

from __future__ import annotations

from alerts.channels.base import Channel
from alerts.channels.webhook import sender
from alerts.formats import HttpDelivery, canonical, sign


def build(url: str, secret: str | None, payload: dict, key: str, now_ms: int) -> HttpDelivery:
    body = canonical(payload)
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if secret:
        headers["X-Tether-Signature"] = sign(secret, body)
    return HttpDelivery(url, headers, body)


# The default of the webhook route: a format this version does not know gets the plain JSON.
CHANNEL = Channel("json", "webhook", sender(build), default=True)
