"""Names of the Redis channels that processes use to talk to each other (under the deployment's
`redis_prefix`, so several deployments or test runs share one Redis)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

LIVE_POSITIONS = "live:positions"  # ingest → every API process: positions for the live map
LIVE_ALERTS = "live:alerts"  # ingest → every API process: alerts judged before they are stored


def live_positions(prefix: str) -> str:
    return f"{prefix}{LIVE_POSITIONS}"


def live_alerts(prefix: str) -> str:
    return f"{prefix}{LIVE_ALERTS}"


# The message on LIVE_ALERTS: one home for its shape, for the ingest that encodes it and the
# API that decodes it.
Short = Annotated[str, msgspec.Meta(max_length=64)]


class ProvisionalAlert(msgspec.Struct, frozen=True):
    """A rule's conclusion before the database has it (`ingest/ahead.py`): no id yet. The
    bounds are checked where it is decoded (`api/provisional.py`): a Redis value is hostile."""

    event: Literal["opened", "cleared"]
    type: Short
    subject_id: int
    at: Annotated[str, msgspec.Meta(max_length=40)]
    device_id: Short | None = None
    zone_id: int | None = None
    confidence: Short | None = None
    late: bool = False
    position: dict | None = None
    details: dict = {}


class ProvisionalAlerts(msgspec.Struct):
    v: int
    items: list[ProvisionalAlert]


