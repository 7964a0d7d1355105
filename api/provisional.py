"""`alert_provisional` (contract §3, docs/api.md): alerts ingest judged while PostgreSQL was
away (`ingest/ahead.py`), relayed from Redis to the screens and phones whose scope holds the
subject. They carry no id: the stored alert follows, as an ordinary `alert`, when the database
is back. Hostile until decoded, like a positions batch."""

from __future__ import annotations

import msgspec

from api.ws import AlertHub
from tether import logs
from tether.channels import ProvisionalAlerts

log = logs.get("api.provisional")
_decode_alerts = msgspec.json.Decoder(ProvisionalAlerts).decode


def relay(data: object, paths: dict[int, tuple[int, ...]], alerts: AlertHub) -> bool:
    """Deliver one published message; False if it did not decode (the caller counts it)."""
    try:
        batch = _decode_alerts(data)  # type: ignore[arg-type]
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as e:
        log.warning("provisional alerts rejected", error=str(e)[:200])
        return False
    for a in batch.items:
        path = paths.get(a.subject_id)
        if path is not None:  # a subject this process does not know yet: its stored alert
            alerts.deliver({"type": "alert_provisional", "alert": {
                **msgspec.structs.asdict(a), "id": None, "provisional": True}}, list(path))
    return True
