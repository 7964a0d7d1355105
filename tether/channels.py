"""Names of the Redis channels that processes use to talk to each other (under the deployment's
`redis_prefix`, so several deployments or test runs share one Redis)."""

from __future__ import annotations

LIVE_POSITIONS = "live:positions"  # ingest → every API process: positions for the live map
LIVE_ALERTS = "live:alerts"  # ingest → every API process: alerts judged before they are stored


def live_positions(prefix: str) -> str:
    return f"{prefix}{LIVE_POSITIONS}"


def live_alerts(prefix: str) -> str:
    return f"{prefix}{LIVE_ALERTS}"
