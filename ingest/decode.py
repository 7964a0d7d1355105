"""Pure decoding of device messages (contract §1): topic + bytes in, fixes/events/rejects out.

Never raises for bad input: every problem becomes a `Reject` with a reason an operator can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from geofence.datum import to_wgs84
from geofence.types import DEVICE_ID_PATTERN, Datum, DeviceEvent, Fix, Reject
from ingest.bounds import (
    DEFAULT_LIMITS,
    MAX_REASON,
    Accuracy,
    Altitude,
    DecodeError,
    Degrees,
    EventType,
    Lat,
    Limits,
    Lon,
    Percent,
    Seq,
    Speed,
    SpeedKmh,
    Stamp,
    check_kept,
)

MAX_PAYLOAD_BYTES = 256 * 1024  # larger messages are rejected whole
MAX_BATCH_ITEMS = 500
KEPT_PAYLOAD_BYTES = 64 * 1024  # how much of a rejected message is kept
DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
EVENT_TYPES = frozenset({
    "strap_open", "strap_closed", "tamper", "battery_low", "charger_on", "charger_off",
    "power_off", "sos", "heartbeat",
})


class _NativeFix(msgspec.Struct):
    ts: datetime | float
    lat: Lat
    lon: Lon
    acc: Accuracy | None = None
    alt: Altitude | None = None
    spd: Speed | None = None
    hdg: Degrees | None = None
    batt: Percent | None = None
    src: Literal["gps", "wifi", "cell", "fused"] | None = None
    crs: Literal["wgs84", "gcj02", "bd09"] = "wgs84"
    mock: bool | None = None
    seq: Seq | None = None


class _NativeEvent(msgspec.Struct):
    type: EventType
    ts: datetime | float
    lat: Lat | None = None
    lon: Lon | None = None
    batt: Percent | None = None


class _OTLocation(msgspec.Struct):
    tst: float
    lat: Lat
    lon: Lon
    acc: Accuracy | None = None
    alt: Altitude | None = None
    vel: SpeedKmh | None = None
    cog: Degrees | None = None
    batt: Percent | None = None


_fix_decoder = msgspec.json.Decoder(_NativeFix)
_OT_LOCATION_KEYS = frozenset({"_type", "tst", "lat", "lon", "acc", "alt", "vel", "cog", "batt"})
_NATIVE_EVENT_KEYS = frozenset({"type", "ts", "lat", "lon", "batt"})


@dataclass(frozen=True, slots=True)
class Topics:
    root: str = "tether/v1"
    owntracks_root: str = "owntracks"


@dataclass(slots=True)
class Decoded:
    device_id: str | None = None
    fixes: list[Fix] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def decode_message(
    topic: str, payload: bytes, received_at: datetime, topics: Topics, retained: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Decoded:
    out = Decoded()

    def reject(reason: str, raw: bytes = payload) -> Decoded:
        out.rejects.append(Reject(topic, bytes(raw[:KEPT_PAYLOAD_BYTES]), _printable(reason),
                                  received_at, out.device_id))
        return out

    try:
        route, device_id = _route(topic, topics)
    except DecodeError as e:
        return reject(str(e))
    out.device_id = device_id
    if route == "ignore":
        return out
    if len(payload) > MAX_PAYLOAD_BYTES:
        return reject(f"oversize: {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if not payload.strip():
        return reject("empty payload")
    stamp = Stamp(received_at, limits)
    try:
        if route == "loc":
            _native_fixes(payload, device_id, received_at, stamp, out, reject)
        elif route == "evt":
            _native_events(payload, device_id, received_at, stamp, out, reject)
        elif route == "status":
            _status(payload, device_id, received_at, retained, out)
        else:
            _owntracks(route, payload, device_id, received_at, stamp, out)
    except Exception as e:  # the contract: nothing a device sends may escape as an exception
        out.fixes, out.events = [], []
        return reject(_reason(e))
    return out


def _printable(reason: str) -> str:
    """A reason is stored as text: no NUL, no lone surrogate, bounded."""
    reason = reason[:MAX_REASON].replace("\x00", "\\0")
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


def _route(topic: str, topics: Topics) -> tuple[str, str]:
    native = topics.root + "/devices/"
    ot = topics.owntracks_root + "/"
    if topic.startswith(native):
        parts = topic[len(native):].split("/")
        if len(parts) != 2 or parts[1] not in ("loc", "evt", "status"):
            raise DecodeError("unknown topic: expected devices/{device_id}/loc|evt|status")
        return parts[1], _device_id(parts[0])
    if topic.startswith(ot):
        parts = topic[len(ot):].split("/")
        if len(parts) < 2:
            raise DecodeError("unknown topic: expected owntracks/{user}/{device}")
        device_id = _device_id(f"{parts[0]}.{parts[1]}")
        # Commands go *to* the phone; Tether sees them only because it subscribes to the tree.
        sub = "/".join(parts[2:])
        return ("ignore" if sub == "cmd" else "ot:" + sub), device_id
    raise DecodeError("unknown topic")


def _device_id(candidate: str) -> str:
    if not DEVICE_ID.fullmatch(candidate):
        raise DecodeError(f"bad device id: must match {DEVICE_ID_PATTERN}")
    return candidate


def _reason(e: BaseException) -> str:
    if isinstance(e, msgspec.ValidationError):  # a subclass of DecodeError: test it first
        return f"invalid: {e}"
    if isinstance(e, msgspec.DecodeError):
        return f"not JSON: {e}"
    if isinstance(e, DecodeError):
        return str(e)
    if isinstance(e, RecursionError):
        return "invalid: nested too deeply"
    # Not a case we foresaw (OverflowError, ValueError, ...): still a reject, never a crash.
    return f"undecodable: {type(e).__name__}: {e}"


def _position(lat: float, lon: float) -> None:
    if lat == 0.0 and lon == 0.0:
        raise DecodeError("invalid: position 0,0 (no fix) - at `$.lat`")


def _items(payload: bytes) -> list[msgspec.Raw]:
    items = msgspec.json.decode(payload, type=list[msgspec.Raw])
    if len(items) > MAX_BATCH_ITEMS:
        raise DecodeError(f"invalid: batch of {len(items)} items exceeds {MAX_BATCH_ITEMS}")
    if not items:
        raise DecodeError("invalid: empty batch")
    return items


def _each(payload: bytes, one: Any, reject: Any) -> None:
    """Decode an object or an array of them; a bad item is rejected alone, the rest kept."""
    if payload.lstrip()[:1] != b"[":
        one(payload)
        return
    for i, raw in enumerate(_items(payload)):
        try:
            one(bytes(raw))
        except Exception as e:  # one bad item is rejected alone, whatever went wrong
            reject(f"item {i}: {_reason(e)}", bytes(raw))


def _native_fixes(payload: bytes, device_id: str, received_at: datetime, stamp: Stamp,
                  out: Decoded, reject: Any) -> None:
    def one(raw: bytes) -> None:
        f = _fix_decoder.decode(raw)
        _position(f.lat, f.lon)
        datum = {} if f.crs == "wgs84" else {"datum": Datum(f.crs), "reported_lat": f.lat,
                                              "reported_lon": f.lon}
        lat, lon = (f.lat, f.lon) if not datum else to_wgs84(f.lat, f.lon, f.crs)
        out.fixes.append(Fix(device_id, stamp(f.ts), lat, lon, received_at, accuracy_m=f.acc,
                             altitude_m=f.alt, speed_mps=f.spd, heading_deg=f.hdg,
                             battery_pct=f.batt, source=f.src, mock=f.mock, seq=f.seq, **datum))

    _each(payload, one, reject)


def _native_events(payload: bytes, device_id: str, received_at: datetime, stamp: Stamp,
                   out: Decoded, reject: Any) -> None:
    def one(raw: bytes) -> None:
        obj = msgspec.json.decode(raw)
        e = msgspec.convert(obj, _NativeEvent)
        if e.type not in EVENT_TYPES:
            raise DecodeError(f"invalid: unknown event type {e.type!r} - at `$.type`")
        extra = {k: v for k, v in obj.items() if k not in _NATIVE_EVENT_KEYS}
        check_kept(extra)
        out.events.append(DeviceEvent(device_id, stamp(e.ts), e.type, received_at,
                                      e.lat, e.lon, e.batt, extra))

    _each(payload, one, reject)


def _status(payload: bytes, device_id: str, received_at: datetime, retained: bool,
            out: Decoded) -> None:
    state = payload.strip().decode("ascii", "replace")
    if state not in ("online", "offline"):
        raise DecodeError("invalid: status must be 'online' or 'offline'")
    # A retained status is the broker replaying a state already received live; storing it again
    # on every (re)subscribe would invent connectivity events.
    if not retained:
        out.events.append(DeviceEvent(device_id, received_at, state, received_at))


def _owntracks(route: str, payload: bytes, device_id: str, received_at: datetime,
               stamp: Stamp, out: Decoded) -> None:
    obj = msgspec.json.decode(payload)
    if not isinstance(obj, dict):
        raise DecodeError("invalid: OwnTracks payload must be a JSON object")
    check_kept(obj)  # kept whole (extras, events): small, and only OwnTracks pays for it
    kind = obj.get("_type")
    if not isinstance(kind, str):
        raise DecodeError("invalid: OwnTracks payload has no _type")
    if kind == "location":
        loc = msgspec.convert(obj, _OTLocation)
        _position(loc.lat, loc.lon)
        extra = {k: v for k, v in obj.items() if k not in _OT_LOCATION_KEYS}
        out.fixes.append(Fix(
            device_id, stamp(loc.tst, "tst"), loc.lat, loc.lon, received_at, accuracy_m=loc.acc,
            altitude_m=loc.alt, speed_mps=None if loc.vel is None else loc.vel / 3.6,
            heading_deg=loc.cog, battery_pct=loc.batt, extra=extra or None))
    elif kind == "encrypted":
        raise DecodeError("encrypted OwnTracks payload: Tether holds no key for it")
    else:
        # lwt means the phone dropped off; transition/status/step... are kept whole as events.
        etype = "offline" if kind == "lwt" else f"owntracks_{kind}"
        tst = obj.get("tst")
        when = received_at
        if kind == "transition" and isinstance(tst, int | float) and not isinstance(tst, bool):
            when = stamp(tst, "tst")
        lat, lon = obj.get("lat"), obj.get("lon")
        ok = (isinstance(lat, int | float) and isinstance(lon, int | float)
              and not isinstance(lat, bool) and not isinstance(lon, bool)
              and -90 <= lat <= 90 and -180 <= lon <= 180)
        out.events.append(DeviceEvent(device_id, when, etype, received_at,
                                      lat if ok else None, lon if ok else None,
                                      data={**obj, "topic_suffix": route[3:]}))
