"""Simulated devices: what each one sends, the way real ones send it.

- native trackers (wearables, some phones): `{root}/devices/{id}/loc` one JSON object, or a JSON
  array (their buffer) after a coverage gap; events on `/evt`;
- OwnTracks phones: `{owntracks_root}/{user}/{device}` `_type: location` with `tst`, `acc`,
  `batt`, `vel` in km/h, `cog`; after a gap the app sends its queue one message at a time.
Battery drains (faster for phones) and is charged overnight-style when low.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import msgspec

from simulators.geo import GpsError

DRAIN_PER_H = {"phone": 6.0, "wearable": 3.0, "victim": 4.0}
CHARGE_PER_H = 40.0
CHARGE_BELOW, CHARGED_AT = 25.0, 95.0  # never down to the server's 15 % battery_low
MAX_BUFFER = 500  # the contract's largest array; older fixes are dropped by the device


@dataclass(slots=True)
class SimDevice:
    id: str
    kind: str  # phone | wearable | victim
    owntracks: tuple[str, str] | None = None  # (user, device) for OwnTracks phones
    battery: float = 80.0
    charging: bool = False
    err: GpsError = field(default_factory=GpsError)
    next_at: float = 0.0  # run second of its next report
    last_at: float = 0.0
    gap_until: float = -1.0  # in a coverage gap until this run second
    buffer: list[dict] = field(default_factory=list)
    silent: bool = False
    mock_next: bool = False
    fixed_acc: float | None = None  # scripted: reported accuracy
    error_bound: float | None = None  # scripted: GPS error kept under this (m)
    pinned: tuple[float, float] | None = None  # scripted: left behind here (local metres)
    seq: int = 0

    @property
    def tid(self) -> str:
        return self.id[-2:]

    def drain(self, dt: float) -> list[dict]:
        """Battery over dt seconds; returns the charger events this caused."""
        events = []
        if self.charging:
            self.battery = min(100.0, self.battery + CHARGE_PER_H * dt / 3600)
            if self.battery >= CHARGED_AT:
                self.charging = False
                events.append({"type": "charger_off", "ts": round(time.time(), 3)})
        else:
            self.battery = max(0.0, self.battery - DRAIN_PER_H[self.kind] * dt / 3600)
            if self.battery <= CHARGE_BELOW:
                self.charging = True
                events.append({"type": "charger_on", "ts": round(time.time(), 3)})
        return events

    def fix(self, ts: float, lat: float, lon: float, acc: float, spd: float,
            hdg: float) -> dict:
        self.seq += 1
        if self.owntracks:
            return {"_type": "location", "tid": self.tid, "tst": int(ts), "lat": round(lat, 7),
                    "lon": round(lon, 7), "acc": round(acc), "batt": int(self.battery),
                    "vel": round(spd * 3.6), "cog": round(hdg), "conn": "m", "t": "u"}
        out = {"ts": round(ts, 3), "lat": round(lat, 7), "lon": round(lon, 7),
               "acc": round(acc, 1), "batt": int(self.battery), "spd": round(spd, 1),
               "hdg": round(hdg), "src": "gps" if acc < 20 else "fused", "seq": self.seq}
        if self.mock_next:
            out["mock"], self.mock_next = True, False
        return out

    def topic(self, root: str, ot_root: str, what: str = "loc") -> str:
        if self.owntracks:
            user, dev = self.owntracks
            return f"{ot_root}/{user}/{dev}"
        return f"{root}/devices/{self.id}/{what}"

    def report(self, now: float, fix: dict, root: str, ot_root: str
               ) -> list[tuple[str, bytes]]:
        """What goes out now: nothing in a gap (buffered), the buffer after one, else the fix."""
        if now < self.gap_until:
            self.buffer = [*self.buffer, fix][-MAX_BUFFER:]
            return []
        out = []
        if self.buffer:
            held, self.buffer = [*self.buffer, fix], []
            if self.owntracks:  # the app drains its queue message by message
                out = [(self.topic(root, ot_root), msgspec.json.encode(f)) for f in held]
            else:
                out = [(self.topic(root, ot_root), msgspec.json.encode(held))]
            return out
        return [(self.topic(root, ot_root), msgspec.json.encode(fix))]

    def event(self, ev: dict, root: str) -> tuple[str, bytes] | None:
        if self.owntracks:  # OwnTracks has no strap or charger events
            return None
        return f"{root}/devices/{self.id}/evt", msgspec.json.encode(ev)


def jitter_interval(interval: float, rng: random.Random) -> float:
    return interval * rng.uniform(0.9, 1.1)
