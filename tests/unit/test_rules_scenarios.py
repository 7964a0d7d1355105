"""Table-driven scenarios: a track in, the expected breach and clear events out."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from geofence.rules import RuleSettings
from geofence.types import DeviceEvent, DeviceKind, VictimLink
from tests.unit.scenario import BASE, Run, fix, offset, subject, zone

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def test_parked_20m_outside_an_edge_for_24h_with_wobbles_raises_nothing() -> None:
    run = Run([zone(1, buffer_m=None)])  # a 200 m square; its north edge is 100 m from BASE
    rng = random.Random(11)
    fixes = []
    for i in range(24 * 60):
        depth = -20 + rng.gauss(0, 6)  # parked 20 m north of the edge, GPS noise
        if i % 97 == 0 or i % 331 in (0, 1, 2):
            depth = rng.uniform(2, 5)  # wobbles a few metres over the edge, some in a row
        fixes.append(fix(T0 + i * MIN, offset(100 - depth, 0), acc=30))
    assert sum(1 for f in fixes if offset(100, 0)[0] > f.lat) > 20  # wobbles did happen
    run.track(fixes)
    assert run.events == []


def test_a_walk_straight_in_raises_on_the_first_confident_fix() -> None:
    run = Run([zone(1)])
    # From 200 m north of the edge, 13 m per fix, accuracy 8 m (10 m floor): the fix 92 m north
    # of the centre is 8 m in (probable, no alert), the next, 21 m in, is the first confident.
    fixes = [fix(T0 + i * timedelta(seconds=10), offset(300 - 13 * i, 0), acc=8)
             for i in range(25)]
    run.track(fixes[:17])
    assert run.events == [] and run.state.rules["z1:w"].st == "pending"
    run.track(fixes[17:])
    (opened,) = run.opened()
    assert opened.at == fixes[17].fix_time
    assert (opened.type, opened.confidence, opened.zone_id, opened.late) == (
        "exclusion_entry", "confident", 1, False)


def test_probable_breach_needs_confirmation_and_compliance_cancels_it() -> None:
    run = Run([zone(1)])
    inside_5m = offset(95, 0)
    outside = offset(150, 0)
    run.track([fix(T0, inside_5m, acc=30), fix(T0 + MIN, outside, acc=30)])
    assert run.events == []  # one probable fix, then compliance: nothing
    run.track([fix(T0 + i * MIN, offset(80, 0), acc=30) for i in range(2, 9)])  # 20 m deep
    (e,) = run.opened()
    assert e.confidence == "probable"


def test_a_breach_ends_only_after_sustained_compliance() -> None:
    run = Run([zone(1)])
    run.track([fix(T0, offset(0, 0))])
    out = offset(300, 0)
    run.track([fix(T0 + MIN, out), fix(T0 + 2 * MIN, offset(0, 0)),  # back in: resets
               fix(T0 + 3 * MIN, out), fix(T0 + 4 * MIN, out)])
    assert [e.action for e in run.events] == ["open"]
    run.track([fix(T0 + 5 * MIN, out)])
    assert [e.action for e in run.events] == ["open", "clear"]


def test_buffer_ring_warns_before_the_zone() -> None:
    run = Run([zone(1, buffer_m=100)])
    run.track([fix(T0, offset(150, 0))])  # 50 m outside the zone, inside the 100 m ring
    assert [(e.type, e.action) for e in run.events] == [("exclusion_buffer", "open")]


def test_circle_zone_and_outliers_are_ignored() -> None:
    run = Run([zone(1, geometry={"type": "Point", "coordinates": [BASE[1], BASE[0]]},
                    radius_m=50)])
    run.track([fix(T0, offset(0, 0), outlier=True)])
    assert run.opened() == []
    run.track([fix(T0 + MIN, offset(10, 0))])
    assert run.opened()[0].type == "exclusion_entry"


def test_a_fix_from_before_the_zone_existed_is_not_judged_against_it() -> None:
    run = Run([zone(1, created_at=T0 + timedelta(hours=1))])
    run.track([fix(T0, offset(0, 0))])
    assert run.events == []
    run.track([fix(T0 + 2 * timedelta(hours=1), offset(0, 0))])
    assert len(run.opened()) == 1


CURFEW = [{"days": [0, 1, 2, 3, 4, 5, 6], "start": "22:00", "end": "06:00"}]
HOME = {"type": "Point", "coordinates": [BASE[1], BASE[0]]}


def sh(day: int, hh: int, mm: int = 0) -> datetime:
    """A Shanghai wall time on 2026-06-<day> as UTC."""
    return datetime(2026, 6, day, hh, mm, tzinfo=UTC) - timedelta(hours=8)


@pytest.mark.parametrize(("desc", "fixes", "ticks", "expected"), [
    ("home all night", [(sh(1, 21, 50), 0), (sh(1, 23), 0), (sh(2, 5), 0)], [sh(1, 22, 0)], []),
    ("out before 22:00, no new fix: the start decides", [(sh(1, 21, 50), 800)],
     [sh(1, 22, 0)], [("curfew", "open", "confident")]),
    ("leaves at 23:00", [(sh(1, 21, 50), 0), (sh(1, 23), 800)], [sh(1, 22)],
     [("curfew", "open", "confident")]),
    ("out at 07:00 is not curfew", [(sh(2, 7), 800), (sh(2, 7, 5), 900)], [sh(2, 7, 10)], []),
    ("out at 05:59 is", [(sh(2, 5, 59), 800)], [], [("curfew", "open", "confident")]),
    ("window end clears; the silent device is raised too", [(sh(1, 21, 50), 800)],
     [sh(1, 22), sh(2, 6, 1)], [("curfew", "open", "confident"), ("curfew", "clear", None),
                                ("device_offline", "open", None)]),
])
def test_curfew_22_to_06_in_shanghai(desc: str, fixes: list, ticks: list,
                                     expected: list) -> None:
    run = Run([zone(1, "inclusion", HOME, radius_m=100, schedule=CURFEW)])
    timeline = sorted([(t, "fix", m) for t, m in fixes] + [(t, "tick", 0) for t in ticks])
    for t, what, metres in timeline:
        if what == "fix":
            run.track([fix(t, offset(metres, 0))])
        else:
            run.tick(t)
    assert [(e.type, e.action, e.confidence) for e in run.events] == expected, desc


def test_curfew_across_the_new_york_fall_back_night() -> None:
    # Saturday 2026-10-31 22:00 EDT to Sunday 06:00 EST: 9 real hours (02:00Z-11:00Z).
    sched = [{"days": [5], "start": "22:00", "end": "06:00"}]
    run = Run([zone(1, "inclusion", HOME, radius_m=100, schedule=sched)],
              subject("America/New_York"))
    run.track([fix(datetime(2026, 11, 1, 1, 59, tzinfo=UTC), offset(500, 0))])  # 21:59 EDT
    assert run.events == []
    run.track([fix(datetime(2026, 11, 1, 10, 30, tzinfo=UTC), offset(500, 0))])  # 05:30 EST
    assert [e.type for e in run.opened()] == ["curfew"]
    run.tick(datetime(2026, 11, 1, 11, 0, 30, tzinfo=UTC))  # 06:00 EST: the window ends
    assert [e.action for e in run.events if e.type == "curfew"] == ["open", "clear"]


def test_curfew_across_the_new_york_spring_forward_night() -> None:
    # Saturday 2026-03-07 22:00 EST to Sunday 06:00 EDT: 7 real hours (03:00Z-10:00Z).
    sched = [{"days": [5], "start": "22:00", "end": "06:00"}]
    run = Run([zone(1, "inclusion", HOME, radius_m=100, schedule=sched)],
              subject("America/New_York"))
    run.track([fix(datetime(2026, 3, 8, 9, 59, tzinfo=UTC), offset(500, 0))])  # 05:59 EDT
    assert [e.type for e in run.opened()] == ["curfew"]
    run2 = Run([zone(1, "inclusion", HOME, radius_m=100, schedule=sched)],
               subject("America/New_York"))
    run2.track([fix(datetime(2026, 3, 8, 10, 1, tzinfo=UTC), offset(500, 0))])  # 06:01 EDT
    assert run2.events == []


def test_device_silent_at_curfew_start_is_raised_naming_the_curfew() -> None:
    run = Run([zone(1, "inclusion", HOME, radius_m=100, schedule=CURFEW)])
    run.track([fix(sh(1, 21, 30), offset(0, 0))])
    run.tick(sh(1, 21, 40))
    run.tick(sh(1, 22, 0, ))  # 30 min of silence by 22:00 > 15 min for a wearable
    types = [(e.type, e.details.get("zone_id")) for e in run.opened()]
    assert ("device_offline", 1) in types


def test_buffered_upload_newer_than_state_reveals_a_past_breach_marked_late() -> None:
    run = Run([zone(1)])
    run.track([fix(T0, offset(500, 0))])
    back = T0 + 40 * MIN  # uploaded 40 minutes later, after an outage
    upload = [fix(T0 + i * MIN, offset(0 if 10 <= i < 20 else 500, 0), received=back)
              for i in range(1, 30)]
    run.feed(upload)
    (e,) = run.opened()
    assert e.late and e.at == T0 + 10 * MIN


def test_buffered_upload_older_than_state_is_replayed_without_touching_current_state() -> None:
    run = Run([zone(1)])
    run.track([fix(T0 + 60 * MIN, offset(500, 0))])  # the phone came back and reported first
    upload = [fix(T0 + i * MIN, offset(0 if 10 <= i < 20 else 500, 0),
                  received=T0 + 61 * MIN) for i in range(30)]
    run.feed(upload)
    (e,) = run.opened()
    assert e.late and e.at == T0 + 10 * MIN
    assert all(r.st == "clear" for r in run.state.rules.values())
    assert run.state.tracks["w"].t == (T0 + 60 * MIN).timestamp()


def test_victim_proximity_whichever_moved() -> None:
    subj = subject(w=DeviceKind.WEARABLE, v=DeviceKind.VICTIM)
    run = Run([], subj, [VictimLink(3, subj.id, "v", 300)])
    run.track([fix(T0, offset(0, 0)), fix(T0 + 5 * timedelta(seconds=1), offset(2000, 0), "v")])
    assert run.events == []
    run.track([fix(T0 + MIN, offset(100, 0), "v")])  # the victim walked up to the subject
    assert [(e.type, e.confidence) for e in run.opened()] == [("victim_proximity", "confident")]


def test_device_separation_needs_the_dwell() -> None:
    subj = subject(w=DeviceKind.WEARABLE, p=DeviceKind.PHONE)
    run = Run([], subj)
    for i in range(8):  # the phone stays home; the wearable is 1 km away
        t = T0 + i * MIN
        run.track([fix(t, offset(0, 0), "p"), fix(t + timedelta(seconds=5), offset(1000, 0))])
        if i < 5:
            assert run.events == [], f"opened after {i} minutes"
    assert [e.type for e in run.opened()] == ["device_separation"]


def test_offline_is_one_alert_per_outage() -> None:
    run = Run([])
    run.track([fix(T0, offset(0, 0))])
    for m in (10, 16, 20, 30):
        run.tick(T0 + m * MIN)
    assert [e.type for e in run.opened()] == ["device_offline"]
    run.track([fix(T0 + 31 * MIN, offset(0, 0))])
    assert [(e.type, e.action) for e in run.events][-1] == ("device_offline", "clear")


@pytest.mark.parametrize(("events", "expected"), [
    ([("strap_open", {})], [("strap_tamper", "open")]),
    ([("tamper", {}), ("strap_closed", {})], [("strap_tamper", "open"),
                                               ("strap_tamper", "clear")]),
    ([("sos", {}), ("sos", {})], [("sos", "open"), ("sos", "open")]),  # one incident in the DB
    ([("battery_low", {})], [("battery_low", "open")]),
    ([("owntracks_status", {"android": {"loc": -1, "bo": 0}})],
     [("tracking_impaired", "open")]),
    ([("owntracks_status", {"android": {"loc": 0, "bo": 0, "ps": 0}})], []),
])
def test_device_events(events: list, expected: list) -> None:
    run = Run([])
    run.feed(events=[DeviceEvent("w", T0 + i * MIN, t, T0 + i * MIN, data=d)
                     for i, (t, d) in enumerate(events)])
    assert [(e.type, e.action) for e in run.events] == expected


def test_battery_from_fixes_has_hysteresis() -> None:
    run = Run([])
    levels = [40, 14, 16, 20, 14, 31]
    run.track([fix(T0 + i * MIN, offset(0, 0), battery_pct=b) for i, b in enumerate(levels)])
    assert [(e.type, e.action) for e in run.events] == [("battery_low", "open"),
                                                        ("battery_low", "clear")]


def test_spoofing_mock_at_once_and_jumps_only_when_repeated() -> None:
    run = Run([])
    run.track([fix(T0, offset(0, 0), outlier=True)])
    assert run.events == []  # one impossible jump is a glitch
    run.track([fix(T0 + MIN, offset(0, 0), outlier=True)])
    assert [e.type for e in run.opened()] == ["location_spoofing"]
    run.track([fix(T0 + (2 + i) * MIN, offset(0, 0), outlier=i % 2 == 0) for i in range(6)])
    assert len(run.opened()) == 1  # still the same incident: jumps keep it open, not reopen it
    run.track([fix(T0 + (10 + i) * MIN, offset(0, 0)) for i in range(3)])
    assert [(e.type, e.action) for e in run.events][-1] == ("location_spoofing", "clear")
    run2 = Run([])
    run2.track([fix(T0, offset(0, 0), mock=True)])
    assert [(e.type, e.confidence) for e in run2.opened()] == [("location_spoofing",
                                                                 "confident")]


def test_min_accuracy_floor_makes_an_overconfident_phone_probable() -> None:
    run = Run([zone(1)], settings=RuleSettings(min_accuracy_m=25))
    run.track([fix(T0, offset(85, 0), acc=2)])  # claims 2 m; 15 m deep
    assert run.opened() == []


def test_older_fix_received_promptly_takes_the_replay_path_but_is_not_late() -> None:
    """Two workers share a device's fixes: one may judge a newer fix first. The older one,
    received 2 s after its time, is replayed, and its alert is not `late` (contract §2)."""
    run = Run([zone(1)])
    run.track([fix(T0 + 5 * MIN, offset(500, 0))])
    run.feed([fix(T0 + 4 * MIN, offset(0, 0), received=T0 + 4 * MIN + timedelta(seconds=2))])
    (e,) = run.opened()
    assert not e.late and e.at == T0 + 4 * MIN
