"""The filter stage before a batch is stored: devices the database does not know become
rejects, and impossible jumps are marked (outliers) against each device's last good fix.
Per batch, never per fix: one registry query for devices not seen before, one Redis round trip
for the jump states."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from geofence.types import Fix, Reject
from ingest import metrics
from ingest.ahead import Message
from ingest.decode import KEPT_PAYLOAD_BYTES
from ingest.filters import FilterSettings, JumpState, judge_jumps
from ingest.state import DeviceState, StateError
from ingest.store import Registered
from tether import logs

log = logs.get("ingest")


async def check_registered(messages: Sequence[Message], registry: dict[str, Registered],
                           lookup: Callable[[set[str]], Awaitable[Mapping[str, Registered]]]
                           ) -> None:
    """Devices not in `registry` are looked up (and added); a message from a device the
    database does not know becomes an `unknown device` reject."""
    wanted = {m.device_id for m in messages
              if m.device_id and (m.fixes or m.events) and m.device_id not in registry}
    if wanted:
        registry.update(await lookup(wanted))
    for m in messages:
        if (m.fixes or m.events) and m.device_id not in registry:
            d = m.delivery
            m.rejects.append(Reject(d.topic, d.payload[:KEPT_PAYLOAD_BYTES], "unknown device",
                                    (m.fixes or m.events)[0].received_at, m.device_id))
            m.fixes, m.events = [], []


async def filter_jumps(messages: Sequence[Message], state: DeviceState,
                       filters: FilterSettings) -> None:
    """The jump filter, device by device over the batch. Fixes are immutable: a message's
    fixes are replaced by the filter's verdicts, judged afresh on every attempt."""
    by_device: dict[str, list[Fix]] = defaultdict(list)
    for m in messages:
        for f in m.fixes:
            by_device[f.device_id].append(f)
    if not by_device:
        return
    try:
        known = await state.jump_states(list(by_device))
    except (StateError, OSError) as e:
        logs.still_running()
        metrics.state_errors.inc()
        log.warning("live state unavailable; judging jumps within the batch", error=str(e))
        known = {}
    moved: dict = {}
    changed: dict[tuple[str, datetime], Fix] = {}
    for device_id, own in by_device.items():
        own.sort(key=lambda f: f.fix_time)
        before = known.get(device_id) or JumpState()
        after, verdicts = judge_jumps(before, own, filters)
        changed.update({(f.device_id, f.fix_time): v
                        for f, v in zip(own, verdicts, strict=True) if v is not f})
        if after.candidates != before.candidates:
            moved[device_id] = after.candidates
    if changed:
        for m in messages:
            m.fixes = [changed.get((f.device_id, f.fix_time), f) for f in m.fixes]
    metrics.fixes_outlier.inc(sum(f.outlier for m in messages for f in m.fixes))
    if moved:  # rare: only while a device's fixes disagree with its reference
        try:
            await state.save_candidates(moved)
        except (StateError, OSError) as e:
            logs.still_running()
            metrics.state_errors.inc()
            log.warning("jump candidates not saved", error=str(e))
