"""The alert hub's fan-out rules, without sockets: scope, and the overflow rule."""

from __future__ import annotations

from api.store import Principal
from api.ws import QUEUE_LIMIT, AlertHub, Client


def hub_with(*clients: Client) -> AlertHub:
    hub = AlertHub(store=None, database_url="")  # deliver() touches neither
    hub.clients.update(clients)
    return hub


def test_scope_decides_who_receives_an_alert() -> None:
    admin = Client(Principal(1, "a", "admin", None))
    here = Client(Principal(2, "o", "officer", 5))
    there = Client(Principal(3, "p", "officer", 6))
    hub_with(admin, here, there).deliver({"n": 1}, [1, 5, 9])
    assert admin.queue.qsize() == here.queue.qsize() == 1 and there.queue.empty()


def test_a_phone_too_far_behind_is_flagged_for_resync_not_skipped() -> None:
    slow = Client(Principal(2, "o", "officer", 5))
    hub = hub_with(slow)
    for i in range(QUEUE_LIMIT):
        hub.deliver({"n": i}, [5])
    assert not slow.overflowed.is_set()
    hub.deliver({"n": "one too many"}, [5])
    assert slow.overflowed.is_set() and slow.queue.qsize() == QUEUE_LIMIT
