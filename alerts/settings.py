"""The alerts' settings section: severities and delivery (`TETHER_*`, read by the command)."""

from __future__ import annotations

from pydantic import BaseModel, Field


def _severity() -> dict[str, str]:
    return {"exclusion_entry": "critical", "victim_proximity": "critical", "sos": "critical",
            "strap_tamper": "critical", "inclusion_exit": "high", "curfew": "high",
            "device_separation": "high", "location_spoofing": "high",
            "exclusion_buffer": "medium", "device_offline": "medium",
            "tracking_impaired": "medium", "battery_low": "low", "leave_overrun": "high",
            "order_expiring": "low"}


class AlertSettings(BaseModel):
    severity: dict[str, str] = Field(default_factory=_severity,
                                     description="alert severity per type (JSON object)")
    smtp_url: str | None = Field(None, description="smtp://user:password@host:port, or "
                                 "smtp+starttls://...; unset: no e-mail")
    smtp_from: str = "tether@localhost"
    escalate_after_s: float = Field(300.0, description="an unacknowledged critical alert is "
                                    "escalated to the parent jurisdiction's commanders")
    delivery_give_up_s: float = Field(86_400.0, description="stop retrying a notification")
    delivery_timeout_s: float = Field(10.0, gt=0, description="overall deadline of one "
                                      "delivery attempt (connect, send, answer)")
    delivery_concurrency: int = Field(16, ge=1, description="attempts under way at once; each "
                                      "runs apart, so a slow receiver delays no one else")
    notification_retention_days: float = Field(90.0, description="keep sent notifications")
    delivery_per_receiver: int = Field(4, ge=1, description="of the attempts under way, at "
                                       "most this many for one user (one receiver)")
    delivery_poll_s: float = Field(0.2, gt=0, description="how often the outbox is looked at")
    delivery_batch: int = Field(50, ge=1, description="notifications claimed at once")
    delivery_lease_s: float = Field(60.0, gt=0, description="a claimed notification is not "
                                    "handed out again for this long (raised to outlast an "
                                    "attempt and its recording)")
