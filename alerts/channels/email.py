"""E-mail through `TETHER_SMTP_URL` (smtp://user:password@host:port, or smtp+starttls://)."""

from __future__ import annotations

from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

from alerts import formats
from alerts.channels.base import Channel, Context, DeliveryError, Notification


def message(n: Notification, sender: str) -> EmailMessage:
    subject, text = formats.email(n["payload"])
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, n["email"], subject
    msg["Message-ID"] = f"<{n['idempotency_key']}@tether>"  # the same on every retry
    msg.set_content(text)
    return msg


async def send(n: Notification, ctx: Context) -> int:
    if not ctx.smtp_url:
        raise DeliveryError("no SMTP server configured (TETHER_SMTP_URL)")
    if not n["email"]:
        raise DeliveryError("the user has no e-mail address any more")
    u = urlsplit(ctx.smtp_url)
    try:
        await aiosmtplib.send(message(n, ctx.smtp_from), hostname=u.hostname, port=u.port or 25,
                              username=unquote(u.username) if u.username else None,
                              password=unquote(u.password) if u.password else None,
                              start_tls=u.scheme == "smtp+starttls", timeout=ctx.timeout_s)
    except (aiosmtplib.SMTPException, OSError) as e:
        raise DeliveryError(f"SMTP: {e}") from e
    return 250


CHANNEL = Channel("email", "email", send, default=True)
