"""Pure: the pieces a delivery is made of on the wire (contract §5), shared by the channels
(`alerts.channels`: each builds its own message from these)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

SEVERITY_MARK = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "⚪"}
EVENT_WORDS = {"opened": "new alert", "updated": "alert updated", "escalated": "ESCALATED",
               "acknowledged": "acknowledged", "resolved": "resolved"}


@dataclass(frozen=True, slots=True)
class HttpDelivery:
    url: str
    headers: dict[str, str]
    body: bytes


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk robots: base64(HMAC-SHA256(secret, "{timestamp}\\n{secret}")), URL-encoded."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(),
                      hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def headline(p: dict) -> str:
    what = EVENT_WORDS.get(p["event"], p["event"])
    mark = SEVERITY_MARK.get(p.get("severity"), "")
    return f"{mark} Tether {what}: {p['type']} (subject {p['subject_id']})".strip()


def markdown(p: dict) -> str:
    pos = p.get("position") or {}
    lines = [f"### {headline(p)}", f"- alert: #{p['id']}, severity **{p['severity']}**,"
             f" status {p['status']}"]
    if p.get("confidence"):
        lines.append(f"- confidence: {p['confidence']}" + (" (late upload)" if p.get("late")
                                                            else ""))
    if pos:
        lines.append(f"- position: {pos.get('lat')}, {pos.get('lon')} at {pos.get('ts')}"
                     f" (±{pos.get('acc')} m)")
    if p.get("device_id"):
        lines.append(f"- device: {p['device_id']}")
    lines.append(f"- opened: {p['opened_at']}")
    return "\n".join(lines)


def email(payload: dict) -> tuple[str, str]:
    """(subject, plain-text body)."""
    return headline(payload), markdown(payload).replace("### ", "") + "\n"


def retry_delay_s(attempts: int, cap_s: float = 600.0) -> float:
    """Exponential backoff after the n-th failed attempt: 2, 4, 8 ... seconds, capped."""
    return min(cap_s, 2.0 ** max(1, attempts))
