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

    batch_rows: int = Field(2000, ge=1, description="flush when a batch holds this many fixes")
    batch_messages: int = Field(2000, ge=1, description="... or this many MQTT messages")
    batch_age_ms: int = Field(200, ge=1, description="... or when its first message is this old")
    max_future_s: float = Field(300, description="fixes dated further ahead are rejected")
    max_speed_kmh: float = Field(300, description="a faster jump marks a fix as an outlier")
    late_after_s: float = Field(60, description="a fix received later than this is 'late'")
    retention_days: int = Field(400, ge=1, description="fixes older than this are dropped")
    registry_refresh_s: float = 60.0
    migrations_dir: Path = REPO / "migrations"
    log_level: str = "INFO"
    log_json: bool = False
