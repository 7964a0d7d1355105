"""Domain types shared by every stage of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

# Device ids (contract §1); the MQTT username and topic segment of a device.
DEVICE_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"


class Datum(StrEnum):
    WGS84 = "wgs84"
    GCJ02 = "gcj02"  # China's obfuscated datum, used by domestic map SDKs
    BD09 = "bd09"  # Baidu's datum, GCJ-02 shifted again


class DeviceKind(StrEnum):
    PHONE = "phone"
    WEARABLE = "wearable"
    VICTIM = "victim"


class Fix(msgspec.Struct, frozen=True, eq=False, gc=False):
    """One position report, always held in WGS-84 (the original is kept when converted).
    Immutable once decoded: a filter's verdict (`outlier`) is a copy (`msgspec.structs.
    replace`), never an edit. A frozen Struct, not a frozen dataclass: it is built once per
    fix on the hot path, and a frozen dataclass's __init__ cost five times as much (#10).
    Not tracked by the cyclic collector (gc=False): a fix holds only scalars and its decoded
    JSON `extra`, which cannot refer back to it, so it can never be part of a cycle."""

    device_id: str
    fix_time: datetime  # device clock, timezone-aware UTC
    lat: float
    lon: float
    received_at: datetime
    accuracy_m: float | None = None
    altitude_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    battery_pct: int | None = None
    source: str | None = None
    datum: Datum = Datum.WGS84  # datum the device reported in
    reported_lat: float | None = None  # as sent, when datum is not WGS-84
    reported_lon: float | None = None
    mock: bool | None = None
    seq: int | None = None
    outlier: bool = False  # an impossible jump: stored, but rules ignore it
    extra: dict[str, Any] | None = None  # fields beyond the contract (OwnTracks extras)


@dataclass(frozen=True, slots=True, eq=False)
class DeviceEvent:
    """A non-positional report: strap, battery, SOS, connectivity, OwnTracks status..."""

    device_id: str
    event_time: datetime
    type: str
    received_at: datetime
    lat: float | None = None
    lon: float | None = None
    battery_pct: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Reject:
    """A message (or one item of a batch) that could not be accepted, kept for operators."""

    topic: str
    payload: bytes  # raw bytes, truncated to the store's limit
    reason: str
    received_at: datetime
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """A monitoring order: the subject's rules run in [starts_at, ends_at) (the end is the
    early end when there was one)."""

    id: int
    starts_at: datetime
    ends_at: datetime

    def in_force(self, t: datetime) -> bool:
        return self.starts_at <= t < self.ends_at


@dataclass(frozen=True, slots=True)
class Leave:
    """An approved leave: from `starts_at` to `ends_at` (or the return) the destination is the
    subject's inclusion zone; the subject's own inclusion zones and curfews are suspended until
    `suspended_until` (the end plus the grace period to travel back, or the return)."""

    id: int
    starts_at: datetime
    ends_at: datetime
    suspended_until: datetime
    returned: bool = False
    arrive_by: datetime | None = None  # the destination binds from then (travel time)

    def suspends(self, t: datetime) -> bool:
        return self.starts_at <= t < self.suspended_until

    def travelling(self, t: datetime) -> bool:
        return self.arrive_by is not None and t < self.arrive_by


@dataclass(frozen=True, slots=True)
class Subject:
    """What the rules need to know of a supervised person."""

    id: int
    jurisdiction_path: tuple[int, ...]  # root first, own jurisdiction last
    timezone: str
    devices: dict[str, DeviceKind]
    orders: tuple[Order, ...] | None = None  # None: no order recorded, monitored without limit
    leaves: tuple[Leave, ...] = ()  # approved ones

    def monitored(self, t: datetime) -> bool:
        """Rules run only while an order is in force, once a subject has orders."""
        return self.orders is None or any(o.in_force(t) for o in self.orders)

    def on_leave(self, t: datetime) -> bool:
        return any(lv.suspends(t) for lv in self.leaves)

    def travelling(self, leave_id: int, t: datetime) -> bool:
        """On the way to a leave's destination, which does not bind yet."""
        return any(lv.id == leave_id and lv.travelling(t) for lv in self.leaves)


@dataclass(frozen=True, slots=True)
class VictimLink:
    """A victim's device that a subject must stay `radius_m` away from."""

    id: int
    subject_id: int
    device_id: str
    radius_m: float
