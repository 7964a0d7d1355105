"""Several workers share a device's fixes, and a batch may commit after a newer one: the
incident a walk through a zone leaves must not depend on the order its fixes are judged in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.rules import RuleEvent
from tests.unit.scenario import Run, fix, offset, zone

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
# 300 m north to the centre of a 200 m square exclusion zone and out again, a fix a second.
NORTH = [*range(300, -1, -25), *range(25, 301, 25)]


def incidents(events: list[RuleEvent]) -> list[dict]:
    """What the alerts table keeps of these events (alerts/store.py): one incident per zone;
    a breach dated after its clear reopens it, one dated before is only counted."""
    by_zone: dict[int | None, dict] = {}
    for e in events:
        a = by_zone.get(e.zone_id)
        if e.action == "open":
            if a is None:
                by_zone[e.zone_id] = {"cleared": None, "seen": e.at}
            else:
                if a["cleared"] is not None and e.at >= a["cleared"]:
                    a["cleared"] = None
                a["seen"] = max(a["seen"], e.at)
        elif a is not None and a["cleared"] is None:
            a["cleared"] = e.at
    return list(by_zone.values())


def walk(received_after_s: float) -> list:
    return [fix(T0 + timedelta(seconds=k), offset(n, 0), acc=5,
                received=T0 + timedelta(seconds=k + received_after_s))
            for k, n in enumerate(NORTH)]


def test_in_order_the_walk_opens_one_incident_and_clears_it() -> None:
    run = Run([zone(1)])
    run.track(walk(2))
    (a,) = incidents(run.events)
    assert a["cleared"] is not None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=len(NORTH), max_size=len(NORTH)),
       st.permutations(range(8)), st.sampled_from([2.0, 600.0]))
def test_any_commit_order_leaves_one_incident_cleared(batch_of, order, received_after_s) -> None:
    """Each fix lands in one of 8 batches (three workers' batches, round robin or not); the
    batches are judged in any order, each on the state the previous ones left (compare-and-
    set). Fixes received promptly (2 s) or as a buffered upload (10 min late) alike."""
    fixes = walk(received_after_s)
    run = Run([zone(1)])
    for b in order:
        batch = [f for f, k in zip(fixes, batch_of, strict=True) if k == b]
        if batch:
            run.feed(batch)
    (a,) = incidents(run.events)
    assert a["cleared"] is not None, run.events
