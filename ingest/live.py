"""Positions for the live map (contract §3 `/ws/live`): one Redis PUBLISH per committed batch.

Ingest calls `LivePublisher.publish` once per committed batch with its fixes; every API process
subscribes to the channel (`api/live.py`) and fans the positions out to its own screens, so
several API processes serve any screen and nothing on this path queries the database per fix.

Pub/sub, not a stream: a screen that was away gets a fresh snapshot when it reconnects, so a
position published while no API process listened needs no replay. The message is JSON
`{"v": 1, "items": [[subject_id, device_id, lat, lon, ts_epoch_s, acc_or_null], ...]}`: arrays,
not objects, because a 2,000-fix batch is then about half the bytes to publish and to parse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
from prometheus_client import Counter

from geofence.rules import OPEN, RuleEvent
from geofence.types import Fix
from ingest.state import DeviceState, StateError
from tether import channels, logs
from tether.channels import ProvisionalAlert, ProvisionalAlerts

log = logs.get("ingest.live")
published = Counter("tether_live_positions_published_total", "positions published to screens")
publish_failures = Counter("tether_live_publish_failures_total",
                           "batches whose live positions could not be published")


class LivePosition(msgspec.Struct, frozen=True, array_like=True):
    """Encoded as the array the screens read (array_like), by msgspec in C: one per fix."""

    subject_id: int
    device_id: str
    lat: float
    lon: float
    fix_time: float  # Unix epoch seconds
    accuracy_m: float | None


class _Message(msgspec.Struct):
    v: int
    items: list[LivePosition]


_encode = msgspec.json.Encoder().encode


def positions(fixes: Iterable[Fix], subject_of: Mapping[str, object]) -> list[LivePosition]:
    """The batch's fixes as live positions: outliers and victims' devices left out (a victim's
    position is never drawn on the offenders' map), devices with no subject skipped. Pure.

    `subject_of` maps a device id to anything with `subject_id` and `kind` attributes (the
    ingest registry's `Registered`)."""
    out = []
    for f in fixes:
        reg = subject_of.get(f.device_id)
        if f.outlier or reg is None or getattr(reg, "kind", None) == "victim":
            continue
        sid = getattr(reg, "subject_id", None)
        if sid is None:
            continue
        out.append(LivePosition(sid, f.device_id, f.lat, f.lon, f.fix_time.timestamp(),
                                f.accuracy_m))
    return out


def encode(items: list[LivePosition]) -> bytes:
    return _encode(_Message(1, items))


def provisional(events: Iterable[RuleEvent]) -> list[ProvisionalAlert]:
    return [ProvisionalAlert("opened" if e.action == OPEN else "cleared", e.type, e.subject_id,
                             e.at.isoformat(), e.device_id, e.zone_id, e.confidence, e.late,
                             e.position, e.details) for e in events]


class LivePublisher:
    """Owned by the ingest worker; `publish` never raises: the fixes are already committed, and
    a screen missing a position catches up with the subject's next one. It speaks through the
    worker's Redis edge (`ingest/state.py`)."""

    def __init__(self, state: DeviceState) -> None:
        self.state = state

    async def publish(self, items: list[LivePosition]) -> int:
        """One PUBLISH for the whole batch; returns how many API processes received it."""
        if not items:
            return 0
        try:
            receivers = await self.state.publish(channels.LIVE_POSITIONS, encode(items))
        except (StateError, OSError) as e:
            logs.still_running()
            publish_failures.inc()
            log.warning("live positions not published", error=str(e), positions=len(items))
            return 0
        published.inc(len(items))
        return receivers

    async def publish_alerts(self, events: list[RuleEvent]) -> None:
        """Alerts judged ahead of storing, to every API process (never raises)."""
        if not events:
            return
        try:
            await self.state.publish(channels.LIVE_ALERTS,
                                     _encode(ProvisionalAlerts(1, provisional(events))))
        except (StateError, OSError) as e:
            logs.still_running()
            publish_failures.inc()
            log.warning("provisional alerts not published", error=str(e), alerts=len(events))
