"""The settings every process shares (`TETHER_*` environment variables).

Each package owns its own section (`ingest/settings.py`, `api/settings.py`,
`alerts/settings.py`, `geofence.rules.RuleSettings`); `tether/config.py` composes them for the
command. Settings are built once at start-up by the command, never at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="ignore")

    database_url: str = "postgresql://tether:tether@127.0.0.1:5432/tether"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field("tether:", description="key prefix, so that runs can share a Redis")
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_root: str = "tether/v1"
    owntracks_root: str = "owntracks"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    migrations_dir: Path | None = Field(None, description="a folder of NNN_name.sql files; "
                                        "unset: the migrations shipped with the package")
    task_restart_max_s: float = Field(30.0, gt=0, description="a failed part (ingest, API, "
                                      "timers, delivery) restarts with backoff up to this")
    log_level: str = "INFO"
    log_json: bool = False
