"""Rule keys: built and parsed in one place; stored state of earlier versions reads the same."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geofence import keys
from geofence.keys import RuleKey, RuleKind

device_ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


def test_the_stored_shapes_are_unchanged() -> None:
    assert keys.zone(12, "w-1") == "z12:w-1"
    assert keys.buffer(12, "w-1") == "b12:w-1"
    assert keys.victim(3, "w-1") == "v3:w-1"
    assert keys.device(RuleKind.OFFLINE, "w-1") == "off:w-1"


@given(device_ids, st.integers(0, 2**62))
def test_keys_round_trip_even_with_colons_in_device_ids(device_id: str, ref: int) -> None:
    assert keys.parse(keys.zone(ref, device_id)) == RuleKey(RuleKind.ZONE, device_id, ref)
    assert keys.parse(keys.buffer(ref, device_id)) == RuleKey(RuleKind.BUFFER, device_id, ref)
    assert keys.parse(keys.victim(ref, device_id)) == RuleKey(RuleKind.VICTIM, device_id, ref)
    for kind in (RuleKind.SPOOF, RuleKind.BATTERY, RuleKind.OFFLINE, RuleKind.STRAP,
                 RuleKind.IMPAIRED):
        assert keys.parse(keys.device(kind, device_id)) == RuleKey(kind, device_id)


def test_unknown_keys_are_none_not_errors() -> None:
    for key in ("", "z:", "zx:w", "q12:w", "spoof", "z12"):
        assert keys.parse(key) is None
