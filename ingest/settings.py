"""Ingest's settings section (`TETHER_*`), with the sections of the rules and alerts it runs."""

from __future__ import annotations

from pydantic import Field

from alerts.settings import AlertSettings
from geofence.rules import RuleSettings
from tether.settings import CommonSettings


class IngestSettings(CommonSettings, RuleSettings, AlertSettings):
    mqtt_client_id: str = Field("tether-ingest-1", description="one per worker, stable across "
                                "restarts: the broker keeps its session and unacked messages")
    mqtt_share_group: str = Field("tether-ingest", description="the workers' `$share` group; "
                                  "empty: plain subscriptions (a broker without shared "
                                  "subscriptions, such as NATS: one worker)")
    metrics_port: int | None = Field(None, description="`tether ingest` alone: serve "
                                     "/metrics on this port (`serve` has it on the API)")
    batch_rows: int = Field(2000, ge=1, description="flush when a batch holds this many fixes")
    batch_messages: int = Field(2000, ge=1, description="... or this many MQTT messages")
    batch_age_ms: int = Field(50, ge=1, description="... or, once the writer is free, when its "
                              "first message is this old")
    max_future_s: float = Field(300, description="fixes dated further ahead are rejected")
    max_speed_kmh: float = Field(300, description="a faster jump marks a fix as an outlier")
    retention_days: int = Field(400, ge=1, description="fixes older than this are dropped")
    registry_refresh_s: float = 60.0
    jump_confirm_fixes: int = Field(3, ge=2, description="this many fixes agreeing with each "
                                    "other but not with the last good fix re-anchor the jump "
                                    "filter: the old reference was the outlier")
    dead_letter_after: int = Field(2, ge=1, description="a message failing the same "
                                   "non-transient way this many times is set aside as a reject")
    tick_interval_s: float = Field(1.0, description="how often due time-checks are looked for")
    judge_ahead_rows: int = Field(50_000, ge=0, description="while PostgreSQL is away, fixes "
                                  "judged at once and held in memory until they can be stored "
                                  "(0: none; beyond it, backpressure)")
