"""Settings from TETHER_* environment variables, built once at start-up (never at import)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="ignore")

    database_url: str = "postgresql://tether:tether@127.0.0.1:5432/tether"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field("tether:", description="key prefix, so that runs can share a Redis")
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_root: str = "tether/v1"
    owntracks_root: str = "owntracks"
    mqtt_client_id: str = Field("tether-ingest-1", description="one per worker, stable across "
                                "restarts: the broker keeps its session and unacked messages")
    mqtt_share_group: str = "tether-ingest"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    token_ttl_s: int = Field(1800, ge=60, description="lifetime of an API bearer token")
    login_max_failures: int = Field(5, description="failed logins per user name per window")
    login_window_s: float = Field(300, description="... before logins are refused (429)")
    metrics_port: int | None = Field(None, description="`tether ingest` alone: serve "
                                     "/metrics on this port (`serve` has it on the API)")

    batch_rows: int = Field(2000, ge=1, description="flush when a batch holds this many fixes")
    batch_messages: int = Field(2000, ge=1, description="... or this many MQTT messages")
    batch_age_ms: int = Field(200, ge=1, description="... or when its first message is this old")
    max_future_s: float = Field(300, description="fixes dated further ahead are rejected")
    max_speed_kmh: float = Field(300, description="a faster jump marks a fix as an outlier")
    late_after_s: float = Field(60, description="a fix received later than this is 'late'")
    retention_days: int = Field(400, ge=1, description="fixes older than this are dropped")
    registry_refresh_s: float = 60.0

    # Rules (geofence/rules.py explains each); defaults suit one fix a minute.
    min_accuracy_m: float = Field(10.0, description="never trust a fix to be better than this")
    unknown_accuracy_m: float = Field(50.0, description="accuracy assumed when a fix has none")
    probable_dwell_s: float = Field(300.0, description="probable fixes this long confirm")
    max_gap_s: float = Field(600.0, description="evidence further apart does not combine")
    clear_fixes: int = Field(3, description="compliant fixes in a row that end a breach")
    clear_s: float = Field(180.0, description="... or compliance for this long")
    fresh_s: float = Field(120.0, description="fixes of two devices this close are compared")
    separation_m: float = Field(200.0, description="phone-wearable distance beyond accuracy")
    separation_dwell_s: float = Field(300.0, description="... for this long: device_separation")
    battery_low_pct: int = 15
    battery_clear_pct: int = 30
    offline_wearable_s: float = 900.0
    offline_phone_s: float = 1800.0
    offline_victim_s: float = 1800.0
    spoof_window_s: float = 600.0
    severity: dict[str, str] = Field(default_factory=lambda: {
        "exclusion_entry": "critical", "victim_proximity": "critical", "sos": "critical",
        "strap_tamper": "critical", "inclusion_exit": "high", "curfew": "high",
        "device_separation": "high", "location_spoofing": "high", "exclusion_buffer": "medium",
        "device_offline": "medium", "tracking_impaired": "medium", "battery_low": "low"},
        description="alert severity per type (JSON object)")
    tick_interval_s: float = Field(1.0, description="how often due time-checks are looked for")

    # Notifications (alerts/)
    smtp_url: str | None = Field(None, description="smtp://user:password@host:port, or "
                                 "smtp+starttls://...; unset: no e-mail")
    smtp_from: str = "tether@localhost"
    escalate_after_s: float = Field(300.0, description="an unacknowledged critical alert is "
                                    "escalated to the parent jurisdiction's commanders")
    delivery_give_up_s: float = Field(86_400.0, description="stop retrying a notification")
    notification_retention_days: float = Field(90.0, description="keep sent notifications")
    migrations_dir: Path = REPO / "migrations"
    log_level: str = "INFO"
    log_json: bool = False
