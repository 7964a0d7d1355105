"""Rule keys: the names under which a subject's rule state keeps each rule (one per device).

Keys are strings in the stored state (`SubjectState.rules`), so state written by an earlier
version reads the same; this module is the only place that builds or parses them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class RuleKind(StrEnum):
    ZONE = "z"  # inside an exclusion zone / outside an inclusion zone or curfew
    BUFFER = "b"  # inside an exclusion zone's warning ring
    VICTIM = "v"  # near a protected victim's device
    SPOOF = "spoof"
    BATTERY = "batt"
    OFFLINE = "off"
    STRAP = "strap"
    IMPAIRED = "impaired"
    ORDER = "o"  # a monitoring order ending soon (order_expiring)
    LEAVE = "l"  # a leave not returned from in time (leave_overrun)


_WITH_REF = frozenset({RuleKind.ZONE, RuleKind.BUFFER, RuleKind.VICTIM, RuleKind.ORDER,
                       RuleKind.LEAVE})
SUBJECT_WIDE = "*"  # the device part of a rule about the subject, not one device
ZONE_KINDS = (RuleKind.ZONE, RuleKind.BUFFER)  # the rules a zone's fixes feed
_BY_NAME = {k.value: k for k in RuleKind if k not in _WITH_REF}


class RuleKey(NamedTuple):
    kind: RuleKind
    device_id: str
    ref: int | None = None  # the zone's or victim link's id, for the kinds that have one


def zone(zone_id: int, device_id: str) -> str:
    return f"z{zone_id}:{device_id}"


def buffer(zone_id: int, device_id: str) -> str:
    return f"b{zone_id}:{device_id}"


def victim(link_id: int, device_id: str) -> str:
    return f"v{link_id}:{device_id}"


def order(order_id: int) -> str:
    return f"o{order_id}:{SUBJECT_WIDE}"


def leave(leave_id: int) -> str:
    return f"l{leave_id}:{SUBJECT_WIDE}"


def device(kind: RuleKind, device_id: str) -> str:
    """A rule about the device itself (spoofing, battery, silence, strap, impaired)."""
    assert kind not in _WITH_REF, kind
    return kind.value + ":" + device_id  # per fix on the hot path: no format() of the enum


def parse(key: str) -> RuleKey | None:
    """The key's parts, or None for a key this version does not know (kept, not judged)."""
    head, sep, device_id = key.partition(":")  # device ids may hold ':' themselves
    if not sep or not device_id:
        return None
    if head in _BY_NAME:
        return RuleKey(_BY_NAME[head], device_id)
    if len(head) > 1 and head[0] in "zbvol" and head[1:].isdigit():
        return RuleKey(RuleKind(head[0]), device_id, int(head[1:]))
    return None
