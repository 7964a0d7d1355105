"""Pure filters (future, impossible jumps) and the GCJ-02/BD-09 conversions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from geofence.datum import bd09_to_gcj02, gcj02_to_bd09, gcj02_to_wgs84, in_china, wgs84_to_gcj02
from geofence.geodesy import haversine_m
from geofence.types import Fix
from ingest.filters import FilterSettings, LastGood, flag_outliers, reject_future

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
F = FilterSettings()


def fix(sec: float, lat: float, lon: float = 121.4, acc: float | None = 10) -> Fix:
    return Fix("d", NOW + timedelta(seconds=sec), lat, lon, NOW + timedelta(hours=1),
               accuracy_m=acc)


def test_future_fixes_beyond_five_minutes_are_rejected_with_the_reason() -> None:
    fixes = [Fix("d", NOW + timedelta(seconds=s), 1, 1, NOW) for s in (-30, 299, 301)]
    kept, rejected = reject_future(fixes, "t", b"p", F)
    assert [f.fix_time for f in kept] == [fixes[0].fix_time, fixes[1].fix_time]
    assert rejected[0].reason == "future: fix dated 301 s after it was received"


def test_a_spike_is_flagged_but_the_fix_after_it_is_not() -> None:
    track = [fix(0, 31.2), fix(10, 31.5), fix(20, 31.2001)]  # 33 km in 10 s, then back
    newest, track = flag_outliers(None, track, F)
    assert [f.outlier for f in track] == [False, True, False]
    assert newest is not None and newest.fix_time == track[2].fix_time


def test_jumps_are_judged_against_the_devices_last_good_fix() -> None:
    last = LastGood(NOW, 31.2, 121.4, 10)
    track = [fix(5, 31.3)]  # 11 km in 5 s
    _, track = flag_outliers(last, track, F)
    assert track[0].outlier


def test_a_coarse_fix_is_imprecise_not_impossible() -> None:
    track = [fix(0, 31.2), fix(10, 31.2 + 2000 / 111_320, acc=2500)]  # 2 km off, 2.5 km acc
    _, track = flag_outliers(None, track, F)
    assert not any(f.outlier for f in track)


def test_a_late_upload_is_judged_among_itself_not_against_newer_state() -> None:
    last = LastGood(NOW + timedelta(hours=1), 40.0, 116.4, 10)  # the device is now in Beijing
    track = [fix(0, 31.2), fix(60, 31.2005)]  # an hour earlier it was in Shanghai, walking
    _, track = flag_outliers(last, track, F)
    assert not any(f.outlier for f in track)


china = st.tuples(st.floats(18, 53), st.floats(74, 134))


@given(china)
def test_gcj02_round_trip_is_within_a_centimetre(p: tuple[float, float]) -> None:
    back = gcj02_to_wgs84(*wgs84_to_gcj02(*p))
    assert haversine_m(*p, *back) < 0.01


@given(china)
def test_gcj02_shift_is_hundreds_of_metres_in_china(p: tuple[float, float]) -> None:
    assert 10 < haversine_m(*p, *wgs84_to_gcj02(*p)) < 1200


@given(china)
def test_bd09_round_trip_is_within_a_metre(p: tuple[float, float]) -> None:
    assert haversine_m(*p, *bd09_to_gcj02(*gcj02_to_bd09(*p))) < 1.0


@given(st.floats(-90, 90), st.floats(-180, 180))
def test_outside_china_gcj02_is_wgs84(lat: float, lon: float) -> None:
    if not in_china(lat, lon):
        assert gcj02_to_wgs84(lat, lon) == (lat, lon)
