"""While PostgreSQL is away: judge now, store later.

Fixes are acknowledged to the broker only once committed, so an outage of the database loses
nothing; but left at that, nothing is judged either, and a breach during the outage is raised
only when the backlog drains. Judging needs only the rule state (Redis) and the world (memory),
so the writer, while its batch waits for the database, judges it and the batches that follow,
at once: their positions reach the live map and their alerts reach screens and phones as
`alert_provisional` (a contract extension, docs/live.md), in time. The verdicts stay with each
batch and are recorded with its fixes when the database is back, in arrival order; nothing is
judged twice.

Bounded: at most `judge_ahead_rows` fixes are held in memory, unacknowledged (a crash loses none:
the broker redelivers them). Beyond that the writer takes nothing more, the receiver blocks and
the broker keeps the rest (backpressure, as without this).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

from geofence.rules import RuleEvent
from geofence.types import DeviceEvent, Fix, Reject
from ingest import metrics
from ingest.live import LivePublisher
from ingest.live import positions as live_positions
from ingest.mqtt import Delivery
from ingest.rules_runner import Rules, StateConflict
from ingest.state import StateError
from ingest.store import TransientError
from tether import logs

log = logs.get("ingest.ahead")


@dataclass(slots=True)
class Message:
    delivery: Delivery
    device_id: str | None
    fixes: list[Fix]
    events: list[DeviceEvent]
    rejects: list[Reject]


Prepared = tuple[list[Fix], list[DeviceEvent], list[Reject], Mapping[tuple[str, date], int]]


@dataclass(slots=True)
class Batch:
    messages: list[Message] = field(default_factory=list)
    rows: int = 0
    started: float = 0.0
    prepared: Prepared | None = None  # filtered once: (fixes, events, rejects, unmonitored)
    verdicts: list[RuleEvent] | None = None  # judged ahead of storing
    shown: bool = False  # its positions already went to the live map
    phases: dict[str, float] = field(default_factory=dict)  # seconds, for a slow-batch log


class JudgeAhead:
    """The batches the writer has taken and not yet committed, in arrival order."""

    def __init__(self, next_batch: Callable[[float], Awaitable[Batch | None]], max_rows: int,
                 rules: Rules, prepare: Callable[[list[Message]], Awaitable[Prepared]],
                 live: LivePublisher | None, registry: Callable[[], Mapping]) -> None:
        self.next_batch, self.max_rows, self.rules = next_batch, max_rows, rules
        self.prepare, self.live, self.registry = prepare, live, registry
        self.held: deque[Batch] = deque()
        self.rows = 0

    def add(self, batch: Batch) -> None:
        self.held.append(batch)
        self.rows += batch.rows
        metrics.held_rows.set(self.rows)

    def done(self) -> None:
        self.rows -= self.held.popleft().rows
        metrics.held_rows.set(self.rows)

    async def judge(self, batch: Batch) -> None:
        """Judge a batch now, before it can be stored, and show what it found."""
        if batch.shown or not self.max_rows:
            return
        if batch.verdicts is None:  # else judged already, by a commit that then failed
            try:
                if batch.prepared is None:
                    batch.prepared = await self.prepare(batch.messages)
                fixes, events = batch.prepared[0], batch.prepared[1]
                batch.verdicts = (await self.rules.judge(fixes, events)
                                  if fixes or events else [])
            except (*TransientError, StateError, StateConflict, OSError) as e:
                # A device new to this worker (the registry needs the database) or no rule
                # state: this batch is judged when it is stored, as usual.
                logs.still_running()
                log.warning("batch not judged ahead", error=str(e)[:200])
                return
            metrics.judged_ahead.inc(len(fixes))
        fixes = batch.prepared[0] if batch.prepared else []
        if self.live is not None:  # never raise: screens catch up with the next ones
            await self.live.publish(live_positions(fixes, self.registry()))
            await self.live.publish_alerts(batch.verdicts)
            batch.shown = True

    async def take(self, wait_s: float) -> None:
        """While the oldest batch waits `wait_s` for the database: take and judge what follows,
        up to the bound."""
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            if self.rows >= self.max_rows:
                await asyncio.sleep(left)  # full: the receiver blocks, the broker keeps the rest
                return
            batch = await self.next_batch(left)
            if batch is None:
                return
            self.add(batch)
            await self.judge(batch)
