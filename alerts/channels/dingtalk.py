"""Webhook, format `dingtalk`: a DingTalk robot markdown message; a secret signs the URL the way
the robots expect (`timestamp` and `sign` query parameters)."""

from __future__ import annotations

from alerts.channels.base import Channel
from alerts.channels.webhook import sender
from alerts.formats import HttpDelivery, canonical, dingtalk_sign, headline, markdown


def build(url: str, secret: str | None, payload: dict, key: str, now_ms: int) -> HttpDelivery:
    body = canonical({"msgtype": "markdown",
                      "markdown": {"title": headline(payload), "text": markdown(payload)}})
    if secret:
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}timestamp={now_ms}&sign={dingtalk_sign(secret, now_ms)}"
    return HttpDelivery(url, {"Content-Type": "application/json", "Idempotency-Key": key}, body)


CHANNEL = Channel("dingtalk", "webhook", sender(build))
