"""The pure decoder: field mapping, datum conversion, and a clear reject for every bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.decode import MAX_BATCH_ITEMS, Topics, decode_message

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
T = Topics()


def dec(topic: str, payload: bytes | dict | list, retained: bool = False):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_message(topic, raw, NOW, T, retained)


def test_native_fix_maps_every_field() -> None:
    out = dec("tether/v1/devices/w-1/loc", {
        "ts": "2026-06-01T19:59:00+08:00", "lat": 31.2, "lon": 121.4, "acc": 12.5, "alt": 4,
        "spd": 1.2, "hdg": 359, "batt": 77, "src": "fused", "mock": True, "seq": 9})
    (f,) = out.fixes
    assert out.device_id == "w-1" and not out.rejects
    assert f.fix_time == datetime(2026, 6, 1, 11, 59, tzinfo=UTC)
    assert (f.lat, f.lon, f.accuracy_m, f.altitude_m, f.speed_mps, f.heading_deg) == (
        31.2, 121.4, 12.5, 4, 1.2, 359)
    assert (f.battery_pct, f.source, f.mock, f.seq, f.datum) == (77, "fused", True, 9, "wgs84")


def test_epoch_seconds_may_be_fractional() -> None:
    (f,) = dec("tether/v1/devices/w/loc", {"ts": 1780315200.25, "lat": 1, "lon": 1}).fixes
    assert f.fix_time == datetime(2026, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize("crs", ["gcj02", "bd09"])
def test_chinese_datums_are_converted_and_the_original_kept(crs: str) -> None:
    (f,) = dec("tether/v1/devices/w/loc", {"ts": 1780315200, "lat": 31.2, "lon": 121.4,
                                           "crs": crs}).fixes
    assert f.datum == crs and (f.reported_lat, f.reported_lon) == (31.2, 121.4)
    assert (f.lat, f.lon) != (31.2, 121.4)


def test_batch_keeps_good_items_and_rejects_bad_ones_alone() -> None:
    out = dec("tether/v1/devices/w/loc", [
        {"ts": 1780315200, "lat": 1, "lon": 1}, {"ts": 1780315201, "lat": 100, "lon": 1},
        {"ts": 1780315202, "lat": 2, "lon": 2}])
    assert [f.lat for f in out.fixes] == [1, 2]
    (r,) = out.rejects
    assert r.reason.startswith("item 1: invalid") and b'"lat": 100' in r.payload


def test_batch_over_the_limit_is_rejected_whole() -> None:
    out = dec("tether/v1/devices/w/loc",
              [{"ts": 1780315200 + i, "lat": 1, "lon": 1} for i in range(MAX_BATCH_ITEMS + 1)])
    assert not out.fixes and "exceeds 500" in out.rejects[0].reason


def test_owntracks_location_maps_units_and_keeps_unknown_fields() -> None:
    out = dec("owntracks/jane/pixel", {
        "_type": "location", "tst": 1780315200, "lat": 31.2, "lon": 121.4, "acc": 9,
        "vel": 18, "cog": 270, "batt": 55, "bs": 2, "tid": "jp", "inregions": ["home"]})
    (f,) = out.fixes
    assert out.device_id == "jane.pixel"
    assert f.speed_mps == pytest.approx(5.0) and f.heading_deg == 270 and f.battery_pct == 55
    assert f.extra == {"bs": 2, "tid": "jp", "inregions": ["home"]}


@pytest.mark.parametrize(("topic", "payload", "etype"), [
    ("owntracks/jane/pixel", {"_type": "lwt", "tst": 1780315000}, "offline"),
    ("owntracks/jane/pixel/event", {"_type": "transition", "event": "leave", "tst": 1780315100,
                                    "lat": 1.0, "lon": 2.0, "desc": "home"},
     "owntracks_transition"),
    ("owntracks/jane/pixel/status", {"_type": "status", "android": {"loc": 0, "bo": 1}},
     "owntracks_status"),
])
def test_owntracks_non_location_messages_are_kept_as_events(topic: str, payload: dict,
                                                            etype: str) -> None:
    (e,) = dec(topic, payload).events
    assert e.type == etype and e.data["_type"] == payload["_type"]


def test_owntracks_commands_to_the_phone_are_not_device_data() -> None:
    out = dec("owntracks/jane/pixel/cmd", {"_type": "cmd", "action": "reportLocation"})
    assert not (out.fixes or out.events or out.rejects)


def test_status_live_is_an_event_and_retained_replay_is_not() -> None:
    assert dec("tether/v1/devices/w/status", b"online").events[0].type == "online"
    out = dec("tether/v1/devices/w/status", b"offline", retained=True)
    assert not (out.events or out.rejects)


def test_events_keep_extra_fields() -> None:
    (e,) = dec("tether/v1/devices/w/evt", {"type": "battery_low", "ts": 1780315200,
                                           "batt": 9, "volts": 3.4}).events
    assert e.battery_pct == 9 and e.data == {"volts": 3.4}


def test_roots_are_settings() -> None:
    topics = Topics("run42/tether/v1", "run42/owntracks")
    out = decode_message("run42/tether/v1/devices/w/loc", b'{"ts":1780315200,"lat":1,"lon":1}',
                         NOW, topics)
    assert len(out.fixes) == 1
    assert decode_message("tether/v1/devices/w/loc", b"{}", NOW, topics).rejects[0].reason == (
        "unknown topic")


# --- fuzz: anything at all yields fixes, events or rejects, and never raises -------------------

TOPICS = st.sampled_from([
    "tether/v1/devices/w-1/loc", "tether/v1/devices/w-1/evt", "tether/v1/devices/w-1/status",
    "owntracks/u/d", "owntracks/u/d/event", "owntracks/u/d/status", "tether/v1/devices/x",
    "tether/v1/devices/a b/loc", "elsewhere/x"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=6), max_leaves=20)
FIXLIKE = st.fixed_dictionaries({}, optional={
    "ts": st.one_of(st.floats(allow_nan=False), st.integers(), st.text(max_size=30)),
    "tst": st.one_of(st.floats(allow_nan=False), st.integers()),
    "_type": st.sampled_from(["location", "lwt", "status", "transition", "card", "encrypted"]),
    "type": st.sampled_from(["sos", "tamper", "nope"]),
    "lat": st.floats(allow_nan=False), "lon": st.floats(allow_nan=False),
    "acc": st.floats(allow_nan=False), "batt": st.integers(), "crs": st.text(max_size=6),
    "vel": st.floats(allow_nan=False), "hdg": st.floats(allow_nan=False)})


def _accounted(out, topic: str) -> None:
    assert out.fixes or out.events or out.rejects or topic.endswith("/cmd")
    for r in out.rejects:
        assert r.reason and len(r.payload) <= 64 * 1024
    for f in out.fixes:
        assert -90 <= f.lat <= 90 and -180 <= f.lon <= 180 and f.fix_time.tzinfo is not None


@settings(max_examples=400, deadline=None)
@given(TOPICS, st.binary(max_size=300))
def test_fuzz_bytes_never_raise(topic: str, payload: bytes) -> None:
    _accounted(decode_message(topic, payload, NOW, T), topic)


@settings(max_examples=400, deadline=None)
@given(TOPICS, st.one_of(JSON, FIXLIKE, st.lists(FIXLIKE, max_size=4)))
def test_fuzz_json_never_raises(topic: str, value: object) -> None:
    _accounted(decode_message(topic, json.dumps(value).encode(), NOW, T), topic)
