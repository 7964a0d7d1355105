"""The thin runner of the rules engine (geofence) inside an ingest worker.

The world (zones, subjects, devices, victims) lives in memory, reloaded whenever PostgreSQL
announces a change. Subject rule state lives in Redis (ingest/state.py), shared by all workers
and written compare-and-set: a subject judged by two workers at once is judged again by the
loser on fresh state, so no breach is raised twice or missed.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

import msgspec
import numpy as np

from geofence.engine import World, evaluate
from geofence.rules import RuleEvent, RuleSettings, SubjectState
from geofence.schedule import parse_schedule
from geofence.timers import next_due, tick
from geofence.types import DeviceEvent, DeviceKind, Fix, Leave, Order, Subject, VictimLink
from geofence.zones import Zone, ZoneIndex
from ingest import metrics
from ingest.filters import outside_orders
from ingest.settings import IngestSettings
from ingest.state import StateError, SubjectStates
from ingest.store import IngestStore, TransientError
from ingest.store.world import WorldRows
from tether import logs
from tether.retry import Backoff

log = logs.get("ingest.rules")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SubjectState).decode
MAX_CAS_ROUNDS = 20
TICK_BATCH = 500
TICK_LEASE_S = 30.0


def load_state(subject_id: int, raw: bytes | None) -> SubjectState:
    """A subject's rule state from Redis. A value that does not decode (corrupt, written by an
    older version, or hostile) is logged, counted and replaced by a fresh state: the subject is
    judged from scratch (open alerts stay open in the database) rather than never again."""
    if not raw:
        return SubjectState()
    try:
        return _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError) as e:
        metrics.rule_state_rebuilt.inc()
        log.warning("rule state unreadable; rebuilt", subject_id=subject_id, error=str(e)[:200])
        return SubjectState()


class HasFixes(Protocol):
    fixes: list[Fix]


class StateConflict(RuntimeError):
    """A subject's state kept changing under us; the batch is retried as a whole."""


def rule_settings(s: IngestSettings) -> RuleSettings:
    """The rules' own section of the settings (the fields RuleSettings declares)."""
    return RuleSettings(**s.model_dump(include=set(RuleSettings.model_fields)))


def _zones(rows: list[tuple]) -> list[Zone]:
    return [Zone(zid, name, kind, geom, jur, created, radius_m=radius, buffer_m=buffer,
                 subject_id=sid, schedule=parse_schedule(sched), deleted_at=deleted,
                 leave_id=leave)
            for zid, name, kind, geom, radius, buffer, sid, jur, sched, created, deleted, leave
            in rows]


def build_world(rows: WorldRows, previous: World | None = None, leave_grace_s: float = 1800.0,
                leave_travel_s: float = 1800.0) -> tuple[World, dict[str, list[int]]]:
    """Rows → domain types, zones compiled (CPU work: run it off the event loop)."""
    zones = _zones(rows.zones)
    orders: dict[int, list[Order]] = defaultdict(list)
    for oid, sid, start, end in rows.orders:
        orders[sid].append(Order(oid, start, end))
    leaves: dict[int, list[Leave]] = defaultdict(list)
    grace = timedelta(seconds=leave_grace_s)
    for lid, sid, start, end, returned in rows.leaves:
        leaves[sid].append(Leave(lid, start, returned or end, returned or end + grace,
                                 returned is not None,
                                 start + timedelta(seconds=leave_travel_s)))
    devices: dict[int, dict[str, DeviceKind]] = defaultdict(dict)
    owner: dict[str, list[int]] = defaultdict(list)
    for device_id, subject_id, kind in rows.devices:
        if subject_id is None:  # on no subject: known (no reload for it), judged for no one
            owner.setdefault(device_id, [])
            continue
        devices[subject_id][device_id] = DeviceKind(kind)
        owner[device_id].append(subject_id)
    subjects = {sid: Subject(sid, tuple(path), tz, devices.get(sid, {}),
                             tuple(orders[sid]) if sid in orders else None,
                             tuple(leaves.get(sid, ())))
                for sid, path, tz in rows.subjects}
    victims: dict[int, list[VictimLink]] = defaultdict(list)
    for vid, sid, device_id, radius in rows.victims:
        victims[sid].append(VictimLink(vid, sid, device_id, radius))
        if sid not in owner[device_id]:  # a victim's fix is judged for each protected subject
            owner[device_id].append(sid)
    index = ZoneIndex(zones, previous.zones if previous else None, _zones(rows.zone_versions))
    for zid, why in index.errors.items():
        log.warning("zone cannot be judged", zone_id=zid, reason=why)
    return World(index, subjects, dict(victims)), dict(owner)


