"""Reads: subjects, zones, alerts, tracks, crime-scene correlation, rejects, statistics."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from api import models
from api import models_casework as mc
from api.deps import (
    PathId,
    QueryId,
    Store,
    User,
    csv_response,
    invalid,
    not_found,
    require,
    wants_csv,
)
from api.store import enrol, oversight, reads

router = APIRouter(prefix="/api")
Limit = Annotated[int, Query(ge=1, le=5000)]
MAX_TRACK_POINTS = 100_000
MAX_CORRELATE_WINDOW = timedelta(days=31)


def _window(start: datetime, end: datetime, longest: timedelta | None = None,
            names: tuple[str, str] = ("from", "to")) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise invalid(f"{names[0]} and {names[1]} need a UTC offset (RFC 3339)", "query",
                      names[0] if start.tzinfo is None else names[1])
    if end <= start:
        raise invalid(f"{names[1]} must be after {names[0]}", "query", names[1])
    if longest and end - start > longest:
        raise invalid(f"the window may span at most {longest.days} days", "query", names[1])


@router.get("/jurisdictions", response_model=list[models.Jurisdiction], tags=["enrolment"])
async def list_jurisdictions(who: User, db: Store) -> list[dict]:
    async with db.read() as cur:
        return await reads.jurisdictions(cur, who)


@router.get("/subjects", response_model=list[models.Subject], tags=["subjects"])
async def list_subjects(who: User, db: Store, limit: Limit = 1000,
                        offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> list[dict]:
    async with db.read() as cur:
        return await reads.subjects(cur, who, None, limit, offset)


@router.get("/subjects/{subject_id}", response_model=models.Subject, tags=["subjects"])
async def get_subject(subject_id: PathId, who: User, db: Store, request: Request) -> dict:
    async with db.read() as cur:
        rows = await reads.subjects(cur, who, subject_id, 1, 0)
    if not rows:
        raise not_found(who, request, "subject")
    return rows[0]


@router.get("/zones", response_model=list[models.Zone], tags=["enrolment"])
async def list_zones(who: User, db: Store) -> list[dict]:
    async with db.read() as cur:
        return await reads.zones(cur, who)


ALERT_CSV = ["id", "type", "severity", "status", "subject_id", "device_id", "zone_id",
             "opened_at", "updated_at", "late", "confidence", "breach_count", "cleared_at"]


@router.get("/alerts", response_model=list[models.Alert], tags=["alerts"],
            responses={200: {"content": {"text/csv": {}}}})
async def list_alerts(who: User, db: Store, request: Request, subject_id: QueryId = None,
                      status: Literal["open", "acknowledged", "resolved"] | None = None,
                      type: str | None = None, since: datetime | None = None,
                      limit: Limit = 500):
    async with db.write() as cur:
        rows = await reads.alerts(cur, who, subject_id=subject_id, status=status, type_=type,
                                  since=since, limit=limit)
        if not wants_csv(request):
            return rows
        await oversight.record_read(cur, who, "export", "alerts", None,
                                    {"subject_id": subject_id, "status": status, "type": type,
                                     "since": since, "rows": len(rows)})
    return csv_response(rows, ALERT_CSV, "alerts.csv")


@router.get("/subjects/{subject_id}/track", tags=["subjects"],
            responses={200: {"description": "GeoJSON FeatureCollection (or CSV)",
                             "content": {"application/geo+json": {}, "text/csv": {}}}})
async def get_track(subject_id: PathId, who: User, db: Store, request: Request,
                    start: Annotated[datetime, Query(alias="from")],
                    end: Annotated[datetime, Query(alias="to")],
                    max_points: Annotated[int, Query(ge=2, le=MAX_TRACK_POINTS)] = 5000):
    _window(start, end)
    async with db.write() as cur:  # the read is audited with it
        if not await enrol.subject_in_scope(cur, who, subject_id):
            raise not_found(who, request, "subject")
        rows = await reads.track(cur, subject_id, start, end, max_points)
        await oversight.record_read(cur, who, "export_track" if wants_csv(request)
                                    else "read_track", "subject", subject_id,
                                    {"subject_id": subject_id, "from": start, "to": end,
                                     "points": len(rows)})
    if wants_csv(request):
        return csv_response(rows, ["device_id", "fix_time", "lat", "lon", "accuracy_m",
                                   "speed_mps", "battery_pct", "outlier"], "track.csv")
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
         "properties": {"device_id": r["device_id"], "ts": r["fix_time"].isoformat(),
                        "acc": r["accuracy_m"], "spd": r["speed_mps"], "batt": r["battery_pct"],
                        "outlier": r["outlier"]}} for r in rows]}


@router.get("/correlate", response_model=list[models.Approach], tags=["subjects"])
async def correlate(who: User, db: Store, lat: Annotated[float, Query(ge=-90, le=90)],
                    lon: Annotated[float, Query(ge=-180, le=180)],
                    radius_m: Annotated[float, Query(gt=0, le=50_000)],
                    start: Annotated[datetime, Query(alias="from")],
                    end: Annotated[datetime, Query(alias="to")]) -> list[dict]:
    _window(start, end, MAX_CORRELATE_WINDOW)
    async with db.write() as cur:  # the read is audited with it
        rows = await reads.correlate(cur, who, lat, lon, radius_m, start, end)
        await oversight.record_read(cur, who, "correlate", "correlation", None,
                                    {"lat": lat, "lon": lon, "radius_m": radius_m,
                                     "from": start, "to": end,
                                     "subjects": [r["subject_id"] for r in rows]})
        return rows


@router.get("/ingest/rejects", response_model=list[models.Reject], tags=["operations"])
async def list_rejects(who: User, db: Store, request: Request, since: datetime | None = None,
                       limit: Limit = 500) -> list[dict]:
    require(who, request, "admin")
    async with db.read() as cur:
        rows = await reads.rejects(cur, since, limit)
    return [{**r, "payload_size": len(r["payload"]),
             "payload_text": bytes(r["payload"]).decode("utf-8", "replace"),
             "payload_base64": base64.b64encode(bytes(r["payload"])).decode()} for r in rows]


STATS_CSV = ["jurisdiction_id", "name", "parent_id", "since", "until", "subjects", "devices",
             "devices_online", "open_alerts", "alerts_opened", "alerts_resolved", "median_ack_s",
             "orders_in_force", "orders_expiring"]


@router.get("/stats", response_model=list[mc.Stats], tags=["operations"],
            responses={200: {"content": {"text/csv": {}}}})
async def stats(who: User, db: Store, request: Request, since: datetime | None = None,
                until: datetime | None = None):
    """Per jurisdiction in scope, counts that include every jurisdiction below it; alerts
    opened, resolved and acknowledged within [since, until) (default: the last 30 days)."""
    now = datetime.now(UTC)
    until = until or now
    since = since or until - timedelta(days=30)
    _window(since, until, None, ("since", "until"))
    online = timedelta(seconds=request.app.state.settings.offline_wearable_s)
    async with db.write() as cur:
        rows = await oversight.stats(cur, who, online, since, until)
        if wants_csv(request):
            await oversight.record_read(cur, who, "export", "stats", None,
                                        {"since": since, "until": until})
    if wants_csv(request):
        return csv_response([{**r, **{k: json.dumps(r[k]) for k in
                                      ("open_alerts", "alerts_opened", "alerts_resolved")}}
                             for r in rows], STATS_CSV, "stats.csv")
    return rows


@router.get("/audit", response_model=list[mc.AuditEntry], tags=["operations"])
async def audit_log(who: User, db: Store, request: Request, since: datetime | None = None,
                    user_id: QueryId = None, subject_id: QueryId = None,
                    limit: Limit = 500) -> list[dict]:
    """Writes, and reads of tracks, correlations and exports (who looked at whom). Admin: all;
    commander: the own scope."""
    require(who, request, "admin", "commander")
    async with db.read() as cur:
        return await oversight.audit_entries(cur, who, since, user_id, subject_id, limit)
