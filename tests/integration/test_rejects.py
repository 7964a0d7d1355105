"""Every bad message ends as a reject with a clear reason, and the worker keeps consuming."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from tests.integration.conftest import count, eventually, publish_all, running
from tether.config import Settings

NOW = time.time()


def good(i: int = 0) -> bytes:
    return json.dumps({"ts": NOW - 600 + i, "lat": 31.2, "lon": 121.4}).encode()


# (topic suffix under the native root or "OT:" + OwnTracks suffix, payload, expected reason part)
CORPUS = [
    ("devices/{d}/loc", b"not json at all", "not JSON"),
    ("devices/{d}/loc", os.urandom(64) + b"\xff", "not JSON"),
    ("devices/{d}/loc", b'{"ts": "yesterday", "lat": 31, "lon": 121}', "invalid"),
    ("devices/{d}/loc", b'{"ts": 1700000000, "lat": "31.2", "lon": 121}', "Expected `float`"),
    ("devices/{d}/loc", b'{"lat": 31.2, "lon": 121.4}', "missing required field `ts`"),
    ("devices/{d}/loc", b'{"ts": 1700000000, "lat": 91, "lon": 121}', "<= 90"),
    ("devices/{d}/loc", b'{"ts": 1700000000, "lat": 31, "lon": -181}', ">= -180"),
    ("devices/{d}/loc", b'{"ts": 1700000000, "lat": 0, "lon": 0}', "0,0"),
    ("devices/{d}/loc", b'{"ts": 1700000000000, "lat": 31, "lon": 121}', "epoch seconds"),
    ("devices/{d}/loc", b'{"ts": "2024-01-01T00:00:00", "lat": 31, "lon": 121}', "UTC offset"),
    ("devices/{d}/loc", json.dumps({"ts": NOW + 3600, "lat": 31, "lon": 121}).encode(), "future"),
    ("devices/{d}/loc", b'{"ts": 1700000000, "lat": 31, "lon": 121, "batt": 101}', "<= 100"),
    ("devices/{d}/loc", b'{"ts": 1700000000, "lat": 31, "lon": 121, "crs": "osgb"}', "crs"),
    ("devices/{d}/loc", b"[]", "empty batch"),
    ("devices/{d}/loc", json.dumps([{"ts": 1.7e9, "lat": 1, "lon": 1}] * 501).encode(), "501"),
    ("devices/{d}/loc", b"x" * (300 * 1024), "oversize"),
    ("devices/{d}/loc", b"", "empty payload"),
    ("devices/{d}/loc", b"42", "Expected `object`"),
    ("devices/{d}/evt", b'{"type": "teleport", "ts": 1700000000}', "unknown event type"),
    ("devices/{d}/status", b"sleepy", "online"),
    ("devices/{d}/cmd", b"{}", "unknown topic"),
    ("devices/{d}", b"{}", "unknown topic"),
    ("gadgets/{d}/loc", b"{}", "unknown topic"),
    ("devices/bad$id/loc", good(), "bad device id"),
    ("OT:{d}", b'{"lat": 1}', "no _type"),
    ("OT:{d}", b'{"_type": "location", "lat": 31, "lon": 121}', "tst"),
    ("OT:{d}", b'{"_type": "encrypted", "data": "abc"}', "encrypted"),
    ("OT:{d}", b'["_type"]', "JSON object"),
]


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "in-one-batch"])
async def test_bad_corpus_ends_as_rejects_and_the_worker_keeps_going(
        settings: Settings, db, register, publisher, batched: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    d = f"bad-{tag}"
    ot_user = f"u{tag}"
    register(d, f"{ot_user}.ph")
    ot_dev = f"{ot_user}/ph"
    msgs = []
    for suffix, payload, _ in CORPUS:
        if suffix.startswith("OT:"):
            topic = f"{settings.owntracks_root}/{suffix[3:].format(d=ot_dev)}"
        else:
            topic = f"{settings.mqtt_root}/{suffix.format(d=d)}"
        msgs.append((topic, payload))
    unknown = f"ghost-{tag}"
    msgs.append((f"{settings.mqtt_root}/devices/{unknown}/loc", good()))
    # A NUL character is valid JSON but refused by jsonb: the decoder rejects it alone.
    nul = json.dumps({"_type": "location", "tst": int(NOW) - 60, "lat": 31, "lon": 121,
                      "x": "a\u0000b"}).encode()
    msgs.append((f"{settings.owntracks_root}/{ot_dev}", nul))
    # A batch with one bad item keeps its good items.
    mixed = json.dumps([json.loads(good(1)), {"ts": 1, "lat": 1}, json.loads(good(2))]).encode()
    msgs.append((f"{settings.mqtt_root}/devices/{d}/loc", mixed))
    msgs.append((f"{settings.mqtt_root}/devices/{d}/loc", good(3)))
    if batched:
        settings = settings.model_copy(update={"batch_age_ms": 2000})
    async with running(settings):
        await publish_all(publisher, msgs)
        await eventually(lambda: count(db, "SELECT count(*) FROM fixes WHERE device_id = %s",
                                       d) == 3, what="good fixes after the bad ones")
        expected = len(CORPUS) + 3
        await eventually(lambda: count(db, "SELECT count(*) FROM ingest_rejects WHERE topic LIKE "
                                       "%s OR topic LIKE %s", f"{settings.mqtt_root}/%",
                                       f"{settings.owntracks_root}/%") == expected,
                         what=f"{expected} rejects")
    rows = db.execute("SELECT topic, payload, reason FROM ingest_rejects WHERE topic LIKE %s OR "
                      "topic LIKE %s ORDER BY id", (f"{settings.mqtt_root}/%",
                                                    f"{settings.owntracks_root}/%")).fetchall()
    reasons = [r[2] for r in rows]
    for _suffix, _payload, part in CORPUS:
        assert any(part in reason for reason in reasons), f"no reject mentions {part!r}"
    assert sum(r == "unknown device" for r in reasons) == 1
    assert sum("NUL character" in r for r in reasons) == 1
    assert any(r.startswith("item 1:") for r in reasons)
    assert max(len(bytes(r[1])) for r in rows) == 64 * 1024  # the oversize payload, truncated
