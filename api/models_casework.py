"""Bodies of casework (contract §6): changes, monitoring orders, leave, audit, statistics.

A PATCH body names only what changes; a field given as null where null means nothing (a name,
a geometry) is refused with a 422 naming it.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator

from api.models import Body, Id, Name, Radius, _check_tz
from geofence.schedule import ScheduleError, parse_schedule
from geofence.zones import ZoneError, validate_geometry

Note = Annotated[str, Field(min_length=1, max_length=4000)]
MONTHS_PER_ORDER = 3  # Community Corrections Law art. 29: at most three months at a time


def add_months(t: datetime, months: int) -> datetime:
    """The same day `months` later (the month's last day when it has no such day)."""
    m = t.month - 1 + months
    year, month = t.year + m // 12, m % 12 + 1
    return t.replace(year=year, month=month,
                     day=min(t.day, calendar.monthrange(year, month)[1]))


def _not_null(data: Any, *names: str) -> Any:
    if isinstance(data, dict):
        for n in names:
            if n in data and data[n] is None:
                raise ValueError(f"{n} cannot be null")
    return data


class ZonePatchIn(Body):
    name: Name | None = None
    geometry: dict[str, Any] | None = None
    radius_m: Radius | None = None
    buffer_m: Annotated[float, Field(ge=0, le=10_000)] | None = None
    schedule: list[dict[str, Any]] | None = None  # null: always in force

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return _not_null(data, "name", "geometry")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: list | None) -> list | None:
        try:
            parse_schedule(v)
        except ScheduleError as e:
            raise ValueError(str(e)) from e
        return v


def merged_zone_error(old: dict, patch: dict) -> tuple[str, str] | None:
    """The zone as it would be after the patch, checked whole: (field, why) or None."""
    new = {**old, **patch}
    try:
        validate_geometry(new["geometry"], new["radius_m"])
    except ZoneError as e:
        return ("geometry" if "geometry" in patch else "radius_m"), str(e)
    if new["buffer_m"] is not None and new["kind"] != "exclusion":
        return "buffer_m", "buffer_m (a warning ring) applies only to exclusion zones"
    return None


class SubjectPatchIn(Body):
    name: Name | None = None
    officer_id: Id | None = None
    timezone: str | None = None
    jurisdiction_id: Id | None = None
    _tz = field_validator("timezone")(_check_tz)

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return _not_null(data, "name", "jurisdiction_id")


class DevicePatchIn(Body):
    subject_id: Id | None  # required: null takes the device off its subject


class OrderIn(Body):
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    basis: Annotated[str, Field(max_length=2000)] | None = None
    note: Annotated[str, Field(max_length=4000)] | None = None

    @model_validator(mode="after")
    def _span(self) -> OrderIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.ends_at > add_months(self.starts_at, MONTHS_PER_ORDER):
            raise ValueError("ends_at may be at most 3 months after starts_at")
        return self


class RenewIn(Body):
    ends_at: AwareDatetime
    note: Note


class EndIn(Body):
    note: Note


class Order(BaseModel):
    id: int
    subject_id: int
    starts_at: datetime
    ends_at: datetime
    basis: str | None
    note: str | None
    ended_at: datetime | None
    renewals: list[dict[str, Any]]
    created_by: int | None
    created_at: datetime
    in_force: bool
    expiring: bool  # ends within 7 days


class LeaveIn(Body):
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    destination: dict[str, Any]
    radius_m: Radius | None = None
    reason: Note

    @model_validator(mode="after")
    def _valid(self) -> LeaveIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.ends_at - self.starts_at > timedelta(days=366):
            raise ValueError("ends_at: a leave may last at most a year")
        try:
            validate_geometry(self.destination, self.radius_m)
        except ZoneError as e:
            raise ValueError(f"destination: {e}") from e
        return self


class Leave(BaseModel):
    id: int
    subject_id: int
    starts_at: datetime
    ends_at: datetime
    destination: dict[str, Any]
    radius_m: float | None
    reason: str
    status: str
    requested_by: int | None
    decided_by: int | None
    decided_at: datetime | None
    returned_at: datetime | None
    zone_id: int | None
    history: list[dict[str, Any]]
    created_at: datetime


class AuditEntry(BaseModel):
    id: int
    at: datetime
    user_id: int | None
    username: str | None
    action: str
    object_type: str
    object_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class Stats(BaseModel):
    """One jurisdiction, counting everything at or below it, over [since, until)."""
    jurisdiction_id: int
    name: str
    parent_id: int | None
    since: datetime
    until: datetime
    subjects: int
    devices: int
    devices_online: int
    open_alerts: dict[str, int]
    alerts_opened: dict[str, int]
    alerts_resolved: dict[str, int]
    median_ack_s: float | None
    orders_in_force: int
    orders_expiring: int  # ending within 7 days
