"""Casework in the pure core: monitoring orders, leave and edited zones through `applies`, the
engine and the timers; the ingest filter for positions outside an order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from geofence import keys
from geofence.engine import World
from geofence.rules import RuleSettings
from geofence.timers import next_due
from geofence.types import Leave, Order
from geofence.zones import ZoneIndex, applies
from ingest.filters import outside_orders
from tests.unit.scenario import BASE, EPOCH, Run, fix, offset, square, subject, zone

T = datetime(2026, 6, 1, 12, tzinfo=UTC)
FAR = offset(5000, 0)


def opened(events, type_: str) -> list:
    return [e for e in events if e.action == "open" and e.type == type_]


def test_nothing_binds_outside_an_order_and_subjects_without_orders_are_monitored() -> None:
    z = zone(1)
    free = subject()
    ordered = replace(free, orders=(Order(1, T, T + timedelta(days=30)),))
    assert applies(z, free, T - timedelta(days=1))
    assert not applies(z, ordered, T - timedelta(seconds=1))
    assert applies(z, ordered, T)
    assert not applies(z, ordered, T + timedelta(days=30))


def test_fixes_outside_an_order_are_not_judged() -> None:
    subj = replace(subject(), orders=(Order(1, T, T + timedelta(hours=1)),))
    run = Run([zone(1)], subj)
    assert run.track([fix(T - timedelta(minutes=5 - i), BASE) for i in range(3)]) == []
    assert opened(run.track([fix(T + timedelta(minutes=i), BASE) for i in range(3)]),
                  "exclusion_entry")


def test_leave_suspends_inclusion_zones_not_exclusion_zones() -> None:
    school_at = offset(5300, 0)  # inside the destination
    home, school = zone(1, "inclusion"), zone(2, "exclusion", geometry=square(100, school_at))
    dest = zone(3, "inclusion", geometry={"type": "Point", "coordinates": [FAR[1], FAR[0]]},
                radius_m=1000, created_at=T, leave_id=9, subject_id=7)
    dest = replace(dest, deleted_at=T + timedelta(hours=2))
    subj = replace(subject(), leaves=(Leave(9, T, T + timedelta(hours=2),
                                            T + timedelta(hours=2, minutes=30),
                                            arrive_by=T + timedelta(minutes=30)),))
    assert not applies(dest, subj, T + timedelta(minutes=10))  # still on the way there
    during, grace, after = (T + timedelta(hours=1), T + timedelta(hours=2, minutes=10),
                            T + timedelta(hours=3))
    assert not applies(home, subj, during) and applies(school, subj, during)
    assert applies(dest, subj, during) and not applies(dest, subj, grace)
    assert not applies(home, subj, grace) and applies(home, subj, after)
    run = Run([home, school, dest], subj)
    # At the destination during the leave: no alert; in the school zone: an alert still.
    assert run.track([fix(during + timedelta(minutes=i), FAR) for i in range(3)]) == []
    events = run.track([fix(during + timedelta(minutes=10 + i), school_at) for i in range(2)])
    assert opened(events, "exclusion_entry") and not opened(events, "inclusion_exit")


def test_leave_overrun_once_when_not_back_by_end_plus_grace() -> None:
    home = zone(1, "inclusion")
    end = T + timedelta(hours=2)
    grace_end = end + timedelta(minutes=30)
    subj = replace(subject(), leaves=(Leave(9, T, end, grace_end),))
    run = Run([home], subj)
    run.track([fix(end - timedelta(minutes=5), FAR)])
    assert next_due(run.state, subj, run.world, run.settings, end) <= grace_end
    assert opened(run.tick(grace_end - timedelta(seconds=1)), "leave_overrun") == []
    (ev,) = opened(run.tick(grace_end + timedelta(seconds=1)), "leave_overrun")
    assert (ev.type, ev.details["leave_id"], ev.details["reason"]) == ("leave_overrun", 9,
                                                                      "not back")
    assert opened(run.tick(grace_end + timedelta(minutes=5)), "leave_overrun") == []  # once
    # Back in time: no alert, and a later trip away is not this leave's overrun.
    back = Run([home], subj)
    back.track([fix(end - timedelta(minutes=5), BASE)])
    assert opened(back.tick(grace_end + timedelta(seconds=1)), "leave_overrun") == []
    back.track([fix(grace_end + timedelta(minutes=1), FAR)])
    assert not opened(back.tick(grace_end + timedelta(minutes=2)), "leave_overrun")
    # Returned through the API: no check at all.
    returned = replace(subj, leaves=(Leave(9, T, end, end, returned=True),))
    gone = Run([home], returned)
    gone.track([fix(end - timedelta(minutes=5), FAR)])
    assert not opened(gone.tick(grace_end + timedelta(seconds=1)), "leave_overrun")


def test_order_expiring_once_and_again_after_a_renewal_nears_its_end() -> None:
    s = RuleSettings()
    subj = replace(subject(), orders=(Order(4, T - timedelta(days=80), T + timedelta(days=5)),))
    run = Run([], subj, settings=s)
    (ev,) = opened(run.tick(T), "order_expiring")
    assert ev.details["order_id"] == 4
    assert opened(run.tick(T + timedelta(minutes=1)), "order_expiring") == []
    renewed = replace(subj, orders=(Order(4, T - timedelta(days=80), T + timedelta(days=60)),))
    run.subject = renewed
    run.world.subjects[renewed.id] = renewed
    cleared = run.tick(T + timedelta(minutes=2))
    assert [(e.action, e.type) for e in cleared] == [("clear", "order_expiring")]
    due = next_due(run.state, renewed, run.world, s, T + timedelta(minutes=2))
    assert due <= T + timedelta(days=53)
    assert opened(run.tick(T + timedelta(days=54)), "order_expiring")
    assert keys.parse(keys.order(4)).ref == 4 and keys.parse(keys.leave(2)).ref == 2


def test_an_edited_zone_judges_a_late_fix_on_the_version_of_its_time() -> None:
    edit = T
    old = zone(1, geometry={"type": "Point", "coordinates": [BASE[1], BASE[0]]}, radius_m=100,
               created_at=EPOCH, deleted_at=edit)
    new = replace(old, radius_m=200, created_at=edit, deleted_at=None)
    index = ZoneIndex([new], history=[old])
    assert index.at(1, edit - timedelta(seconds=1)).zone.radius_m == 100
    assert index.at(1, edit).zone.radius_m == 200
    run = Run([], subject())
    run.world = World(index, {7: run.subject}, {7: []})
    at_150 = offset(150, 0)
    assert run.track([fix(edit - timedelta(seconds=60 - i), at_150) for i in range(3)]) == []
    assert opened(run.track([fix(edit + timedelta(seconds=i), at_150) for i in range(2)]),
                  "exclusion_entry")


def test_outside_orders_filter_counts_per_device_and_day() -> None:
    subj = replace(subject(), orders=(Order(1, T, T + timedelta(days=1)),))
    free = replace(subject(), id=8)
    owner = {"w": [7], "v": [8], "new": []}
    fixes = [fix(T - timedelta(hours=1), BASE), fix(T + timedelta(hours=1), BASE),
             fix(T - timedelta(hours=1), BASE, device="v"),
             fix(T - timedelta(hours=1), BASE, device="unknown")]
    kept, dropped = outside_orders(fixes, owner, {7: subj, 8: free})
    assert [f.device_id for f in kept] == ["w", "v", "unknown"]
    assert dict(dropped) == {("w", (T - timedelta(hours=1)).date()): 1}
