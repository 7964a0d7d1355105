"""Pure: the one check of a webhook URL, shared by the API (a 422 at the door) and delivery
(which re-checks, since a row may predate the check or be written by SQL).

The parsing is pydantic's WHATWG parser (`HttpUrl`: scheme, IPv4/IPv6 literals, IDNA hosts,
port range); the checks it does not make, and that a delivery needs, are added here. The URL is
then parsed once more with httpx, the client that will send to it, so nothing that passes here
can fail to parse there.
"""

from __future__ import annotations

import re

import httpx
from pydantic import HttpUrl, TypeAdapter, ValidationError

MAX_URL_LENGTH = 2000
_parser = TypeAdapter(HttpUrl)
# WHATWG parsing is lenient where httpx is not (it reads "http:///x" as host "x", turns "\" into
# "/" and drops tabs): insist on the plain shape both parsers read the same way.
_SHAPE = re.compile(r"^https?://[^/\\?#\s]", re.IGNORECASE)


class BadWebhookUrl(ValueError):
    """The reason a webhook URL is refused; a ValueError, so pydantic turns it into a 422."""


def check_webhook_url(raw: object) -> str:
    """The URL as given, if a webhook can be delivered to it; BadWebhookUrl saying why if not."""
    if not isinstance(raw, str):
        raise BadWebhookUrl("a webhook URL must be a string")
    if not raw:
        raise BadWebhookUrl("the webhook URL is empty")
    if len(raw) > MAX_URL_LENGTH:
        raise BadWebhookUrl(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise BadWebhookUrl("the webhook URL contains whitespace or control characters")
    if not _SHAPE.match(raw):
        raise BadWebhookUrl("the webhook URL must start with http:// or https:// and a host")
    if "\\" in raw:
        raise BadWebhookUrl("the webhook URL must not contain a backslash")
    if "@" in re.split(r"[/?#]", raw.split("://", 1)[1], maxsplit=1)[0]:
        raise BadWebhookUrl("the webhook URL must not hold credentials (user:password@)")
    try:
        url = _parser.validate_python(raw)
    except ValidationError as e:
        reason = e.errors()[0]["msg"] if e.errors() else "not a URL"
        raise BadWebhookUrl(f"the webhook URL is not valid: {reason}") from None
    if url.username is not None or url.password is not None:
        raise BadWebhookUrl("the webhook URL must not hold credentials (user:password@)")
    if not url.host:
        raise BadWebhookUrl("the webhook URL has no host")
    if url.port is None or not 1 <= url.port <= 65535:
        raise BadWebhookUrl("the webhook URL's port must be between 1 and 65535")
    try:
        sent = httpx.URL(raw)
    except Exception as e:  # httpx raises InvalidURL, and in odd cases other errors
        raise BadWebhookUrl(f"the webhook URL is not valid: {e}") from None
    if sent.scheme not in ("http", "https") or not sent.host or sent.userinfo:
        raise BadWebhookUrl("the webhook URL is not valid")
    if sent.port is not None and not 1 <= sent.port <= 65535:
        raise BadWebhookUrl("the webhook URL's port must be between 1 and 65535")
    return raw
