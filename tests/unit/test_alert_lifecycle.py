"""Pure: every transition of an alert's life, and every one that may not happen."""

from __future__ import annotations

import pytest

from alerts.lifecycle import (
    Action,
    AlertState,
    IllegalTransition,
    Status,
    Transition,
    apply,
    may_escalate,
)

OPEN = AlertState(Status.OPEN, "critical")
ACKED = AlertState(Status.ACKNOWLEDGED, "critical")
RESOLVED = AlertState(Status.RESOLVED, "critical")


def must(t: Transition | None) -> Transition:
    assert t is not None
    return t


def test_a_first_breach_opens_and_tells_people() -> None:
    t = must(apply(None, Action.OPEN, severity="high"))
    assert t.state == AlertState(Status.OPEN, "high")
    assert (t.history, t.event, t.outbox) == ("opened", "opened", True)


@pytest.mark.parametrize("state", [OPEN, ACKED, AlertState(Status.OPEN, "low", cleared=True)])
def test_a_breach_of_an_open_incident_is_a_repeat_for_screens_only(state: AlertState) -> None:
    t = must(apply(state, Action.OPEN))
    assert (t.history, t.event, t.outbox) == ("repeated", "updated", False)
    assert t.state.status is state.status and not t.state.cleared


def test_clearing_tells_people_and_keeps_the_incident_for_an_officer() -> None:
    for state in (OPEN, ACKED):
        t = must(apply(state, Action.CLEAR))
        assert (t.history, t.event, t.outbox) == ("cleared", "updated", True)
        assert t.state.cleared and t.state.status is state.status


@pytest.mark.parametrize("state", [None, AlertState(Status.OPEN, cleared=True), RESOLVED])
def test_clearing_what_is_not_in_breach_does_nothing(state: AlertState | None) -> None:
    assert apply(state, Action.CLEAR) is None


def test_acknowledge_then_resolve() -> None:
    ack = must(apply(OPEN, Action.ACKNOWLEDGE))
    assert ack.state.status is Status.ACKNOWLEDGED
    assert (ack.history, ack.event, ack.outbox) == ("acknowledged", "acknowledged", True)
    res = must(apply(ack.state, Action.RESOLVE))
    assert res.state.status is Status.RESOLVED
    assert (res.history, res.event, res.outbox) == ("resolved", "resolved", True)


def test_an_open_alert_may_be_resolved_without_an_acknowledgement() -> None:
    assert must(apply(OPEN, Action.RESOLVE)).state.status is Status.RESOLVED


@pytest.mark.parametrize(("state", "action", "message"), [
    (ACKED, Action.ACKNOWLEDGE, "the alert is acknowledged"),
    (RESOLVED, Action.ACKNOWLEDGE, "the alert is resolved"),
    (RESOLVED, Action.RESOLVE, "the alert is resolved"),
    (RESOLVED, Action.OPEN, "the alert is resolved"),
    (None, Action.ACKNOWLEDGE, "no alert"),
    (None, Action.RESOLVE, "no alert"),
    (None, Action.ESCALATE, "no alert"),
    (ACKED, Action.ESCALATE, "acknowledged"),
    (RESOLVED, Action.ESCALATE, "resolved"),
    (AlertState(Status.OPEN, "high"), Action.ESCALATE, "not critical"),
    (AlertState(Status.OPEN, "critical", escalated=True), Action.ESCALATE, "escalated already"),
])
def test_illegal_transitions_are_409s(state: AlertState | None, action: Action,
                                      message: str) -> None:
    with pytest.raises(IllegalTransition, match=message) as e:
        apply(state, action)
    assert e.value.status_code == 409


def test_escalation_once_of_a_critical_open_alert() -> None:
    assert may_escalate(OPEN)
    t = must(apply(OPEN, Action.ESCALATE))
    assert t.state.escalated and t.state.status is Status.OPEN
    assert (t.history, t.event, t.outbox) == ("escalated", "escalated", True)
    assert not may_escalate(t.state)
    # Escalated, it can still be acknowledged and resolved as usual.
    assert must(apply(t.state, Action.ACKNOWLEDGE)).state.escalated


def test_state_from_a_database_row() -> None:
    row = {"status": "acknowledged", "severity": "high", "cleared_at": "2026-01-01",
           "escalated_at": None}
    assert AlertState.of(row) == AlertState(Status.ACKNOWLEDGED, "high", cleared=True)
    with pytest.raises(ValueError):
        AlertState.of({"status": "lost"})


def test_every_action_from_every_state_is_decided() -> None:
    """No combination falls through: each is a transition, nothing, or a 409."""
    states = [None] + [AlertState(st, sev, c, e) for st in Status
                       for sev in ("critical", "low") for c in (False, True)
                       for e in (False, True)]
    for s in states:
        for a in Action:
            try:
                t = apply(s, a)
            except IllegalTransition:
                continue
            assert t is None or isinstance(t, Transition)
            if t is not None and s is not None and s.status is Status.RESOLVED:
                pytest.fail(f"{a} changed a resolved alert")
