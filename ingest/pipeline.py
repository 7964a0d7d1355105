"""The ingest flow: decode -> filter -> (evaluate) -> persist -> ack -> publish.

One receiver task decodes messages into the batch being filled; one writer takes batches
(group commit and backpressure: `ingest/batches.py`), commits each, acknowledges its messages
in arrival order, then updates the shared live state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from geofence.rules import RuleEvent
from geofence.types import DeviceEvent, Fix, Reject
from ingest import metrics, screen
from ingest.ahead import Batch, JudgeAhead, Prepared
from ingest.ahead import Message as _Message
from ingest.batches import Batches
from ingest.decode import KEPT_PAYLOAD_BYTES, Limits, Topics, decode_message
from ingest.filters import FilterSettings, reject_future
from ingest.live import LivePublisher
from ingest.live import positions as live_positions
from ingest.mqtt import Delivery, MqttSource
from ingest.rules_runner import Rules, StateConflict
from ingest.settings import IngestSettings
from ingest.state import DeviceState, StateError
from ingest.store import DataRejected, IngestStore, Registered, TransientError, WriteResult
from tether import logs
from tether.retry import Backoff, every, retrying
from tether.supervise import Health, supervised

log = logs.get("ingest")
DB_AWAY_WAIT_S = 0.5  # for a connection, once the database failed a commit
SLOW_BATCH_S = 1.0  # from first message to published: logged with its phases
SLOW_LOG_EVERY_S = 10.0  # at most one slow-batch line this often: an overload is not a flood


def _text(s: str) -> str:
    """Storable as text: no NUL, no lone surrogate (an error message may quote the payload)."""
    return s.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")


def subscriptions(settings: IngestSettings) -> list[str]:
    # Whole trees, not just the valid topic shapes: a device publishing to a wrong topic under
    # our roots must end as a reject an operator can see, not vanish unseen.
    # No group (empty): plain subscriptions, for a broker without `$share` (NATS 2.9's MQTT;
    # docs/scaling.md), where one worker takes everything.
    share = f"$share/{settings.mqtt_share_group}/" if settings.mqtt_share_group else ""
    return [f"{share}{settings.mqtt_root}/#", f"{share}{settings.owntracks_root}/#"]


class Ingest:
    def __init__(self, settings: IngestSettings, source: MqttSource, store: IngestStore,
                 state: DeviceState, rules: Rules, health: Health | None = None,
                 live: LivePublisher | None = None) -> None:
        self.settings = settings
        self.health = health or Health()
        self.live = live
        self.rules = rules
        self.source = source
        self.store = store
        self.state = state
        self.topics = Topics(settings.mqtt_root, settings.owntracks_root)
        self.filters = FilterSettings(timedelta(seconds=settings.max_future_s),
                                      settings.max_speed_kmh / 3.6, settings.jump_confirm_fixes)
        self.limits = Limits(timedelta(days=settings.retention_days),
                             timedelta(seconds=settings.max_future_s))
        self.registry: dict[str, Registered] = {}
        self.batches = Batches(settings)
        # Taken by the writer, not yet acked (judged ahead while the database is away); kept
        # across a restart of the writer: acks are in arrival order.
        self.ahead = JudgeAhead(self.batches.next, settings.judge_ahead_rows, rules,
                                self._prepare_once, live, lambda: self.registry)
        self.committed_batches = 0
        self.slow_batches, self.slow_logged_at = 0, float("-inf")  # since the last line
        self.idle = asyncio.Event()  # set by the writer when nothing taken is left to commit

    async def run(self) -> None:
        """Each part runs supervised: one failing (a timer, the world watch) is logged, counted
        and restarted with backoff while the others keep ingesting."""
        parts = {"ingest-writer": self.writer, "ingest-registry-refresh": self.registry_refresh,
                 "ingest-retention": self.retention, "rules-world-watch": self.rules.watch,
                 "rules-ticker": self.rules.ticker,
                 "ingest-mqtt": lambda: self.source.run(self.receive)}
        async with asyncio.TaskGroup() as tg:
            for name, part in parts.items():
                tg.create_task(supervised(name, part, self.health,
                                          self.settings.task_restart_max_s), name=name)

    # --- receive: decode and filter, no I/O --------------------------------------------------

    async def receive(self, burst: list[Delivery]) -> None:
        """Decode a burst of deliveries into the current batch. Per-message work is the decode
        only: the clock is read and the metrics counted once per burst."""
        if self.batches.draining:  # left unacknowledged: the next worker gets them
            return
        received_at = datetime.now(UTC)
        routes: dict[str, int] = defaultdict(int)
        for d in burst:
            msg = self._decode(d, received_at)
            routes[d.topic.rsplit("/", 1)[-1] if msg.device_id else "bad"] += 1
            if self.batches.add(msg):
                await self.batches.hand_off()  # full: blocks while the writer is behind
        for route, n in routes.items():
            metrics.messages.labels(route).inc(n)

    def _decode(self, d: Delivery, received_at: datetime) -> _Message:
        try:
            dec = decode_message(d.topic, d.payload, received_at, self.topics, d.retained,
                                 self.limits)
            fixes, future = reject_future(dec.fixes, d.topic, d.payload, self.filters)
            return _Message(d, dec.device_id, fixes, dec.events, dec.rejects + future)
        except Exception as e:  # the decoder never raises; should it, the message is a reject
            logs.still_running()
            log.exception("decoder failed; message rejected", topic=d.topic)
            return _Message(d, None, [], [], [Reject(
                d.topic, d.payload[:KEPT_PAYLOAD_BYTES], f"undecodable: {type(e).__name__}",
                received_at)])

    async def drain(self, limit_s: float) -> bool:
        """A graceful stop (SIGTERM): take no more messages, then commit and acknowledge every
        batch already taken, the one being filled included, within `limit_s`. True if all was
        committed; what was not stays unacknowledged with the broker (nothing is lost)."""
        self.batches.drain()
        self.idle.clear()
        if self._taken_or_waiting():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), limit_s)
        done = not self._taken_or_waiting()
        log.info("ingest drained" if done else "ingest stopped with batches uncommitted",
                 committed_batches=self.committed_batches)
        return done

    def _taken_or_waiting(self) -> bool:
        return bool(self.ahead.held) or self.batches.waiting()

    # --- persist, ack, publish ----------------------------------------------------------------

    async def writer(self) -> None:
        while True:
            # Python 3.11's wait_for (in redis-py, psycopg_pool, aiomqtt) can swallow a
            # cancellation; each loop of a part re-raises a pending one, so a worker stops.
            logs.still_running()
            if not self.ahead.held:
                batch = await self.batches.next()
                assert batch is not None  # no timeout: waits for one
                self.ahead.add(batch)
            await self.persist(self.ahead.held[0])
            self.ahead.done()
            self.committed_batches += 1
            if not self._taken_or_waiting():
                self.idle.set()

    async def _prepare(self, messages: list[_Message], retry: bool = True) -> Prepared:
        """Filter (registry, orders, jumps): what the batch's transaction stores and judges."""
        await self._check_registered(messages, retry)
        # Outside every monitoring order of its subject, a position is neither judged nor kept:
        # only counted per device and day (Community Corrections Law art. 29).
        unmonitored = await self.rules.drop_unmonitored(messages)
        await screen.filter_jumps(messages, self.state, self.filters)
        return ([f for m in messages for f in m.fixes], [e for m in messages for e in m.events],
                [r for m in messages for r in m.rejects], unmonitored)

    async def _prepare_once(self, messages: list[_Message]) -> Prepared:
        return await self._prepare(messages, retry=False)  # the database is away: no waiting

    async def _store(self, messages: list[_Message]) -> WriteResult:
        """Filter, then the batch's transaction. Transient failures are waited out inside;
        anything else raises, for the caller to isolate."""
        prepared = await self._prepare(messages)
        return await self._retry("store", lambda: self._commit(*prepared))

    async def _store_held(self, batch: Batch) -> WriteResult:
        """`_store` for the writer's oldest batch: while the database is away, this batch and
        the ones after it are judged ahead (`ingest/ahead.py`), and stored when it is back."""
        backoff, away = Backoff(0.1, 5.0), False
        while True:
            try:
                if batch.prepared is None:  # a device new to this worker: the registry first
                    t = time.monotonic()
                    batch.prepared = await self._prepare(batch.messages, retry=False)
                    batch.phases["prepare"] = time.monotonic() - t
                # Known to be away: ask briefly, and judge what arrives meanwhile.
                return await self._commit(*batch.prepared, verdicts=batch.verdicts, batch=batch,
                                          wait_s=DB_AWAY_WAIT_S if away else None)
            except TransientError as e:
                away = True
                logs.still_running()
                metrics.store_errors.inc()
                log.warning("database unavailable; judging ahead, storing later",
                            error=str(e)[:200], retry_s=backoff.delay)
                await self.ahead.judge(batch)
                await self.ahead.take(backoff.grow())  # judging what arrives meanwhile
            except (StateError, StateConflict, OSError) as e:
                logs.still_running()
                metrics.store_errors.inc()
                log.warning("rule state unavailable; batch held", error=str(e)[:200],
                            retry_s=backoff.delay)
                await backoff.wait()

    async def _commit(self, fixes: list[Fix], events: list[DeviceEvent], rejects: list[Reject],
                      unmonitored: Mapping[tuple[str, date], int] | None = None,
                      verdicts: list[RuleEvent] | None = None,
                      batch: Batch | None = None, wait_s: float | None = None) -> WriteResult:
        """The flow's middle, in one transaction: store → evaluate → record alerts → commit.
        Only what is new to the database is judged, so a redelivery is not judged twice; the
        alerts commit with the fixes that raised them, or neither does. `verdicts`: judged
        ahead, while the database was away (`ingest/ahead.py`). The verdicts are kept with
        `batch` once judged: the rule state moved on, so a retry after a failed commit records
        them rather than judge the same fixes again."""
        phases = batch.phases if batch is not None else {}
        t0 = time.monotonic()
        async with self.store.batch(wait_s) as tx:
            t1 = time.monotonic()
            await tx.count_unmonitored(unmonitored or {})
            new_fixes, new_events = await tx.store(fixes, events, rejects)
            t2 = time.monotonic()
            if verdicts is None:
                verdicts = (await self.rules.judge(new_fixes, new_events)
                            if new_fixes or new_events else [])
                if batch is not None:
                    batch.verdicts = verdicts
            elif not (new_fixes or new_events):
                verdicts = []  # stored before (a commit whose answer was lost): recorded then
            t3 = time.monotonic()
            changed = await tx.record_alerts(verdicts)
        phases.update(connect=t1 - t0, store=t2 - t1, judge=t3 - t2,
                      commit=time.monotonic() - t3)
        return WriteResult(len(new_fixes), len(new_events), changed)

    async def persist(self, batch: Batch) -> None:
        """The flow after decoding: filter → store → evaluate → record alerts → commit
        (`_store`), then ack (only what is committed), then publish (live state, screens)."""
        started = time.monotonic()
        batch.phases["waited"] = started - batch.started  # from its first message to taken
        try:
            result = await self._store_held(batch)
        except Exception as e:  # not transient (those are held in _retry): isolate the culprit
            logs.still_running()
            log.warning("batch failed; storing message by message", error=f"{type(e).__name__}:"
                        f" {str(e)[:200]}")
            result = await self._persist_each(batch)
        self._count(batch, result, started)
        # in arrival order, as MQTT asks of QoS 1 acks
        self.source.ack_all([m.delivery for m in batch.messages])
        t = time.monotonic()
        await self._publish(batch)
        batch.phases["publish"] = time.monotonic() - t
        if (took := time.monotonic() - batch.started) > SLOW_BATCH_S and not batch.shown:
            self._slow(batch, took)  # (a batch judged ahead waited out a logged outage)

    def _slow(self, batch: Batch, took: float) -> None:
        """Where a latency tail comes from: waiting (receiver side), prepare (registry,
        jumps), the transaction's phases, or the live-state writes after it. One line per
        `SLOW_LOG_EVERY_S` at most, counting the slow batches since the last."""
        self.slow_batches += 1
        if (now := time.monotonic()) - self.slow_logged_at >= SLOW_LOG_EVERY_S:
            log.warning("slow batch", seconds=round(took, 3), rows=batch.rows,
                        slow_batches=self.slow_batches,
                        **{k: round(v, 3) for k, v in batch.phases.items()})
            self.slow_batches, self.slow_logged_at = 0, now

    def _count(self, batch: Batch, result: WriteResult, started: float) -> None:
        fixes = sum(len(m.fixes) for m in batch.messages)
        metrics.flush_seconds.observe(time.monotonic() - started)
        metrics.batch_rows.observe(fixes)
        metrics.fixes_stored.inc(result.fixes_stored)
        metrics.fixes_duplicate.inc(fixes - result.fixes_stored)
        metrics.events_stored.inc(result.events_stored)
        for _alert_id, action, type_ in result.alerts_changed:
            metrics.alerts_changed.labels(action, type_).inc()
            if action == "opened":
                metrics.fix_to_alert.observe(time.monotonic() - batch.started)
        for r in (r for m in batch.messages for r in m.rejects):
            metrics.rejects.labels(r.reason.split(":", 1)[0][:40]).inc()

    async def _publish(self, batch: Batch) -> None:
        """After commit and ack: the shared live state of each device, and the positions for
        the live map (one PUBLISH). From the messages again: the fallback may have turned
        some into rejects."""
        fixes = [f for m in batch.messages for f in m.fixes]
        try:
            await self.state.record(fixes, [e for m in batch.messages for e in m.events])
        except (StateError, OSError) as e:
            # The fixes are committed; the live state catches up with the next ones.
            logs.still_running()
            metrics.state_errors.inc()
            log.warning("live state update failed", error=str(e))
        if self.live is not None and not batch.shown:  # never raises: screens catch up
            await self.live.publish(live_positions(fixes, self.registry))

    async def _persist_each(self, batch: Batch) -> WriteResult:
        """Isolate the message that fails: it is tried `dead_letter_after` times, then set aside
        as a reject (the database refusing its data: `unstorable`; anything else: `dead letter`)
        and acknowledged with the rest, so a poison message cannot hold ingest forever."""
        stored = events = 0
        changed: list[tuple[int, str, str]] = []
        for m in batch.messages:
            error: Exception | None = None
            for _attempt in range(self.settings.dead_letter_after):
                try:
                    r = await self._store([m])
                    break
                except Exception as e:  # non-transient by now: _retry waits out the others
                    logs.still_running()
                    error = e
            else:
                assert error is not None
                metrics.dead_letters.inc()
                kind = "unstorable" if isinstance(error, DataRejected) else "dead letter"
                first = (str(error).splitlines() or [""])[0][:300]
                log.warning("message set aside", topic=m.delivery.topic, reason=kind,
                            error=f"{type(error).__name__}: {first}")
                d = m.delivery
                reject = Reject(d.topic, d.payload[:KEPT_PAYLOAD_BYTES],
                                _text(f"{kind}: {type(error).__name__}: {first}"),
                                datetime.now(UTC), m.device_id)
                m.fixes, m.events, m.rejects = [], [], [*m.rejects, reject]
                r = await self._retry("store", lambda m=m: self._commit([], [], m.rejects))
            stored, events = stored + r.fixes_stored, events + r.events_stored
            changed += r.alerts_changed
        return WriteResult(stored, events, changed)

    async def _check_registered(self, messages: list[_Message], retry: bool = True) -> None:
        async def lookup(wanted: set[str]) -> Mapping[str, Registered]:
            if not retry:  # the database is away: no waiting (ingest/ahead.py)
                return await self.store.registered(wanted)
            return await self._retry("registry", lambda: self.store.registered(wanted))

        await screen.check_registered(messages, self.registry, lookup)

    async def _retry(self, what: str, op):
        # Without the database nothing can be stored; without the shared rule state nothing
        # can be judged. Either way the batch is held, never dropped or stored unjudged, and
        # the broker keeps what follows.
        return await retrying(op, (*TransientError, StateError, StateConflict, OSError), log,
                              f"{what} (batch held)",
                              on_retry=lambda _e: metrics.store_errors.inc())

    # --- timers -------------------------------------------------------------------------------

    async def registry_refresh(self) -> None:
        """Pick up device deletions and kind changes; new devices are found on first use."""
        async def refresh() -> None:
            self.registry = await self.store.all_registered()

        await asyncio.sleep(self.settings.registry_refresh_s)
        await every(self.settings.registry_refresh_s, refresh, TransientError, log,
                    "device registry refresh")

    async def retention(self) -> None:
        keep = timedelta(days=self.settings.retention_days)

        async def drop() -> None:
            if dropped := await self.store.drop_old_fixes(keep):
                log.info("dropped old fix chunks", chunks=dropped)

        await every(3600, drop, TransientError, log, "retention")
