"""Between the receiver and the single writer: the batch being filled, and group commit.

The writer takes the batch being filled whenever it is free, once its first message is
`batch_age_ms` old: under load a batch holds what arrived during the previous commit, so a fix
waits about one commit, and batches grow with the load (each costs less per fix). A batch that
fills up (`batch_rows`, `batch_messages`) first is handed over through a queue of at most
`MAX_PENDING_BATCHES`; when the writer is that far behind, the hand-off blocks the receiver
(backpressure: the broker holds further messages, nothing is dropped).

Every hand-over is a swap with no `await` between taking a batch and putting a fresh one in its
place, so a batch is never taken twice or lost, and batches are taken in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ingest import metrics
from ingest.ahead import Batch, Message
from ingest.settings import IngestSettings
from tether import logs

MAX_PENDING_BATCHES = 2


class Batches:
    def __init__(self, settings: IngestSettings) -> None:
        self.age_s = settings.batch_age_ms / 1000
        self.max_rows, self.max_messages = settings.batch_rows, settings.batch_messages
        self.current = Batch()
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=MAX_PENDING_BATCHES)
        self.wake = asyncio.Event()  # a batch got its first message, or was handed over
        self.draining = False  # a graceful stop: the batch being filled is taken at once

    def add(self, msg: Message) -> bool:
        """Into the batch being filled (per message: no coroutine). True when it is full: the
        caller then awaits `hand_off`."""
        b = self.current
        if not b.messages:
            b.started = time.monotonic()
            self.wake.set()
        b.messages.append(msg)
        b.rows += len(msg.fixes)
        return b.rows >= self.max_rows or len(b.messages) >= self.max_messages

    async def hand_off(self) -> None:
        """A full batch, to the queue: blocks while the writer is `MAX_PENDING_BATCHES` behind."""
        batch, self.current = self.current, Batch()
        metrics.pending_batches.set(self.queue.qsize() + 1)
        await self.queue.put(batch)
        self.wake.set()

    def drain(self) -> None:
        """Stop waiting for batches to age: the writer takes what is being filled now."""
        self.draining = True
        self.wake.set()

    def waiting(self) -> bool:
        """Whether messages wait to be taken by the writer (queued or being filled)."""
        return bool(self.queue.qsize() or self.current.messages)

    async def next(self, within_s: float | None = None) -> Batch | None:
        """The writer's next batch: a full one from the queue, else the batch being filled once
        its first message is `batch_age_ms` old (at once when draining). None after `within_s`."""
        deadline = None if within_s is None else time.monotonic() + within_s
        while True:
            logs.still_running()  # a cancellation a wait swallowed ends the loop here
            if not self.queue.empty():
                batch = self.queue.get_nowait()
                metrics.pending_batches.set(self.queue.qsize())
                return batch
            b, now = self.current, time.monotonic()
            if b.messages and (self.draining or now - b.started >= self.age_s):
                self.current = Batch()
                return b
            if deadline is not None and now >= deadline:
                return None
            waits = [w for w in (b.started + self.age_s - now if b.messages else None,
                                 None if deadline is None else deadline - now) if w is not None]
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(waits) if waits else None):
                    await self.wake.wait()
