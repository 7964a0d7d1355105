"""The ground-truth check: what the scripts expected against what `GET /api/alerts` shows."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from simulators import scenarios
from simulators.rest import Api

if TYPE_CHECKING:
    from simulators.fleet import Fleet


@dataclass(slots=True)
class Outcome:
    expected: int
    raised: int
    missed: list[dict]
    spurious: list[dict]
    matched: list[dict]
    fixes_sent: int
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"expected": self.expected, "raised": self.raised,
                "missed": len(self.missed), "spurious": len(self.spurious)}


async def check(fleet: Fleet, api: Api, settle_s: float) -> Outcome:
    """Waits up to `settle_s` for what is due, then compares with the alerts raised for the
    fleet's subjects: each expectation takes one alert of its subject and type (and lateness,
    when the script knows it); alerts left over are spurious."""
    since = datetime.fromtimestamp(fleet.wall0 - 60, UTC)
    ids = {s.id: s.key for s in fleet.subjects}
    deadline = time.monotonic() + settle_s
    while True:
        ours = [a for a in await api.alerts(since) if a.get("subject_id") in ids]
        matched, missed, spare = _match(fleet.expect, ours, ids, fleet.wall0)
        if not missed or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return Outcome(len(fleet.expect), len(ours), missed, spare, matched, fleet.sent,
                   fleet.skipped)


def _match(expect: list[scenarios.Expect], alerts: list[dict], ids: dict[int, str],
           wall0: float) -> tuple[list[dict], list[dict], list[dict]]:
    left = list(alerts)
    matched, missed = [], []
    for e in expect:
        hit = next((a for a in left if ids[a["subject_id"]] == e.subject and a["type"] == e.type
                    and (e.late is None or bool(a.get("late")) == e.late)), None)
        if hit is None:
            missed.append({"subject": e.subject, "type": e.type, "due_s": round(e.at, 1),
                           "late": e.late})
            continue
        left.remove(hit)
        opened = datetime.fromisoformat(hit["opened_at"]).timestamp() - wall0
        matched.append({"subject": e.subject, "type": e.type, "due_s": round(e.at, 1),
                        "opened_s": round(opened, 1), "late": hit.get("late")})
    spurious = [{"subject": ids[a["subject_id"]], "type": a["type"], "id": a["id"]}
                for a in left]
    return matched, missed, spurious
