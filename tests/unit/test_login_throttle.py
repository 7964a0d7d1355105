"""The login throttle's delay and the caller's address, without a server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from api.auth import LOGIN_DELAY_CAP_S, Busy, Passwords, client_address, login_delay_s


def test_a_few_typos_cost_nothing_then_the_delay_doubles_up_to_a_cap() -> None:
    delays = [login_delay_s(n, free=5) for n in range(12)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:9] == [2.0, 4.0, 8.0, 16.0]
    assert delays[-1] == LOGIN_DELAY_CAP_S and max(delays) == LOGIN_DELAY_CAP_S
    assert login_delay_s(10**9, free=5) == LOGIN_DELAY_CAP_S  # no overflow however many


@pytest.mark.parametrize(("peer", "xff", "trusted", "expect"), [
    ("203.0.113.9", "198.51.100.1", [], "203.0.113.9"),  # no proxies configured: ignored
    ("203.0.113.9", "198.51.100.1", ["10.0.0.0/8"], "203.0.113.9"),  # peer is no proxy
    ("10.0.0.2", "198.51.100.1", ["10.0.0.0/8"], "198.51.100.1"),
    ("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.7", ["10.0.0.0/8"], "198.51.100.1"),
    ("10.0.0.2", "not-an-ip", ["10.0.0.0/8"], "10.0.0.2"),  # garbage: the proxy is the caller
    ("10.0.0.2", "1.1.1.1, bogus, 198.51.100.1", ["10.0.0.2"], "198.51.100.1"),
    ("::1", "2001:db8::5", ["::1"], "2001:db8::5"),
    ("10.0.0.2", None, ["10.0.0.0/8"], "10.0.0.2"),
    (None, "198.51.100.1", ["10.0.0.0/8"], "?"),
])
def test_forwarded_for_is_believed_only_from_trusted_proxies(peer, xff, trusted, expect) -> None:
    assert client_address(peer, xff, trusted) == expect


@pytest.mark.timeout(30)
async def test_hashing_is_bounded_and_the_queue_overflows_with_busy() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow() -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return "done"

    pw = Passwords(concurrency=2, waiting_limit=5)
    results = await asyncio.gather(*(pw._run(slow) for _ in range(10)), return_exceptions=True)
    assert most == 2  # never more hashes at once than allowed
    assert sum(r == "done" for r in results) == 7  # 2 running + 5 waiting
    assert all(isinstance(r, Busy) for r in results if r != "done")
    assert await pw._run(slow) == "done"  # slots and queue are free again afterwards
