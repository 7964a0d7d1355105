"""Bounds on what devices send, applied where it is decoded (pure). Every number is bounded,
every timestamp relative to its receipt, and what is kept as jsonb is checked, so no later stage
(a sum in the rule state, a float4 column, jsonb, a recursive walk) can overflow or fail."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec


class DecodeError(ValueError):
    """Bad input, with a reason fit for the rejects list."""


# Epoch seconds outside this range are a device clock bug (often milliseconds sent as seconds).
_MIN_EPOCH = 946684800.0  # 2000-01-01
_MAX_EPOCH = 4102444800.0  # 2100-01-01
# Kept data (OwnTracks extras, event data) goes to jsonb and to officers' screens: nesting and
# integers are bounded here, so no later stage (jsonb, json.dumps, a recursive walk) can fail.
MAX_DEPTH = 16
MAX_INT = 2**63 - 1
MAX_REASON = 500

# Every number is bounded where it is decoded, so no later sum or product can overflow to inf
# (which msgspec would save as null in the rule state, and which float4 columns refuse).
Lat = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Lon = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Accuracy = Annotated[float, msgspec.Meta(ge=0, le=100_000)]  # 100 km: coarser is no fix
Altitude = Annotated[float, msgspec.Meta(ge=-20_000, le=100_000)]
Speed = Annotated[float, msgspec.Meta(ge=0, le=2_000)]  # m/s; above any vehicle on the ground
SpeedKmh = Annotated[float, msgspec.Meta(ge=0, le=7_200)]
Degrees = Annotated[float, msgspec.Meta(ge=0, le=360)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]  # the column is int8
EventType = Annotated[str, msgspec.Meta(max_length=64)]


@dataclass(frozen=True, slots=True)
class Limits:
    """Timestamps accepted, relative to when the message was received (the decoder is pure)."""

    max_age: timedelta = timedelta(days=400)  # the retention: older would be dropped at once
    max_future: timedelta = timedelta(minutes=5)


DEFAULT_LIMITS = Limits()


class Stamp:
    """Device timestamps to UTC, bounded to [received - retention, received + future limit]."""

    __slots__ = ("at", "newest", "oldest")

    def __init__(self, received_at: datetime, limits: Limits) -> None:
        self.at = received_at
        self.oldest = received_at - limits.max_age
        self.newest = received_at + limits.max_future

    def __call__(self, ts: datetime | float, where: str = "ts") -> datetime:
        if isinstance(ts, datetime):
            if ts.tzinfo is None:
                raise DecodeError(f"invalid: {where} needs a UTC offset (RFC 3339)"
                                  f" - at `$.{where}`")
            try:
                when = ts.astimezone(UTC)
            except (OverflowError, ValueError):  # year 1 at +14:00 is before year 1 in UTC
                raise DecodeError(f"invalid: {where} out of range - at `$.{where}`") from None
        else:
            if not _MIN_EPOCH <= ts <= _MAX_EPOCH:  # also refuses inf and nan
                raise DecodeError(f"invalid: {where} {ts!r} is not epoch seconds in 2000..2100"
                                  f" - at `$.{where}`")
            when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)
        if when > self.newest:
            raise DecodeError(f"future: {where} dated "
                              f"{(when - self.at).total_seconds():.0f} s after it was received")
        if when < self.oldest:
            raise DecodeError(f"invalid: {where} is older than the retention window - at "
                              f"`$.{where}`")
        return when


def check_kept(obj: Any, depth: int = 0) -> None:
    """Data kept as jsonb must be storable and printable: bounded depth and integers, finite
    numbers, no NUL (jsonb refuses it), no lone surrogate (UTF-8 cannot encode it)."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"invalid: extra data nested deeper than {MAX_DEPTH}")
    if isinstance(obj, str):
        if "\x00" in obj:
            raise DecodeError("invalid: NUL character in a string")
        if not obj.isascii():
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError:
                raise DecodeError("invalid: lone surrogate in a string") from None
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, int):
        if not -MAX_INT <= obj <= MAX_INT:
            raise DecodeError("invalid: integer out of range in extra data")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise DecodeError("invalid: non-finite number in extra data")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_kept(k, depth + 1)
            check_kept(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            check_kept(v, depth + 1)