class Rules:
    def __init__(self, settings: IngestSettings, store: IngestStore, states: SubjectStates) -> None:
        self.settings = settings
        self.rs = rule_settings(settings)
        self.store = store
        self.states = states
        self.world: World | None = None
        self.owner: dict[str, list[int]] = {}
        self.loaded = asyncio.Event()

    async def reload(self) -> None:
        rows = await self.store.load_world()
        self.world, self.owner = await asyncio.to_thread(
            build_world, rows, self.world, self.rs.leave_grace_s, self.rs.leave_travel_s)
        # The world (tens of thousands of compiled zones) lives until the next reload: out of
        # the collector's scans, whose full passes paused a worker 0.1-0.5 s each under the
        # fleet bench (tether_gc_pause_seconds). Frozen objects are never collected, so the
        # previous freeze is undone and the garbage collected first: an old world caught in a
        # reference cycle is freed here, once per reload, instead of kept for good.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.loaded.set()
        # New zones or schedules may start windows now: every subject gets a look at once.
        await self.states.make_due(self.world.subjects, time.time(), only_new=False)
        log.info("world loaded", zones=len(self.world.zones), subjects=len(self.world.subjects))

    async def watch(self) -> None:
        """Reload on every change notification; reconnect and reload if the channel drops."""
        backoff = Backoff(0.5, 10.0)
        while True:
            logs.still_running()  # a cancellation a library swallowed ends the loop here
            try:
                changes = self.store.world_changes()
                async for _ in changes:
                    # Coalesce a burst of changes (an import of many zones) into one reload.
                    await asyncio.sleep(0.1)
                    await self.reload()
                    logs.still_running()
                    backoff.reset()
            except (*TransientError, StateError, OSError) as e:
                logs.still_running()
                log.warning("world reload failed; retrying", error=str(e))
            await backoff.wait()

    async def drop_unmonitored(self, messages: Sequence[HasFixes]) -> Counter[tuple[str, date]]:
        """Takes out of each message the fixes dated outside every monitoring order of their
        subjects (`ingest.filters.outside_orders`); returns how many per device and day, which
        the writer counts in the batch's transaction. Called before the jump filter."""
        await self.loaded.wait()
        world, total = self.world, Counter()
        for m in messages:
            if m.fixes:
                m.fixes, dropped = outside_orders(m.fixes, self.owner, world.subjects)
                total.update(dropped)
        return total

    def _group(self, fixes: Sequence[Fix], events: Sequence[DeviceEvent]) -> tuple[dict, dict]:
        by_fix: dict[int, list[Fix]] = defaultdict(list)
        by_event: dict[int, list[DeviceEvent]] = defaultdict(list)
        for f in fixes:
            for sid in self.owner.get(f.device_id, ()):
                by_fix[sid].append(f)
        for e in events:
            for sid in self.owner.get(e.device_id, ()):
                by_event[sid].append(e)
        return by_fix, by_event

    async def judge(self, fixes: list[Fix], events: list[DeviceEvent]) -> list[RuleEvent]:
        """Judge a batch's new fixes and events; called inside the batch's DB transaction."""
        await self.loaded.wait()
        if any(x.device_id not in self.owner for x in (*fixes, *events)):
            # Enrolled moments ago, before the change notification reloaded the world: judge
            # it now rather than store its first fixes unjudged.
            await self.reload()
        world = self.world
        near: dict[Fix, list] = {}
        if world.zones.spatial:  # one vectorised index query for the whole batch
            near_lists = world.zones.near(np.fromiter((f.lon for f in fixes), float, len(fixes)),
                                          np.fromiter((f.lat for f in fixes), float, len(fixes)))
            near = {f: z for f, z in zip(fixes, near_lists, strict=True) if z}
        by_fix, by_event = self._group(fixes, events)
        pending = {sid for sid in (*by_fix, *by_event) if sid in world.subjects}
        now = datetime.now(UTC)
        out: list[RuleEvent] = []
        for _ in range(MAX_CAS_ROUNDS):
            loaded = await self.states.load(sorted(pending))
            updates, results = [], {}
            for sid, (version, raw) in loaded.items():
                st = load_state(sid, raw)
                subject = world.subjects[sid]
                results[sid] = evaluate(st, subject, world, self.rs, by_fix.get(sid, ()),
                                        by_event.get(sid, ()), near)
                due = next_due(st, subject, world, self.rs, now).timestamp()
                updates.append((sid, version, _encode(st), due))
            stale = await self.states.save(updates)
            out += [e for sid, evs in results.items() if sid not in stale for e in evs]
            if not stale:
                return out
            pending = stale
        raise StateConflict(f"{len(pending)} subjects kept changing")

    async def ticker(self) -> None:
        """Time-driven checks for subjects that are due (schedule boundaries, silence)."""
        await self.loaded.wait()
        while True:
            logs.still_running()  # a cancellation a library swallowed ends the loop here
            try:
                while await self.tick_once(datetime.now(UTC)) == TICK_BATCH:
                    pass  # more are due: keep going without sleeping
            except (*TransientError, StateError, StateConflict, OSError) as e:
                logs.still_running()
                log.warning("time checks postponed", error=str(e))
            await asyncio.sleep(self.settings.tick_interval_s)

    async def tick_once(self, now: datetime) -> int:
        world = self.world
        ids = [i for i in await self.states.claim_due(now.timestamp(), TICK_BATCH, TICK_LEASE_S)
               if i in world.subjects]
        if not ids:
            return 0
        loaded = await self.states.load(ids)
        updates, results = [], {}
        for sid, (version, raw) in loaded.items():
            st = load_state(sid, raw)
            subject = world.subjects[sid]
            results[sid] = tick(st, subject, world, self.rs, now)
            due = next_due(st, subject, world, self.rs, now).timestamp()
            updates.append((sid, version, _encode(st), due))

        async def save_states() -> list[RuleEvent]:
            stale = await self.states.save(updates)
            if stale:  # judged by another worker meanwhile: look again at once
                await self.states.make_due(stale, now.timestamp(), only_new=False)
            return [e for sid, evs in results.items() if sid not in stale for e in evs]

        async with self.store.batch() as tx:  # the state is written only if the alerts are
            await tx.record_alerts(await save_states())
        return len(ids)
