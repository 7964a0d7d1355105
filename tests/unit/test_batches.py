"""Group commit between the receiver and the writer (`ingest/batches.py`): no I/O, real time."""

from __future__ import annotations

import asyncio
import time

import pytest

from ingest.ahead import Message
from ingest.batches import MAX_PENDING_BATCHES, Batches
from ingest.mqtt_wire import Delivery
from ingest.settings import IngestSettings


def batches(age_ms: int = 50, rows: int = 2000) -> Batches:
    return Batches(IngestSettings(batch_age_ms=age_ms, batch_rows=rows, batch_messages=rows))


async def add(b: Batches, m: Message) -> None:
    """As the receiver does: a full batch is handed over (and may wait for room)."""
    if b.add(m):
        await b.hand_off()


def msg(i: int) -> Message:
    fixes: list = [None]  # one "fix": only the count matters to the batching
    return Message(Delivery(f"t/{i}", b"", False, i, 1, 0), f"d{i}", fixes, [], [])


async def test_a_batch_is_taken_once_its_first_message_is_old_enough() -> None:
    b = batches(age_ms=80)
    await add(b, msg(1))
    t0 = time.monotonic()
    await add(b, msg(2))
    got = await b.next()
    assert got is not None and [m.device_id for m in got.messages] == ["d1", "d2"]
    assert 0.06 <= time.monotonic() - t0 < 0.5
    assert not b.waiting() and b.current.messages == []


async def test_what_arrives_while_the_writer_is_busy_is_one_batch() -> None:
    b = batches(age_ms=1)
    for i in range(5):  # the writer was committing meanwhile: all of it waits, already old
        await add(b, msg(i))
    await asyncio.sleep(0.01)
    got = await b.next()
    assert got is not None and len(got.messages) == 5


async def test_a_full_batch_goes_first_and_a_full_queue_blocks_the_receiver() -> None:
    b = batches(age_ms=10_000, rows=2)
    for i in range(2 * MAX_PENDING_BATCHES):
        await add(b, msg(i))  # fills MAX_PENDING_BATCHES batches of 2
    assert b.queue.qsize() == MAX_PENDING_BATCHES
    await add(b, msg(100))
    blocked = asyncio.create_task(add(b, msg(101)))  # a third full batch: no room
    await asyncio.sleep(0.05)
    assert not blocked.done()
    first = await b.next()
    assert first is not None and [m.device_id for m in first.messages] == ["d0", "d1"]
    await asyncio.wait_for(blocked, 1)  # room again: the receiver goes on
    order = [m.device_id for _ in range(MAX_PENDING_BATCHES)
             for m in (await b.next()).messages]  # type: ignore[union-attr]
    assert order == ["d2", "d3", "d100", "d101"]


async def test_next_gives_up_at_its_deadline_and_keeps_a_young_batch() -> None:
    b = batches(age_ms=10_000)
    assert await b.next(within_s=0.05) is None
    await add(b, msg(1))
    assert await b.next(within_s=0.05) is None  # too young: still being filled
    assert b.waiting() and len(b.current.messages) == 1


async def test_draining_takes_the_batch_being_filled_at_once() -> None:
    b = batches(age_ms=60_000)
    await add(b, msg(1))
    waiter = asyncio.create_task(b.next())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    b.drain()
    got = await asyncio.wait_for(waiter, 1)
    assert got is not None and [m.device_id for m in got.messages] == ["d1"]


async def test_a_first_message_wakes_a_waiting_writer() -> None:
    b = batches(age_ms=30)
    waiter = asyncio.create_task(b.next())
    await asyncio.sleep(0.05)
    await add(b, msg(1))
    got = await asyncio.wait_for(waiter, 1)
    assert got is not None and len(got.messages) == 1


@pytest.mark.parametrize("age_ms", [1, 20])
async def test_every_message_is_taken_once_in_order(age_ms: int) -> None:
    b = batches(age_ms=age_ms, rows=7)
    taken: list[str] = []

    async def writer() -> None:
        while len(taken) < 200:
            batch = await b.next()
            assert batch is not None
            taken.extend(m.device_id or "" for m in batch.messages)
            await asyncio.sleep(0.002)  # a commit

    task = asyncio.create_task(writer())
    for i in range(200):
        await add(b, msg(i))
        if i % 13 == 0:
            await asyncio.sleep(0.001)
    await asyncio.wait_for(task, 10)
    assert taken == [f"d{i}" for i in range(200)]


def test_slow_batches_are_logged_once_per_interval_with_their_count() -> None:
    """A sustained overload makes every batch slow: one line per interval, not one a batch."""
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from ingest.ahead import Batch
    from ingest.pipeline import SLOW_LOG_EVERY_S, Ingest

    worker = SimpleNamespace(slow_batches=0, slow_logged_at=float("-inf"))
    batch = Batch(rows=3, phases={"waited": 1.2})
    with capture_logs() as logged:
        for _ in range(50):
            Ingest._slow(worker, batch, 1.5)  # type: ignore[arg-type]
        worker.slow_logged_at -= SLOW_LOG_EVERY_S  # an interval later
        Ingest._slow(worker, batch, 1.5)  # type: ignore[arg-type]
    lines = [e for e in logged if e["event"] == "slow batch"]
    assert [e["slow_batches"] for e in lines] == [1, 50]
    assert lines[0]["waited"] == 1.2 and lines[0]["rows"] == 3
