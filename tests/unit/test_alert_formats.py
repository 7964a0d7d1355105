"""Pure: webhook bodies, signatures and retry delays."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qs, unquote, urlsplit

from alerts import formats

ALERT = {"id": 7, "type": "exclusion_entry", "severity": "critical", "status": "open",
         "subject_id": 3, "device_id": "w-1", "zone_id": 2, "opened_at": "2026-06-01T08:00:00Z",
         "position": {"lat": 31.2, "lon": 121.4, "ts": "2026-06-01T08:00:00Z", "acc": 8},
         "late": False, "confidence": "confident", "event": "opened"}


def test_json_webhook_carries_the_alert_the_key_and_a_verifiable_signature() -> None:
    d = formats.webhook("https://x.test/hook", "json", "s3cret", ALERT, "key-1", 0)
    assert json.loads(d.body) == ALERT
    assert d.headers["Idempotency-Key"] == "key-1"
    expected = hmac.new(b"s3cret", d.body, hashlib.sha256).hexdigest()
    assert d.headers["X-Tether-Signature"] == f"sha256={expected}"


def test_no_secret_no_signature() -> None:
    d = formats.webhook("https://x.test/hook", "json", None, ALERT, "k", 0)
    assert "X-Tether-Signature" not in d.headers


def test_dingtalk_markdown_and_signed_url() -> None:
    d = formats.webhook("https://oapi.example/robot/send?access_token=t", "dingtalk", "SEC1",
                        ALERT, "k", 1_700_000_000_000)
    body = json.loads(d.body)
    assert body["msgtype"] == "markdown" and "exclusion_entry" in body["markdown"]["title"]
    assert "31.2, 121.4" in body["markdown"]["text"]
    q = parse_qs(urlsplit(d.url).query)
    assert q["access_token"] == ["t"] and q["timestamp"] == ["1700000000000"]
    want = base64.b64encode(hmac.new(b"SEC1", b"1700000000000\nSEC1", hashlib.sha256).digest())
    assert unquote(q["sign"][0]) == want.decode() or q["sign"][0] == want.decode()


def test_wecom_markdown() -> None:
    body = json.loads(formats.webhook("https://qyapi.example/send?key=k", "wecom", None, ALERT,
                                      "k", 0).body)
    assert body["msgtype"] == "markdown" and "#7" in body["markdown"]["content"]


def test_email_subject_and_text() -> None:
    subject, text = formats.email({**ALERT, "event": "escalated"})
    assert "ESCALATED" in subject and "exclusion_entry" in subject and "w-1" in text


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [formats.retry_delay_s(n) for n in range(1, 15)]
    assert delays[:3] == [2, 4, 8] and delays == sorted(delays) and max(delays) == 600
