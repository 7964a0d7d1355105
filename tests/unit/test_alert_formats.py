"""Pure: each channel's message, signatures, retry delays, and the channel registry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from alerts import formats
from alerts.channels import (
    CHANNELS,
    Channel,
    DeliveryError,
    Registry,
    dingtalk,
    email,
    registry,
    webhook_json,
    wecom,
)

ALERT = {"id": 7, "type": "exclusion_entry", "severity": "critical", "status": "open",
         "subject_id": 3, "device_id": "w-1", "zone_id": 2, "opened_at": "2026-06-01T08:00:00Z",
         "position": {"lat": 31.2, "lon": 121.4, "ts": "2026-06-01T08:00:00Z", "acc": 8},
         "late": False, "confidence": "confident", "event": "opened"}


def test_json_webhook_carries_the_alert_the_key_and_a_verifiable_signature() -> None:
    d = webhook_json.build("https://x.test/hook", "s3cret", ALERT, "key-1", 0)
    assert json.loads(d.body) == ALERT
    assert d.headers["Idempotency-Key"] == "key-1"
    expected = hmac.new(b"s3cret", d.body, hashlib.sha256).hexdigest()
    assert d.headers["X-Tether-Signature"] == f"sha256={expected}"


def test_no_secret_no_signature() -> None:
    d = webhook_json.build("https://x.test/hook", None, ALERT, "k", 0)
    assert "X-Tether-Signature" not in d.headers


def test_dingtalk_markdown_and_signed_url() -> None:
    d = dingtalk.build("https://oapi.example/robot/send?access_token=t", "SEC1", ALERT, "k",
                       1_700_000_000_000)
    body = json.loads(d.body)
    assert body["msgtype"] == "markdown" and "exclusion_entry" in body["markdown"]["title"]
    assert "31.2, 121.4" in body["markdown"]["text"]
    q = parse_qs(urlsplit(d.url).query)
    assert q["access_token"] == ["t"] and q["timestamp"] == ["1700000000000"]
    want = base64.b64encode(hmac.new(b"SEC1", b"1700000000000\nSEC1", hashlib.sha256).digest())
    assert unquote(q["sign"][0]) == want.decode() or q["sign"][0] == want.decode()


def test_wecom_markdown() -> None:
    body = json.loads(wecom.build("https://qyapi.example/send?key=k", None, ALERT, "k", 0).body)
    assert body["msgtype"] == "markdown" and "#7" in body["markdown"]["content"]


def test_email_subject_and_text() -> None:
    subject, text = formats.email({**ALERT, "event": "escalated"})
    assert "ESCALATED" in subject and "exclusion_entry" in subject and "w-1" in text


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [formats.retry_delay_s(n) for n in range(1, 15)]
    assert delays[:3] == [2, 4, 8] and delays == sorted(delays) and max(delays) == 600


def test_the_email_message_keeps_one_message_id_per_delivery() -> None:
    n = {"payload": ALERT, "email": "o@x.test", "idempotency_key": "abc"}
    msg = email.message(n, "tether@x.test")
    assert msg["To"] == "o@x.test" and msg["Message-ID"] == "<abc@tether>"
    assert "exclusion_entry" in msg["Subject"]


@pytest.mark.parametrize(("route", "fmt", "name"), [
    ("webhook", "json", "json"), ("webhook", "dingtalk", "dingtalk"),
    ("webhook", "wecom", "wecom"), ("webhook", None, "json"), ("webhook", "future", "json"),
    ("email", "dingtalk", "email"), ("email", None, "email")])
def test_the_registry_picks_by_route_then_format(route: str, fmt: str | None,
                                                 name: str) -> None:
    assert registry.pick({"channel": route, "notify_format": fmt}).name == name


def test_an_unknown_route_is_a_failed_attempt_not_a_crash() -> None:
    with pytest.raises(DeliveryError, match="no delivery channel"):
        registry.pick({"channel": "pigeon", "notify_format": "json"})


def test_a_new_channel_is_one_registration() -> None:
    async def send(n: dict, ctx: object) -> int:
        return 200

    sms = Channel("sms", "sms", send, default=True)
    reg = Registry((*CHANNELS, sms))
    assert reg.pick({"channel": "sms", "notify_format": "json"}) is sms
    assert reg.routes() == {"webhook", "email", "sms"}
    with pytest.raises(ValueError, match="two channels"):
        Registry((*CHANNELS, Channel("wecom", "webhook", send)))
    with pytest.raises(ValueError, match="two default"):
        Registry((*CHANNELS, Channel("plain", "webhook", send, default=True)))
