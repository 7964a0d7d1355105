"""Property tests of the geometric and schedule invariants."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pyproj
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, shape

from geofence.rules import Rule, RuleSettings, step
from geofence.schedule import Window, boundaries, in_force, parse_schedule, zone_info
from geofence.zones import Zone, ZoneError, ZoneIndex, compile_zone
from tests.unit.scenario import EPOCH, square

GEOD = pyproj.Geod(ellps="WGS84")
lat = st.floats(-60, 60)
lon = st.floats(-179, 179)


def circle(clat: float, clon: float, r: float) -> Zone:
    return Zone(1, "c", "exclusion", {"type": "Point", "coordinates": [clon, clat]}, 1, EPOCH,
                radius_m=r)


@settings(max_examples=300, deadline=None)
@given(lat, lon, st.floats(10, 25_000), st.floats(0, 360), st.floats(0, 1.6))
def test_circle_depth_matches_the_ellipsoid_within_a_metre(clat, clon, r, az, frac) -> None:
    """Zones up to 50 km across: depth = radius - geodesic distance, to 1 m."""
    c = compile_zone(circle(clat, clon, r))
    plon, plat, _ = GEOD.fwd(clon, clat, az, r * frac)
    expected = r - r * frac
    assert abs(c.depth_m(*c.frame.to_m(plon, plat)) - expected) < 1.0


@settings(max_examples=200, deadline=None)
@given(st.floats(-50, 50), st.floats(-170, 170), st.floats(50, 20_000), st.floats(-1.5, 1.5),
       st.floats(-1.5, 1.5))
def test_polygon_depth_sign_is_containment(clat, clon, half, fx, fy) -> None:
    geom = square(half, (clat, clon))
    c = compile_zone(Zone(1, "s", "exclusion", geom, 1, EPOCH))
    plat = clat + fy * half / 111_320
    plon = clon + fx * half / (111_320 * max(0.2, abs(math.cos(math.radians(clat)))))
    d = c.depth_m(*c.frame.to_m(plon, plat))
    assume(abs(d) > 1.0)  # on the edge the sign is a matter of float rounding

    assert (d > 0) == shape(geom).contains(Point(plon, plat))


@given(st.lists(st.floats(-500, 500), min_size=1, max_size=50), st.floats(1, 100))
def test_compliant_evidence_never_opens_a_breach(depths, acc) -> None:
    r, s = Rule(), RuleSettings()
    for i, d in enumerate(depths):
        out = step(r, min(d, 0.0), acc, float(i * 60), s)
        assert out is None or out[0] == "clear"
    assert r.st == "clear"


@given(st.lists(st.floats(0.1, 5), min_size=1, max_size=40))
def test_shallow_wobbles_under_30m_accuracy_never_confirm(depths) -> None:
    r, s = Rule(), RuleSettings()
    for i, d in enumerate(depths[:4]):  # up to 4 in a row, a few metres over the edge
        assert step(r, d, 30.0, float(i * 60), s) is None


windows_st = st.lists(st.fixed_dictionaries({
    "days": st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True),
    "start": st.sampled_from(["00:00", "06:30", "08:00", "21:45", "22:00", "23:59"]),
    "end": st.sampled_from(["00:00", "06:00", "12:15", "22:00", "23:30"])}), min_size=1,
    max_size=3)
zones_st = st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/London", "UTC",
                            "Australia/Lord_Howe"])


@settings(max_examples=200, deadline=None)
@given(windows_st, zones_st, st.integers(0, 365 * 24 * 4))
def test_in_force_changes_only_at_boundaries(raw, tz_name, quarter_hours) -> None:
    windows, tz = parse_schedule(raw), zone_info(tz_name)
    t0 = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=15 * quarter_hours)
    t1 = t0 + timedelta(hours=6)
    marks = [t for t, _ in boundaries(windows, tz, t0, t1)]
    prev, t = in_force(windows, tz, t0), t0
    while t < t1:
        t += timedelta(minutes=1)
        now = in_force(windows, tz, t)
        if now != prev:
            assert any(t - timedelta(minutes=1) < m <= t for m in marks), (t, marks)
        prev = now


@given(st.sampled_from([{"days": [7], "start": "22:00", "end": "06:00"},
                        {"days": [1], "start": "25:00", "end": "06:00"},
                        {"days": [1], "start": "22:00"}, {"days": [], "start": "1", "end": "2"},
                        {"days": [True], "start": "22:00", "end": "06:00"}]))
def test_malformed_windows_are_refused_with_a_reason(w) -> None:
    try:
        parse_schedule([w])
    except ValueError as e:
        assert "window 0" in str(e)
    else:
        raise AssertionError("accepted")


def test_window_overnight_flag() -> None:
    assert Window(0, *[datetime.strptime(x, "%H:%M").time() for x in ("22:00", "06:00")]).overnight


def test_zone_errors_name_the_problem() -> None:
    bad = [({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, None, "Polygon"),
           ({"type": "Point", "coordinates": [0, 0]}, None, "radius_m"),
           ({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [0, 1], [0, 0]]]}, None,
            "-180..180"),
           ({"type": "Polygon", "coordinates": "x"}, None, "GeoJSON")]
    for geom, r, part in bad:
        try:
            compile_zone(Zone(1, "z", "exclusion", geom, 1, EPOCH, radius_m=r))
        except ZoneError as e:
            assert part in str(e), (str(e), part)
        else:
            raise AssertionError(f"accepted {geom}")


@settings(max_examples=200, deadline=None)
@given(windows_st, zones_st, st.integers(0, 365 * 24 * 4))
def test_next_boundary_is_the_first_of_the_boundaries(raw, tz_name, quarter_hours) -> None:
    from geofence.schedule import next_boundary
    windows, tz = parse_schedule(raw), zone_info(tz_name)
    t0 = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=15 * quarter_hours)
    expected = boundaries(windows, tz, t0, t0 + timedelta(days=8))
    assert next_boundary(windows, tz, t0) == (expected[0][0] if expected else None)


@settings(max_examples=100, deadline=None)
@given(windows_st, zones_st, st.lists(st.integers(0, 14 * 24 * 60), min_size=1, max_size=30))
def test_the_boundary_memo_answers_as_next_boundary_does(raw, tz_name, minutes) -> None:
    """The memo (one schedule shared by thousands of subjects) never returns a stale edge,
    whatever order the times are asked in (workers' clocks and late batches go back)."""
    from geofence.schedule import BoundaryMemo, next_boundary
    windows, tz = parse_schedule(raw), zone_info(tz_name)
    memo = BoundaryMemo(size=2)
    for m in minutes:
        t = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=m, seconds=m % 7)
        assert memo.next(windows, tz, t) == next_boundary(windows, tz, t)


def test_an_index_reuses_unchanged_zones_and_recompiles_changed_ones() -> None:
    a = Zone(1, "a", "exclusion", square(100), 1, EPOCH)
    b = Zone(2, "b", "exclusion", square(200), 1, EPOCH)
    first = ZoneIndex([a, b])
    moved = Zone(2, "b", "exclusion", square(300), 1, EPOCH)
    second = ZoneIndex([a, moved], first)
    assert second.by_id[1] is first.by_id[1]
    assert second.by_id[2] is not first.by_id[2] and second.by_id[2].zone == moved
