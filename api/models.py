"""Request and response bodies. Validation errors become 422s that say what and where."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from alerts.urls import MAX_URL_LENGTH, check_webhook_url
from geofence.schedule import ScheduleError, parse_schedule, zone_info
from geofence.types import DEVICE_ID_PATTERN
from geofence.zones import ZoneError, validate_geometry

Name = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[int, Field(ge=1, le=2**62)]
DeviceId = Annotated[str, Field(pattern=f"^{DEVICE_ID_PATTERN}$")]
Radius = Annotated[float, Field(gt=0, le=100_000)]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=200)]
# One check for the API and delivery (alerts/urls.py): a URL stored here can be delivered to.
WebhookUrl = Annotated[str, Field(max_length=MAX_URL_LENGTH), AfterValidator(check_webhook_url)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        """PostgreSQL text cannot hold NUL: say so here rather than fail in the database."""
        def walk(v: Any, path: str) -> None:
            if isinstance(v, str) and "\x00" in v:
                raise ValueError(f"{path or 'body'}: NUL characters are not allowed")
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(x, f"{path}.{k}" if path else str(k))
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    walk(x, f"{path}[{i}]")
        walk(data, "")
        return data


def _check_tz(v: str | None) -> str | None:
    if v is not None:
        try:
            zone_info(v)
        except ScheduleError as e:
            raise ValueError(f"{e}: use an IANA name such as Asia/Shanghai") from e
    return v


class JurisdictionIn(Body):
    name: Name
    parent_id: Id | None = None
    timezone: str | None = None
    _tz = field_validator("timezone")(_check_tz)


class Jurisdiction(BaseModel):
    id: int
    name: str
    parent_id: int | None
    timezone: str
    path: list[int]
    created_at: datetime


class UserIn(Body):
    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,100}$")]
    password: Annotated[str, Field(min_length=8, max_length=200)]
    role: Literal["admin", "commander", "officer"]
    jurisdiction_id: Id | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Email | None = None
    notify_webhook: WebhookUrl | None = None
    notify_format: Literal["json", "dingtalk", "wecom"] = "json"
    notify_secret: Annotated[str, Field(max_length=200)] | None = None

    @model_validator(mode="after")
    def _scoped(self) -> UserIn:
        if self.role != "admin" and self.jurisdiction_id is None:
            raise ValueError("commanders and officers need a jurisdiction_id")
        return self


class UserPatchIn(Body):
    """PATCH /api/users/{id} (contract §6): any of these; the webhook checked as on creation."""
    password: Annotated[str, Field(min_length=8, max_length=200)] | None = None
    disabled: bool | None = None
    role: Literal["admin", "commander", "officer"] | None = None
    jurisdiction_id: Id | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Email | None = None
    notify_webhook: WebhookUrl | None = None
    notify_format: Literal["json", "dingtalk", "wecom"] | None = None
    notify_secret: Annotated[str, Field(max_length=200)] | None = None


class User(BaseModel):
    id: int
    username: str
    role: str
    jurisdiction_id: int | None
    phone: str | None
    email: str | None
    notify_webhook: str | None
    notify_format: str
    disabled: bool
    created_at: datetime


class SubjectIn(Body):
    name: Name
    jurisdiction_id: Id
    officer_id: Id | None = None
    timezone: str | None = None
    _tz = field_validator("timezone")(_check_tz)


class Position(BaseModel):
    device_id: str
    lat: float
    lon: float
    ts: datetime
    acc: float | None
    received_at: datetime


class Subject(BaseModel):
    id: int
    name: str
    jurisdiction_id: int
    officer_id: int | None
    timezone: str
    created_at: datetime
    devices: list[dict[str, str]] = []
    last_position: Position | None = None
    open_alerts: int = 0


class DeviceIn(Body):
    id: DeviceId
    kind: Literal["phone", "wearable", "victim"]
    subject_id: Id


class Device(BaseModel):
    id: str
    kind: str
    subject_id: int | None  # None: taken off its subject (PATCH, contract §6)
    created_at: datetime


class Window(BaseModel):
    days: list[int]
    start: str
    end: str


class ZoneIn(Body):
    name: Name
    kind: Literal["exclusion", "inclusion"]
    geometry: dict[str, Any]
    radius_m: Radius | None = None
    buffer_m: Annotated[float, Field(ge=0, le=10_000)] | None = None
    subject_id: Id | None = None
    jurisdiction_id: Id
    schedule: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _valid(self) -> ZoneIn:
        try:
            validate_geometry(self.geometry, self.radius_m)
            parse_schedule(self.schedule)
        except (ZoneError, ScheduleError) as e:
            raise ValueError(str(e)) from e
        if self.buffer_m is not None and self.kind != "exclusion":
            raise ValueError("buffer_m (a warning ring) applies only to exclusion zones")
        return self


class Zone(BaseModel):
    id: int
    name: str
    kind: str
    geometry: dict[str, Any]
    radius_m: float | None
    buffer_m: float | None
    subject_id: int | None
    jurisdiction_id: int
    schedule: list[Window] | None
    created_at: datetime


class VictimIn(Body):
    device_id: DeviceId
    radius_m: Radius


class Victim(BaseModel):
    id: int
    subject_id: int
    device_id: str
    radius_m: float
    created_at: datetime


class NoteIn(Body):
    note: Annotated[str, Field(max_length=4000)] | None = None


class ResolveIn(Body):
    note: Annotated[str, Field(min_length=1, max_length=4000)]


class AlertEvent(BaseModel):
    at: datetime
    action: str
    user_id: int | None
    note: str | None
    data: dict[str, Any]


class Alert(BaseModel):
    id: int
    type: str
    severity: str
    status: str
    subject_id: int
    device_id: str | None
    zone_id: int | None
    opened_at: datetime
    updated_at: datetime
    position: dict[str, Any] | None
    late: bool
    confidence: str | None
    details: dict[str, Any]
    breach_count: int
    last_seen_at: datetime | None
    cleared_at: datetime | None
    escalated_at: datetime | None = None  # when it went to the commanders above (unanswered)
    history: list[AlertEvent] = []


class Approach(BaseModel):
    subject_id: int
    subject_name: str
    device_id: str
    distance_m: float
    ts: datetime
    lat: float
    lon: float


class Reject(BaseModel):
    id: int
    received_at: datetime
    topic: str
    reason: str
    device_id: str | None
    payload_size: int
    payload_text: str  # the kept bytes as UTF-8, undecodable bytes replaced
    payload_base64: str


class JurisdictionStats(BaseModel):
    jurisdiction_id: int
    name: str
    subjects: int
    devices: int
    devices_online: int
    open_alerts: dict[str, int]


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
