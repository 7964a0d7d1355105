"""Webhook, format `wecom`: a WeCom (企业微信) robot markdown message."""

from __future__ import annotations

from alerts.channels.base import Channel
from alerts.channels.webhook import sender
from alerts.formats import HttpDelivery, canonical, markdown


def build(url: str, secret: str | None, payload: dict, key: str, now_ms: int) -> HttpDelivery:
    body = canonical({"msgtype": "markdown", "markdown": {"content": markdown(payload)}})
    return HttpDelivery(url, {"Content-Type": "application/json", "Idempotency-Key": key}, body)


CHANNEL = Channel("wecom", "webhook", sender(build))
