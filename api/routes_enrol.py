"""Logging in, enrolment writes and alert actions."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from alerts.lifecycle import Action, IllegalTransition
from api import models
from api.auth import Busy, Tokens, login_delay_s
from api.deps import (
    PathId,
    Store,
    User,
    caller,
    invalid,
    log,
    not_found,
    passwords,
    require,
    tokens,
)
from api.store import ForeignKeyViolation, Principal, UniqueViolation, enrol, reads
from api.store import accounts as acc

router = APIRouter(prefix="/api")
WRITERS = ("admin", "commander")


LOGIN_RESPONSES = {401: {"description": "wrong user name or password"},
                   429: {"description": "too many recent failures from this client for this "
                                        "user name: wait Retry-After seconds"},
                   503: {"description": "too many logins at once, or the database is "
                                        "unavailable: retry after Retry-After seconds"}}
CLIENT_SPREAD = 4  # one client may fail this many times more over all user names together


@router.post("/auth/token", response_model=models.Token, tags=["auth"],
             responses=LOGIN_RESPONSES)
async def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()],
                db: Store, toks: Annotated[Tokens, Depends(tokens)]) -> dict:
    """No transaction is open while the password is hashed: the hash runs in a thread, a few at
    a time, and the database is touched only in short statements before and after it."""
    s = request.app.state.settings
    client = caller(request)
    async with db.read() as cur:
        seen = await acc.recent_failures(cur, form.username, client,
                                         timedelta(seconds=s.login_window_s))
        row = await acc.user_for_login(cur, form.username)
    wait = max(_remaining(login_delay_s(seen["pair"], s.login_max_failures), seen["pair_age_s"]),
               _remaining(login_delay_s(seen["by_client"], CLIENT_SPREAD * s.login_max_failures),
                          seen["client_age_s"]))
    if wait > 0:
        log.warning("login throttled", user=form.username, client=client, wait_s=round(wait, 1))
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            "too many failed logins; try again later",
                            headers={"Retry-After": str(math.ceil(wait))})
    pw, attempt = passwords(request), (form.username, client)
    if attempt in pw.in_flight:  # one guess at a time per (user, client), or the throttle's
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,  # check could be raced
                            "a login for this user is already under way",
                            headers={"Retry-After": "1"})
    pw.in_flight.add(attempt)
    try:
        ok = await pw.verify(row["password_hash"] if row else None, form.password)
        ok = ok and not row["disabled"]
        async with db.write() as cur:
            if ok:
                await acc.forget_failures(cur, form.username, client)
            else:
                await acc.record_failure(cur, form.username, client)
    except Busy as e:
        raise HTTPException(e.status_code, str(e), headers={"Retry-After": "1"}) from e
    finally:
        pw.in_flight.discard(attempt)
    if not ok:
        log.warning("login failed", user=form.username, client=client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password",
                            headers={"WWW-Authenticate": "Bearer"})
    who = Principal(row["id"], row["username"], row["role"], row["jurisdiction_id"])
    return {"access_token": toks.issue(who), "token_type": "bearer", "expires_in": toks.ttl_s}


def _remaining(delay_s: float, since_last_s: float | None) -> float:
    return 0.0 if since_last_s is None else delay_s - since_last_s


@router.post("/jurisdictions", response_model=models.Jurisdiction, status_code=201,
             tags=["enrolment"])
async def create_jurisdiction(body: models.JurisdictionIn, who: User, db: Store,
                              request: Request) -> dict:
    require(who, request, "admin")
    async with db.write() as cur:
        if body.parent_id and not await enrol.jurisdiction_in_scope(cur, who, body.parent_id):
            raise not_found(who, request, "parent jurisdiction")
        return await enrol.create_jurisdiction(cur, who, body.name, body.parent_id,
                                               body.timezone)


@router.post("/users", response_model=models.User, status_code=201, tags=["enrolment"])
async def create_user(body: models.UserIn, who: User, db: Store, request: Request) -> dict:
    require(who, request, "admin")
    fields = body.model_dump(exclude={"password"})
    try:
        fields["password_hash"] = await passwords(request).hash(body.password)
    except Busy as e:
        raise HTTPException(e.status_code, str(e), headers={"Retry-After": "1"}) from e
    try:
        async with db.write() as cur:
            if body.jurisdiction_id and not await enrol.jurisdiction_in_scope(
                    cur, who, body.jurisdiction_id):
                raise not_found(who, request, "jurisdiction")
            return await acc.create_user(cur, who, fields)
    except UniqueViolation as e:
        raise HTTPException(status.HTTP_409_CONFLICT, "user name already taken") from e


@router.post("/subjects", response_model=models.Subject, status_code=201, tags=["enrolment"])
async def create_subject(body: models.SubjectIn, who: User, db: Store, request: Request) -> dict:
    require(who, request, *WRITERS)
    async with db.write() as cur:
        if not await enrol.jurisdiction_in_scope(cur, who, body.jurisdiction_id):
            raise not_found(who, request, "jurisdiction")
        if body.officer_id and not await enrol.user_in_scope(cur, who, body.officer_id):
            raise not_found(who, request, "officer")
        return await enrol.create_subject(cur, who, body.model_dump())


@router.post("/devices", response_model=models.Device, status_code=201, tags=["enrolment"])
async def create_device(body: models.DeviceIn, who: User, db: Store, request: Request) -> dict:
    require(who, request, *WRITERS)
    try:
        async with db.write() as cur:
            if not await enrol.subject_in_scope(cur, who, body.subject_id):
                raise not_found(who, request, "subject")
            return await enrol.create_device(cur, who, body.model_dump())
    except UniqueViolation as e:
        raise HTTPException(status.HTTP_409_CONFLICT, "device id already enrolled") from e


@router.post("/zones", response_model=models.Zone, status_code=201, tags=["enrolment"])
async def create_zone(body: models.ZoneIn, who: User, db: Store, request: Request) -> dict:
    require(who, request, *WRITERS)
    async with db.write() as cur:
        if not await enrol.jurisdiction_in_scope(cur, who, body.jurisdiction_id):
            raise not_found(who, request, "jurisdiction")
        if body.subject_id and not await enrol.subject_in_scope(cur, who, body.subject_id):
            raise not_found(who, request, "subject")
        return await enrol.create_zone(cur, who, body.model_dump())


@router.post("/subjects/{subject_id}/victims", response_model=models.Victim, status_code=201,
             tags=["enrolment"])
async def add_victim(subject_id: PathId, body: models.VictimIn, who: User, db: Store,
                     request: Request) -> dict:
    require(who, request, *WRITERS)
    try:
        async with db.write() as cur:
            if not await enrol.subject_in_scope(cur, who, subject_id):
                raise not_found(who, request, "subject")
            device = await enrol.device_in_scope(cur, who, body.device_id)
            if device is None:
                raise not_found(who, request, "device")
            if device["kind"] != "victim":
                raise invalid("the device must be enrolled with kind 'victim'", "body",
                              "device_id")
            return await enrol.create_victim(cur, who, subject_id, body.device_id,
                                             body.radius_m)
    except (UniqueViolation, ForeignKeyViolation) as e:
        raise HTTPException(status.HTTP_409_CONFLICT, "this victim is already linked") from e


async def _alert_action(alert_id: int, who: Principal, db: Store, request: Request,
                        action: Action, note: str | None) -> dict:
    async with db.write() as cur:
        before = await enrol.alert_for_update(cur, who, alert_id)
        if before is None:
            raise not_found(who, request, "alert")
        try:
            await enrol.alert_action(cur, who, before, action, note)
        except IllegalTransition as e:
            raise HTTPException(e.status_code, str(e)) from e
        (after,) = await reads.alerts(cur, who, alert_id=alert_id, limit=1)
        return after


@router.post("/alerts/{alert_id}/ack", response_model=models.Alert, tags=["alerts"],
             responses={409: {"description": "the alert is acknowledged or resolved already"}})
async def ack(alert_id: PathId, body: models.NoteIn, who: User, db: Store,
              request: Request) -> dict:
    return await _alert_action(alert_id, who, db, request, Action.ACKNOWLEDGE, body.note)


@router.post("/alerts/{alert_id}/resolve", response_model=models.Alert, tags=["alerts"],
             responses={409: {"description": "the alert is resolved already"}})
async def resolve(alert_id: PathId, body: models.ResolveIn, who: User, db: Store,
                  request: Request) -> dict:
    return await _alert_action(alert_id, who, db, request, Action.RESOLVE, body.note)
