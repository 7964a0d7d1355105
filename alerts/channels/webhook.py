"""What every webhook channel shares: the URL check and one bounded POST. Each format (JSON,
DingTalk, WeCom) is a file of its own that only builds the request."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from alerts.channels.base import Context, DeliveryError, Notification, Send
from alerts.formats import HttpDelivery
from alerts.urls import BadWebhookUrl, check_webhook_url

ERROR_BODY_BYTES = 200  # of a failed answer's body, kept as the attempt's error

# (url, secret, payload, idempotency key, now in ms) -> the request; pure.
Build = Callable[[str, str | None, dict, str, int], HttpDelivery]


def sender(build: Build) -> Send:
    async def send(n: Notification, ctx: Context) -> int:
        if not n["notify_webhook"]:
            raise DeliveryError("the user has no webhook any more")
        try:  # re-checked: the row may predate the API's check, or be written by SQL
            url = check_webhook_url(n["notify_webhook"])
        except BadWebhookUrl as e:
            raise DeliveryError(f"bad webhook URL: {e}") from e
        d = build(url, n["notify_secret"], n["payload"], str(n["idempotency_key"]), ctx.now_ms)
        return await post(ctx.http, d)
    return send


async def post(http: httpx.AsyncClient, d: HttpDelivery) -> int:
    try:
        async with http.stream("POST", d.url, content=d.body, headers=d.headers) as r:
            if 200 <= r.status_code < 300:
                return r.status_code  # the body is not needed; closing drops it
            head = b""
            async for chunk in r.aiter_raw():  # a bounded read: the receiver is hostile
                head += chunk
                if len(head) >= ERROR_BODY_BYTES:
                    break
    except httpx.HTTPError as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from e
    text = head[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    raise DeliveryError(f"HTTP {r.status_code}: {text}", r.status_code)
