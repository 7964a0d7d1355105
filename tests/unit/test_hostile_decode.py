"""Hostile device input: every value bounded where it is decoded, every failure a reject; the jump
filter re-anchors; rule state that does not decode is rebuilt, and never holds inf."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from geofence.rules import Rule, RuleSettings, SubjectState, step
from geofence.types import Fix
from ingest.decode import Limits, Topics, decode_message
from ingest.filters import FilterSettings, JumpState, LastGood, judge_jumps
from ingest.rules_runner import load_state

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EPOCH = NOW.timestamp()
T = Topics()
LOC, EVT, OT = "tether/v1/devices/w/loc", "tether/v1/devices/w/evt", "owntracks/u/d"


DEFAULT = Limits()


def dec(topic: str, payload: bytes | dict | list, limits: Limits = DEFAULT):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_message(topic, raw, NOW, T, False, limits)


def only_reject(out) -> str:
    assert not out.fixes and not out.events, "a hostile message produced data"
    (r,) = out.rejects
    assert "\x00" not in r.reason and len(r.reason) <= 500
    r.reason.encode("utf-8")  # storable as text
    return r.reason


# (topic, raw payload, expected part of the reason)
HOSTILE = [
    (LOC, b'{"ts":"0001-01-01T00:00:00+14:00","lat":31.2,"lon":121.4}', "out of range"),
    (LOC, b'{"ts":"9999-12-31T23:59:59-14:00","lat":31.2,"lon":121.4}', "out of range"),
    (LOC, b"[" * 40_000, "nested too deeply"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"x":' + b"[" * 40_000 + b"]}", "deeply"),
    (EVT, b"{" * 30_000, "not JSON"),
    (OT, b'{"_type":"location","a":' + b"[" * 40_000 + b"]}", "deeply"),
    (OT, b'{"_type":"location","tst":1780315200,"lat":1,"lon":1,"a":'
     + b"[" * 20 + b"]" * 20 + b"}", "nested deeper than 16"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"seq":9223372036854775808}', "<= 92233"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"acc":1e308}', "<= 100000"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"acc":1e400}', "out of range"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"alt":-1e308}', ">= -20000"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"spd":1e300}', "<= 2000"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"hdg":1e300}', "<= 360"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"batt":1e300}', "Expected `int"),
    (LOC, b'{"ts":1e308,"lat":31.2,"lon":121.4}', "epoch seconds"),
    (LOC, b'{"ts":-1e308,"lat":31.2,"lon":121.4}', "epoch seconds"),
    (LOC, b'{"ts":NaN,"lat":31.2,"lon":121.4}', "not JSON"),
    (LOC, b'{"ts":1780315200,"lat":Infinity,"lon":121.4}', "not JSON"),
    (LOC, b'{"ts":"2024-01-01T00:00:00Z","lat":31.2,"lon":121.4}', "retention"),
    (LOC, b'{"ts":"2027-01-01T00:00:00Z","lat":31.2,"lon":121.4}', "future"),
    (LOC, b'{"ts":1780315200,"lat":31.2,"lon":121.4,"src":"\\ud800"}', "not JSON"),
    (OT, b'{"_type":"location","tst":1780315200,"lat":1,"lon":1,"vel":1e308}', "<= 7200"),
    (OT, b'{"_type":"location","tst":1e308,"lat":1,"lon":1}', "epoch seconds"),
    (OT, b'{"_type":"location","tst":1780315200,"lat":1,"lon":1,"x":"a\\u0000b"}', "NUL"),
    (OT, b'{"_type":"location","tst":1780315200,"lat":1,"lon":1,"x":"\\udc00"}', "not JSON"),
    (OT, b'{"_type":"location","tst":1780315200,"lat":1,"lon":1,"x":' + b"9" * 5000 + b"}",
     "out of range"),
    (OT, b'{"_type":"transition","tst":1e308}', "epoch seconds"),
    (OT, b'{"_type":"status","\\u0000":1}', "NUL"),
    (OT, b'{"_type":"card","x":1e308,"y":' + b"1" * 30 + b"}", "integer out of range"),
    (EVT, b'{"type":"sos","ts":"0001-01-01T00:00:00+14:00"}', "out of range"),
    (EVT, b'{"type":"sos","ts":1780315200,"x":"\\u0000"}', "NUL"),
    (EVT, b'{"type":"' + b"s" * 10_000 + b'","ts":1780315200}', "length <= 64"),
    (EVT, b'{"type":"sos","ts":1780315200,"lat":1e308,"lon":0}', "<= 90"),
]


@pytest.mark.parametrize(("topic", "payload", "part"), HOSTILE,
                         ids=[f"{i}" for i in range(len(HOSTILE))])
def test_hostile_payload_is_one_reject_with_a_reason(topic: str, payload: bytes,
                                                     part: str) -> None:
    reason = only_reject(dec(topic, payload))
    assert part in reason


def test_an_item_of_a_batch_that_overflows_is_rejected_alone() -> None:
    out = dec(LOC, [{"ts": "0001-01-01T00:00:00+14:00", "lat": 1, "lon": 1},
                    {"ts": EPOCH, "lat": 1, "lon": 1}])
    assert len(out.fixes) == 1 and out.rejects[0].reason.startswith("item 0: invalid: ts out")


def test_timestamps_are_bounded_by_retention_and_the_future_limit() -> None:
    limits = Limits(max_age=timedelta(days=10), max_future=timedelta(seconds=60))
    ok = [EPOCH - 9 * 86400, EPOCH, EPOCH + 59]
    bad = [EPOCH - 11 * 86400, EPOCH + 61]
    for ts in ok:
        assert dec(LOC, {"ts": ts, "lat": 1, "lon": 1}, limits).fixes
    assert "retention" in only_reject(dec(LOC, {"ts": bad[0], "lat": 1, "lon": 1}, limits))
    assert only_reject(dec(LOC, {"ts": bad[1], "lat": 1, "lon": 1}, limits)).startswith(
        "future: ts dated 61 s")


def test_values_at_the_bounds_are_kept() -> None:
    (f,) = dec(LOC, {"ts": EPOCH, "lat": 1, "lon": 1, "acc": 100_000, "alt": -20_000,
                     "spd": 2000, "seq": 2**63 - 1, "hdg": 360}).fixes
    assert (f.accuracy_m, f.altitude_m, f.speed_mps, f.seq) == (100_000, -20_000, 2000, 2**63 - 1)


# --- the jump filter re-anchors ---------------------------------------------------------------

F = FilterSettings(confirm_fixes=3)
KM = 1 / 111.32  # degrees of latitude per km


def fix(sec: float, lat: float, acc: float = 10) -> Fix:
    return Fix("d", NOW + timedelta(seconds=sec), lat, 121.4, NOW, accuracy_m=acc)


def test_fixes_agreeing_with_each_other_not_the_reference_re_anchor() -> None:
    forged = LastGood(NOW, 31.2 + 1000 * KM, 121.4, 10)  # accepted earlier: 1,000 km away
    track = [fix(1 + i, 31.2 + i * 0.01 * KM) for i in range(6)]  # walking, 10 m a second
    state, track = judge_jumps(JumpState(forged), track, F)
    assert [f.outlier for f in track] == [False] * 6  # the first three confirmed each other
    assert state.last is not None and state.last.fix_time == track[-1].fix_time
    assert state.candidates == []


def test_candidates_carry_over_between_batches_bounded() -> None:
    forged = LastGood(NOW, 31.2 + 1000 * KM, 121.4, 10)
    state = JumpState(forged)
    first = [fix(1, 31.2)]
    state, first = judge_jumps(state, first, F)
    assert first[0].outlier and len(state.candidates) == 1 and state.last == forged
    second = [fix(2, 31.2)]
    state, second = judge_jumps(state, second, F)
    assert second[0].outlier and len(state.candidates) == 2  # still short of 3
    third = [fix(3, 31.2)]
    state, third = judge_jumps(state, third, F)
    assert not third[0].outlier and state.last.fix_time == third[0].fix_time
    assert state.candidates == []


def test_fixes_that_disagree_with_each_other_do_not_re_anchor() -> None:
    ref = LastGood(NOW, 31.2, 121.4, 10)
    # Three spikes, each far from the reference and from each other: all stay outliers.
    track = [fix(1, 31.2 + 500 * KM), fix(2, 31.2 - 500 * KM), fix(3, 31.2 + 900 * KM)]
    state, track = judge_jumps(JumpState(ref), track, F)
    assert all(f.outlier for f in track) and state.last == ref
    assert len(state.candidates) <= F.confirm_fixes - 1


def test_one_forged_far_fix_after_a_good_reference_hides_nothing() -> None:
    track = [fix(0, 31.2), fix(1, 31.2 + 1000 * KM)] + [fix(2 + i, 31.2) for i in range(3)]
    _, track = judge_jumps(JumpState(), track, F)
    assert [f.outlier for f in track] == [False, True, False, False, False]


def test_a_late_upload_neither_adds_candidates_nor_re_anchors() -> None:
    ref = LastGood(NOW + timedelta(hours=1), 31.2, 121.4, 10)
    late = [fix(i, 31.2 + 300 * KM + i * 0.01 * KM) for i in range(5)]
    state, late = judge_jumps(JumpState(ref), late, F)
    assert state.last == ref and state.candidates == []


# --- rule state -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"not json", b'{"rules":{"x":{"acc":null}}}', b'{"tracks":' + b"[" * 5000 + b"}",
    b'{"ticked":"soon"}', b"\xff\xfe", b"[]"])
def test_unreadable_rule_state_is_rebuilt_fresh(raw: bytes) -> None:
    assert load_state(7, raw) == SubjectState()


def test_infinite_accuracy_never_reaches_the_rule_state() -> None:
    s, r = RuleSettings(), Rule()
    for t in range(3):
        step(r, 5.0, s.accuracy(math.inf), float(t), s)
        step(r, 5.0, s.accuracy(1e308), float(t), s)
    encoded = msgspec.json.encode(SubjectState(rules={"z": r}))
    assert b"null" not in encoded and math.isfinite(r.acc) and math.isfinite(r.depth)
    assert load_state(1, encoded).rules["z"] == r
