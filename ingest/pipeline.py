"""The ingest flow: decode -> filter -> (evaluate) -> persist -> ack -> publish.

One receiver task decodes messages into the current batch. A full or old batch is handed to
the single writer through a queue of at most `MAX_PENDING_BATCHES`; when the writer is behind,
the hand-off blocks the receiver (backpressure: the broker holds further messages, nothing is
dropped). The writer commits a batch, acknowledges its messages in arrival order, then updates
the shared live state.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from geofence.types import DeviceEvent, Fix, Reject
from ingest import logs, metrics
from ingest.decode import KEPT_PAYLOAD_BYTES, Topics, decode_message
from ingest.filters import FilterSettings, flag_outliers, reject_future
from ingest.mqtt import Delivery, MqttSource
from ingest.rules_runner import Rules, StateConflict
from ingest.settings import Settings
from ingest.state import DeviceState, StateError
from ingest.store import DataRejected, IngestStore, Registered, TransientError, WriteResult

log = logs.get("ingest")
MAX_PENDING_BATCHES = 2


@dataclass(slots=True)
class _Message:
    delivery: Delivery
    device_id: str | None
    fixes: list[Fix]
    events: list[DeviceEvent]
    rejects: list[Reject]


@dataclass(slots=True)
class Batch:
    messages: list[_Message] = field(default_factory=list)
    rows: int = 0
    started: float = 0.0


def subscriptions(settings: Settings) -> list[str]:
    # Whole trees, not just the valid topic shapes: a device publishing to a wrong topic under
    # our roots must end as a reject an operator can see, not vanish unseen.
    share = f"$share/{settings.mqtt_share_group}/"
    return [f"{share}{settings.mqtt_root}/#", f"{share}{settings.owntracks_root}/#"]


class Ingest:
    def __init__(self, settings: Settings, source: MqttSource, store: IngestStore,
                 state: DeviceState, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.source = source
        self.store = store
        self.state = state
        self.topics = Topics(settings.mqtt_root, settings.owntracks_root)
        self.filters = FilterSettings(timedelta(seconds=settings.max_future_s),
                                      settings.max_speed_kmh / 3.6)
        self.registry: dict[str, Registered] = {}
        self.batch = Batch()
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=MAX_PENDING_BATCHES)
        self.committed_batches = 0

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.writer(), name="ingest-writer")
            tg.create_task(self.flush_timer(), name="ingest-flush-timer")
            tg.create_task(self.registry_refresh(), name="ingest-registry-refresh")
            tg.create_task(self.retention(), name="ingest-retention")
            tg.create_task(self.rules.watch(), name="rules-world-watch")
            tg.create_task(self.rules.ticker(), name="rules-ticker")
            tg.create_task(self.source.run(self.receive), name="ingest-mqtt")

    # --- receive: decode and filter, no I/O --------------------------------------------------

    async def receive(self, d: Delivery) -> None:
        received_at = datetime.now(UTC)
        dec = decode_message(d.topic, d.payload, received_at, self.topics, d.retained)
        fixes, future = reject_future(dec.fixes, d.topic, d.payload, self.filters)
        metrics.messages.labels(d.topic.rsplit("/", 1)[-1] if dec.device_id else "bad").inc()
        b = self.batch
        if not b.messages:
            b.started = time.monotonic()
        b.messages.append(_Message(d, dec.device_id, fixes, dec.events, dec.rejects + future))
        b.rows += len(fixes)
        if b.rows >= self.settings.batch_rows or len(b.messages) >= self.settings.batch_messages:
            await self._hand_off()

    async def _hand_off(self) -> None:
        batch, self.batch = self.batch, Batch()
        metrics.pending_batches.set(self.queue.qsize() + 1)
        await self.queue.put(batch)  # blocks when the writer is behind: backpressure

    async def flush_timer(self) -> None:
        age = self.settings.batch_age_ms / 1000
        while True:
            b = self.batch
            wait = age if not b.messages else b.started + age - time.monotonic()
            if b.messages and wait <= 0:
                await self._hand_off()
            else:
                await asyncio.sleep(max(wait, 0.005))

    # --- persist, ack, publish ----------------------------------------------------------------

    async def writer(self) -> None:
        while True:
            batch = await self.queue.get()
            metrics.pending_batches.set(self.queue.qsize())
            await self.persist(batch)
            self.committed_batches += 1

    async def persist(self, batch: Batch) -> None:
        await self._check_registered(batch)
        fixes = [f for m in batch.messages for f in m.fixes]
        events = [e for m in batch.messages for e in m.events]
        rejects = [r for m in batch.messages for r in m.rejects]
        await self._flag_outliers(fixes)
        started = time.monotonic()
        try:
            result = await self._retry("store", lambda: self.store.write(
                fixes, events, rejects, judge=self.rules.judge))
        except DataRejected as e:
            log.warning("batch refused by the database; storing message by message", error=str(e))
            result = await self._persist_each(batch)
        metrics.flush_seconds.observe(time.monotonic() - started)
        metrics.batch_rows.observe(len(fixes))
        metrics.fixes_stored.inc(result.fixes_stored)
        metrics.fixes_duplicate.inc(len(fixes) - result.fixes_stored)
        metrics.events_stored.inc(result.events_stored)
        for _alert_id, action, type_ in result.alerts_changed:
            metrics.alerts_changed.labels(action, type_).inc()
            if action == "opened":
                metrics.fix_to_alert.observe(time.monotonic() - batch.started)
        for r in (r for m in batch.messages for r in m.rejects):
            metrics.rejects.labels(r.reason.split(":", 1)[0][:40]).inc()
        for m in batch.messages:  # in arrival order, as MQTT asks of QoS 1 acks
            self.source.ack(m.delivery)
        try:  # from the messages again: the fallback may have turned some into rejects
            await self.state.record([f for m in batch.messages for f in m.fixes],
                                    [e for m in batch.messages for e in m.events])
        except (StateError, OSError) as e:
            # The fixes are committed; the live state catches up with the next ones.
            logs.still_running()
            metrics.state_errors.inc()
            log.warning("live state update failed", error=str(e))

    async def _persist_each(self, batch: Batch) -> WriteResult:
        """Isolate the message the database refuses; it becomes a reject, the rest are kept."""
        stored = events = 0
        for m in batch.messages:
            try:
                r = await self._retry("store", lambda m=m: self.store.write(
                    m.fixes, m.events, m.rejects, judge=self.rules.judge))
            except DataRejected as e:
                d = m.delivery
                reject = Reject(d.topic, d.payload[:KEPT_PAYLOAD_BYTES],
                                f"unstorable: {str(e).splitlines()[0]}", datetime.now(UTC),
                                m.device_id)
                m.fixes, m.events, m.rejects = [], [], [*m.rejects, reject]
                r = await self._retry("store", lambda m=m: self.store.write([], [], m.rejects))
            stored, events = stored + r.fixes_stored, events + r.events_stored
        return WriteResult(stored, events)

    async def _check_registered(self, batch: Batch) -> None:
        wanted = {m.device_id for m in batch.messages
                  if m.device_id and (m.fixes or m.events) and m.device_id not in self.registry}
        if wanted:
            found = await self._retry("registry", lambda: self.store.registered(wanted))
            self.registry.update(found)
        for m in batch.messages:
            if (m.fixes or m.events) and m.device_id not in self.registry:
                d = m.delivery
                m.rejects.append(Reject(d.topic, d.payload[:KEPT_PAYLOAD_BYTES], "unknown device",
                                        (m.fixes or m.events)[0].received_at, m.device_id))
                m.fixes, m.events = [], []

    async def _flag_outliers(self, fixes: list[Fix]) -> None:
        by_device: dict[str, list[Fix]] = defaultdict(list)
        for f in fixes:
            by_device[f.device_id].append(f)
        try:
            last = await self.state.last_good(list(by_device))
        except (StateError, OSError) as e:
            logs.still_running()
            metrics.state_errors.inc()
            log.warning("live state unavailable; judging jumps within the batch", error=str(e))
            last = {}
        for device_id, own in by_device.items():
            own.sort(key=lambda f: f.fix_time)
            flag_outliers(last.get(device_id), own, self.filters)
        metrics.fixes_outlier.inc(sum(f.outlier for f in fixes))

    async def _retry(self, what: str, op):
        backoff = 0.1
        while True:
            try:
                return await op()
            except (*TransientError, StateError, StateConflict, OSError) as e:
                # Without the database nothing can be stored; without the shared rule state
                # nothing can be judged. Either way the batch is held, never dropped or
                # stored unjudged, and the broker keeps what follows.
                logs.still_running()
                metrics.store_errors.inc()
                log.warning("dependency unavailable; holding the batch", op=what,
                            error=str(e), retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # --- timers -------------------------------------------------------------------------------

    async def registry_refresh(self) -> None:
        """Pick up device deletions and kind changes; new devices are found on first use."""
        while True:
            await asyncio.sleep(self.settings.registry_refresh_s)
            try:
                self.registry = await self.store.all_registered()
            except TransientError as e:
                logs.still_running()
                log.warning("device registry refresh failed", error=str(e))

    async def retention(self) -> None:
        keep = timedelta(days=self.settings.retention_days)
        while True:
            try:
                dropped = await self.store.drop_old_fixes(keep)
                if dropped:
                    log.info("dropped old fix chunks", chunks=dropped)
            except TransientError as e:
                logs.still_running()
                log.warning("retention run failed", error=str(e))
            await asyncio.sleep(3600)
