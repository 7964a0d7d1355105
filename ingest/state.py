"""Latest device state in Redis, shared by every worker (the only `ingest` module importing redis).

One hash per device. Updates are Lua scripts, so they are atomic across workers, and
conditional on time, so a late upload never overwrites a newer position.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from geofence.rules import SubjectState, Track
from geofence.types import DeviceEvent, Fix
from ingest.filters import JumpState, LastGood
from tether import logs

log = logs.get("ingest.state")
# The same encoding as ingest/rules_runner.py's (msgspec JSON of SubjectState).
_encode_state = msgspec.json.Encoder().encode
_pack_rows = msgspec.msgpack.Encoder().encode

StateError = RedisError

# ARGV[1]: msgpack rows, per device (KEYS[i]): ts lat lon acc batt outlier seen, as text. One
# msgpack argument instead of seven per device: redis-py packs arguments one by one in Python,
# which was most of this write's cost (12 -> 5 µs of ingest CPU a fix). Latest fix wins by fix
# time; the last good (non-outlier) fix is kept apart so the next jump is judged against it.
# One read and one write per device (were up to seven calls).
_UPDATE_FIXES = """
local rows = cmsgpack.unpack(ARGV[1])
for i, key in ipairs(KEYS) do
  local r = rows[i]
  local ts, cur = tonumber(r[1]), redis.call('HMGET', key, 'ts', 'good_ts', 'seen')
  local set = {}
  if ts > (tonumber(cur[1]) or -1) then
    set = {'ts', r[1], 'lat', r[2], 'lon', r[3], 'acc', r[4], 'outlier', r[6]}
    if r[5] ~= '' then set[#set + 1] = 'batt'; set[#set + 1] = r[5] end
  end
  if r[6] == '0' and ts > (tonumber(cur[2]) or -1) then
    for _, v in ipairs({'good_ts', r[1], 'good_lat', r[2], 'good_lon', r[3], 'good_acc', r[4]})
      do set[#set + 1] = v end
  end
  if tonumber(r[7]) > (tonumber(cur[3]) or -1) then
    set[#set + 1] = 'seen'; set[#set + 1] = r[7]
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
end
"""
# Per event: field value ts seen (4 args). `field` is e.g. status or strap.
_UPDATE_EVENTS = """
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 4
  local field, ts = ARGV[b + 1], tonumber(ARGV[b + 3])
  if ts > (tonumber(redis.call('HGET', key, field .. '_ts')) or -1) then
    redis.call('HSET', key, field, ARGV[b + 2], field .. '_ts', ARGV[b + 3])
  end
  if tonumber(ARGV[b + 4]) > (tonumber(redis.call('HGET', key, 'seen')) or -1) then
    redis.call('HSET', key, 'seen', ARGV[b + 4])
  end
end
"""
# Reads many hashes in one command: redis-py's cost is per command, not per key.
_HMGET_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local row = redis.call('HMGET', key, unpack(ARGV))
  for j = 1, #ARGV do out[#out + 1] = row[j] or false end
end
return out
"""
_EVENT_FIELDS = {"online": ("status", "online"), "offline": ("status", "offline"),
                 "strap_open": ("strap", "open"), "strap_closed": ("strap", "closed"),
                 "charger_on": ("charger", "on"), "charger_off": ("charger", "off")}


def _finite(v: object) -> float:
    x = float(v)  # type: ignore[arg-type]
    if not math.isfinite(x):
        raise ValueError("not finite")
    return x


def _last_good(ts: bytes, lat: bytes, lon: bytes, acc: bytes | None) -> LastGood:
    return LastGood(datetime.fromtimestamp(_finite(ts), UTC), _finite(lat), _finite(lon),
                    _finite(acc) if acc else None)


def _candidates(raw: bytes) -> list[LastGood]:
    try:
        items = json.loads(raw)
        return [LastGood(datetime.fromtimestamp(_finite(t), UTC), _finite(la), _finite(lo),
                         None if a is None else _finite(a)) for t, la, lo, a in items[:16]]
    except (ValueError, TypeError, OverflowError, OSError, RecursionError):
        return []


class DeviceState:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.client = redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix
        self._fixes = self.client.register_script(_UPDATE_FIXES)
        self._events = self.client.register_script(_UPDATE_EVENTS)
        self._hmget_many = self.client.register_script(_HMGET_MANY)

    async def hmget_many(self, keys: Sequence[str], fields: Sequence[str]) -> list[list]:
        if not keys:
            return []
        flat = await self._hmget_many(keys=list(keys), args=list(fields))
        n = len(fields)
        return [flat[i:i + n] for i in range(0, len(flat), n)]

    def key(self, device_id: str) -> str:
        return f"{self.prefix}dev:{device_id}"

    async def close(self) -> None:
        await self.client.aclose()

    async def publish(self, channel: str, payload: bytes) -> int:
        """One message to every process subscribed (the live map's API processes)."""
        return int(await self.client.publish(f"{self.prefix}{channel}", payload))

    async def last_good(self, device_ids: Sequence[str]) -> dict[str, LastGood]:
        return {d: j.last for d, j in (await self.jump_states(device_ids)).items() if j.last}

    async def jump_states(self, device_ids: Sequence[str]) -> dict[str, JumpState]:
        """The jump filter's memory per device: last good fix and waiting candidates. A value
        that does not decode (hostile or corrupt) is treated as absent, never raised."""
        rows = await self.hmget_many([self.key(d) for d in device_ids],
                                     ("good_ts", "good_lat", "good_lon", "good_acc", "cand"))
        out = {}
        for d, (ts, lat, lon, acc, cand) in zip(device_ids, rows, strict=True):
            try:
                last = None if ts is None else _last_good(ts, lat, lon, acc)
            except (ValueError, TypeError, OverflowError, OSError):
                last = None
            cands = _candidates(cand) if cand else []
            if last is not None or cands:
                out[d] = JumpState(last, cands)
        return out

    async def save_candidates(self, cands: Mapping[str, list[LastGood]]) -> None:
        """Store the jump candidates of the devices whose candidates changed (one round trip;
        none at all in the usual case, where no device has any)."""
        if not cands:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for d, cs in cands.items():
                if cs:
                    pipe.hset(self.key(d), "cand", json.dumps(
                        [[c.fix_time.timestamp(), c.lat, c.lon, c.accuracy_m] for c in cs]))
                else:
                    pipe.hdel(self.key(d), "cand")
            await pipe.execute()

    async def record(self, fixes: Iterable[Fix], events: Iterable[DeviceEvent]) -> None:
        # Only the newest fix and the newest good fix of each device matter to the live state.
        newest: dict[tuple[str, bool], Fix] = {}
        for f in fixes:
            for k in ((f.device_id, False), (f.device_id, True)):
                if k[1] and f.outlier:
                    continue
                cur = newest.get(k)
                if cur is None or f.fix_time > cur.fix_time:
                    newest[k] = f
        latest = list(set(newest.values()))  # by identity: one fix may be newest both ways
        keys = [self.key(f.device_id) for f in latest]
        # As text, formatted here: Lua would print floats with 14 or 17 digits, not repr's.
        rows = _pack_rows([(repr(f.fix_time.timestamp()), repr(f.lat), repr(f.lon),
                            "" if f.accuracy_m is None else repr(f.accuracy_m),
                            "" if f.battery_pct is None else str(f.battery_pct),
                            "1" if f.outlier else "0", repr(f.received_at.timestamp()))
                           for f in latest])
        ekeys, eargs = [], []
        for e in events:
            field = _EVENT_FIELDS.get(e.type)
            if field:
                ekeys.append(self.key(e.device_id))
                eargs += [field[0], field[1], repr(e.event_time.timestamp()),
                          repr(e.received_at.timestamp())]
        if keys:
            await self._fixes(keys=keys, args=[rows])
        if ekeys:
            await self._events(keys=ekeys, args=eargs)

    async def device(self, device_id: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.key(device_id))
        return {k.decode(): v.decode() for k, v in raw.items()}


# --- rule state of subjects, shared by all workers -----------------------------------------------
# One hash per subject: v (version) and s (the engine's state, msgspec JSON). Writes are
# compare-and-set per subject, so two workers judging one subject at once cannot both win: the
# loser re-reads and judges again. The sorted set `due` says when each subject next needs a
# time-driven check; claiming pushes the entry a lease ahead, so a worker that dies mid-tick
# leaves the subject due again when the lease ends.

# KEYS: n subject keys, then the due set. ARGV[1]: msgpack rows, per subject: version, state,
# due, member. Returns the 1-based positions of the subjects whose version moved on (not written).
_SAVE_SUBJECTS = """
local rows = cmsgpack.unpack(ARGV[1])
local due = KEYS[#KEYS]
local stale = {}
for i = 1, #KEYS - 1 do
  local r = rows[i]
  local v = tonumber(redis.call('HGET', KEYS[i], 'v') or '0')
  if v ~= r[1] then
    table.insert(stale, i)
  else
    redis.call('HSET', KEYS[i], 'v', v + 1, 's', r[2])
    redis.call('ZADD', due, string.format('%.17g', r[3]), string.format('%d', r[4]))
  end
end
return stale
"""
_CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""


class SubjectStates:
    def __init__(self, device_state: DeviceState) -> None:
        self.devices = device_state
        self.client = device_state.client
        self.prefix = device_state.prefix
        self.due_key = f"{self.prefix}due"
        self._save = self.client.register_script(_SAVE_SUBJECTS)
        self._claim = self.client.register_script(_CLAIM_DUE)

    def key(self, subject_id: int) -> str:
        return f"{self.prefix}subj:{subject_id}"

    async def load(self, subject_ids: Sequence[int]) -> dict[int, tuple[int, bytes | None]]:
        """(version, state bytes or None) per subject, in one round trip."""
        rows = await self.devices.hmget_many([self.key(s) for s in subject_ids], ("v", "s"))
        return {s: (int(v or 0), raw) for s, (v, raw) in zip(subject_ids, rows, strict=True)}

    async def save(self, updates: Sequence[tuple[int, int, bytes, float]]) -> set[int]:
        """(subject, expected version, state, next due epoch) each; returns the stale ones."""
        if not updates:
            return set()
        keys = [self.key(u[0]) for u in updates] + [self.due_key]
        # The state as a msgpack str: Redis's cmsgpack cannot read bin (msgspec's bytes).
        rows = _pack_rows([(version, raw.decode(), due, subject_id)
                           for subject_id, version, raw, due in updates])
        stale = await self._save(keys=keys, args=[rows])
        return {updates[i - 1][0] for i in stale}

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[int]:
        ids = await self._claim(keys=[self.due_key], args=[repr(now), limit, repr(now + lease_s)])
        return [int(i) for i in ids]

    async def make_due(self, subject_ids: Iterable[int], at: float, only_new: bool) -> None:
        """Due at `at`: for subjects never seen (only_new), or brought forward (a world change)."""
        mapping = {str(s): at for s in subject_ids}
        if mapping:
            await self.client.zadd(self.due_key, mapping, nx=only_new, lt=not only_new)


async def drop_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under a prefix (a benchmark's or test run's throwaway state)."""
    client = redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i:i + 1000])
        return len(keys)
    finally:
        await client.aclose()


# Rule state belongs to one database. `{prefix}bound` holds that database's identity
# (ingest.store.admin.database_identity): absent, Redis lost its state (a flush, a restart
# without AOF, a new Redis); another value, the state is another database's (a database
# recreated or restored, ids starting again). Either way the state is rebuilt from PostgreSQL.
_BIND = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 'same' end
if not cur then return 'lost' end
return 'foreign'
"""


class StateBinding:
    """Checks, at start and periodically, that Redis holds this database's rule state."""

    def __init__(self, states: SubjectStates, identity: str) -> None:
        self.states = states
        self.client = states.client
        self.identity = identity
        self.key = f"{states.prefix}bound"
        self._bind = self.client.register_script(_BIND)
        self._seed = self.client.register_script(_SEED)

    async def check(self) -> str:
        """'same', 'lost' (no state kept: rebuild) or 'foreign' (another database's: drop,
        then rebuild)."""
        return (await self._bind(keys=[self.key], args=[self.identity])).decode()

    async def drop_foreign(self) -> int:
        """Delete the rule and device state of whichever database owned this prefix before."""
        p = self.states.prefix
        n = 0
        for pattern in (f"{p}dev:*", f"{p}subj:*"):
            keys = [k async for k in self.client.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(keys), 1000):
                n += await self.client.delete(*keys[i:i + 1000])
        return n + await self.client.delete(self.states.due_key)

    async def seed(self, seeds: Sequence[tuple[int, bytes]], due: float) -> int:
        """Each (subject, encoded state) where no state is kept, every subject due by `due`;
        then mark the prefix as this database's. Returns how many states were seeded."""
        seeded = 0
        for i in range(0, len(seeds), 500):
            part = seeds[i:i + 500]
            keys = [self.states.key(s) for s, _ in part] + [self.states.due_key]
            args: list = [len(part)]
            for _, raw in part:
                args += [raw, repr(due)]
            seeded += int(await self._seed(keys=keys, args=[*args, *(s for s, _ in part)]))
        await self.client.set(self.key, self.identity)
        return seeded

    async def ensure(self, load_rows: Callable[[], Awaitable[list[tuple]]]) -> str:
        """One check; when the state is lost or foreign, rebuild it from `load_rows`
        (ingest.store.admin.last_heard: what was last heard from each device) and make every
        subject due now, so silence and schedules are judged again within a tick."""
        found = await self.check()
        if found == "same":
            return found
        if found == "foreign":
            dropped = await self.drop_foreign()
            log.warning("rule state belonged to another database; dropped", keys=dropped)
        rows = await load_rows()
        seeded = await self.seed(tracks_from(rows), time.time())
        log.warning("rule state rebuilt from the database", found=found, subjects=seeded)
        return found

    async def run(self, load_rows: Callable[[], Awaitable[list[tuple]]],
                  interval_s: float) -> None:
        """Periodically: a Redis flushed or replaced while workers run is noticed within
        `interval_s`, not at the next restart. After a rebuild, subjects still without state
        are seeded once more at the next check: a batch in flight during the loss may have
        written its state before the loss and committed its fixes after the rebuild read."""
        again = False
        while True:
            try:
                if await self.ensure(load_rows) != "same":
                    again = True
                elif again:
                    again = False
                    await self.seed(tracks_from(await load_rows()), time.time())
            except Exception as e:  # a guard that dies guards nothing
                logs.still_running()  # unless it is being stopped (a swallowed cancellation)
                log.warning("rule state check postponed", error=str(e)[:300])
            logs.still_running()
            await asyncio.sleep(interval_s)


def tracks_from(rows: Iterable[tuple]) -> list[tuple[int, bytes]]:
    """Encoded rule states holding only each device's track (last good fix, last heard)."""
    states: dict[int, SubjectState] = {}
    for subject_id, device_id, t, lat, lon, acc, seen in rows:
        st = states.setdefault(subject_id, SubjectState())
        st.tracks[device_id] = Track(t=t or 0.0, lat=lat or 0.0, lon=lon or 0.0,
                                     acc=acc or 0.0, seen=seen or 0.0)
    return [(sid, _encode_state(st)) for sid, st in states.items()]


# Seed a subject's state only where none is kept (a live worker's state wins); due by ARGV's
# time. ARGV: n, then (state, due) per subject, then the subject ids (the due set's members).
_SEED = """
local n = tonumber(ARGV[1])
local due = KEYS[n + 1]
local seeded = 0
for i = 1, n do
  if redis.call('HSETNX', KEYS[i], 's', ARGV[2 * i]) == 1 then
    redis.call('HSET', KEYS[i], 'v', 1)
    seeded = seeded + 1
  end
  redis.call('ZADD', due, 'LT', ARGV[2 * i + 1], ARGV[1 + 2 * n + i])
end
return seeded
"""
