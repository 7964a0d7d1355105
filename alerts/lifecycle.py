"""Pure: an alert's life, as transitions. Given the current state and an action, what follows.

    (none) --open--> open --acknowledge--> acknowledged --resolve--> resolved
    open --open--> open (a repeat)      open/acknowledged --clear--> same status, cleared
    open --escalate--> open, escalated  open/acknowledged --resolve--> resolved

Every transition says the next state, the `alert_history` action, the notification event and
whether people get a message (the outbox) or only screens (websockets). `alerts.store` holds the
SQL that applies a transition, used by ingest (rules), the API (officers) and the timers
(escalation); nothing else decides what an action does. An action the state does not allow is
an `IllegalTransition`, which carries its HTTP status (409). No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Action(StrEnum):
    OPEN = "open"  # a rule saw a breach (a repeat when the incident is already open)
    CLEAR = "clear"  # a rule saw the subject back in compliance
    ACKNOWLEDGE = "acknowledge"  # an officer
    RESOLVE = "resolve"  # an officer, with a note
    ESCALATE = "escalate"  # the timers: critical and unanswered for too long


# Who may ask for what: rules and timers never touch what officers own, and the reverse.
USER_ACTIONS = frozenset({Action.ACKNOWLEDGE, Action.RESOLVE})


class IllegalTransition(Exception):
    """An action the alert's state does not allow; `status_code` is what the API answers."""

    status_code = 409

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class AlertState:
    status: Status
    severity: str = "medium"
    cleared: bool = False  # the subject is back in compliance (the incident stays open)
    escalated: bool = False

    @classmethod
    def of(cls, row: dict) -> AlertState:
        """From an `alerts` row (status, severity, cleared_at, escalated_at)."""
        return cls(Status(row["status"]), row.get("severity") or "medium",
                   row.get("cleared_at") is not None, row.get("escalated_at") is not None)


@dataclass(frozen=True, slots=True)
class Transition:
    state: AlertState  # after the action
    history: str  # alert_history.action
    event: str  # the notification's "event" (contract §5)
    outbox: bool  # False: screens only (no message to people)


def apply(state: AlertState | None, action: Action, *,
          severity: str = "medium") -> Transition | None:
    """The transition `action` makes from `state` (None: no unresolved incident). None: nothing
    happens (a rule clearing what is not open, or is cleared already: not an error, the rules
    may say it more than once). Raises IllegalTransition for what may not happen."""
    if action is Action.OPEN:
        if state is None:
            return Transition(AlertState(Status.OPEN, severity), "opened", "opened", True)
        _unresolved(state, action)
        # A repeat of an open incident updates screens: no message per breach fix.
        return Transition(replace(state, cleared=False), "repeated", "updated", False)
    if action is Action.CLEAR:
        if state is None or state.cleared or state.status is Status.RESOLVED:
            return None
        return Transition(replace(state, cleared=True), "cleared", "updated", True)
    if state is None:
        raise IllegalTransition(f"no alert to {action.value}")
    if action is Action.ACKNOWLEDGE:
        if state.status is not Status.OPEN:
            raise IllegalTransition(f"the alert is {state.status.value}", state.status)
        return Transition(replace(state, status=Status.ACKNOWLEDGED), "acknowledged",
                          "acknowledged", True)
    if action is Action.RESOLVE:
        _unresolved(state, action)
        return Transition(replace(state, status=Status.RESOLVED), "resolved", "resolved", True)
    if action is Action.ESCALATE:
        if not may_escalate(state):
            raise IllegalTransition(f"the alert is {state.status.value}"
                                    + (", escalated already" if state.escalated else "")
                                    + ("" if state.severity == "critical" else ", not critical"),
                                    state.status)
        return Transition(replace(state, escalated=True), "escalated", "escalated", True)
    raise IllegalTransition(f"unknown action {action!r}")


def may_escalate(state: AlertState) -> bool:
    """Critical, still open (nobody acknowledged it), not escalated yet. The SQL that picks the
    candidates (`alerts.store.ESCALATE_DUE`) says the same, plus the waiting time."""
    return state.status is Status.OPEN and state.severity == "critical" and not state.escalated


def _unresolved(state: AlertState, action: Action) -> None:
    if state.status is Status.RESOLVED:
        raise IllegalTransition("the alert is resolved", state.status)
