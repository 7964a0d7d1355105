"""Casework (contract §6): change and end what was enrolled; monitoring orders; leave."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request, Response, status

from api import models
from api import models_casework as mc
from api.auth import Busy
from api.deps import DeviceIdPath, PathId, Store, User, invalid, not_found, passwords, require
from api.store import Principal, enrol
from api.store import casework as cw
from api.store import orders as od

router = APIRouter(prefix="/api")
WRITERS = ("admin", "commander")
CASEWORKERS = ("admin", "commander", "officer")
CONFLICT = {409: {"description": "not possible in the record's present state"}}


def _conflict(why: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, why)


@router.patch("/zones/{zone_id}", response_model=models.Zone, tags=["casework"],
              responses=CONFLICT)
async def patch_zone(zone_id: PathId, body: mc.ZonePatchIn, who: User, db: Store,
                     request: Request) -> dict:
    """The change applies to fixes dated after it; earlier fixes are judged on the version that
    was in force at their time."""
    require(who, request, *WRITERS)
    patch = body.model_dump(exclude_unset=True)
    async with db.write() as cur:
        before = await cw.zone_for_update(cur, who, zone_id)
        if before is None:
            raise not_found(who, request, "zone")
        if before["leave_id"] is not None:
            raise _conflict("a leave's destination changes with its leave, not here")
        if (err := mc.merged_zone_error(before, patch)) is not None:
            raise invalid(err[1], "body", err[0])
        if not patch:
            return before
        return await cw.patch_zone(cur, who, before, patch)


@router.delete("/zones/{zone_id}", status_code=204, tags=["casework"], responses=CONFLICT)
async def delete_zone(zone_id: PathId, who: User, db: Store, request: Request) -> Response:
    """The zone stops applying at once and its open alerts clear; its history stays."""
    require(who, request, *WRITERS)
    async with db.write() as cur:
        before = await cw.zone_for_update(cur, who, zone_id)
        if before is None:
            raise not_found(who, request, "zone")
        if before["leave_id"] is not None:
            raise _conflict("a leave's destination ends with its leave (cancel or return)")
        await cw.delete_zone(cur, who, before)
    return Response(status_code=204)


@router.patch("/subjects/{subject_id}", response_model=models.Subject, tags=["casework"])
async def patch_subject(subject_id: PathId, body: mc.SubjectPatchIn, who: User, db: Store,
                        request: Request) -> dict:
    """A new `jurisdiction_id` is a transfer: both ends must be in the caller's scope."""
    require(who, request, *WRITERS)
    patch = body.model_dump(exclude_unset=True)
    async with db.write() as cur:
        before = await enrol.subject_in_scope(cur, who, subject_id, lock=True)
        if before is None:
            raise not_found(who, request, "subject")
        if "jurisdiction_id" in patch and not await enrol.jurisdiction_in_scope(
                cur, who, patch["jurisdiction_id"]):
            raise not_found(who, request, "jurisdiction")
        if patch.get("officer_id") and not await enrol.user_in_scope(cur, who,
                                                                      patch["officer_id"]):
            raise not_found(who, request, "officer")
        return await cw.patch_subject(cur, who, before, patch) if patch else before


@router.patch("/devices/{device_id}", response_model=models.Device, tags=["casework"])
async def patch_device(device_id: DeviceIdPath, body: mc.DevicePatchIn, who: User, db: Store,
                       request: Request) -> dict:
    """Move a device to another subject in scope, or take it off its subject (`null`): its
    next fixes are judged for the new subject only, or for no one."""
    require(who, request, *WRITERS)
    async with db.write() as cur:
        before = await cw.device_for_update(cur, who, device_id)
        if before is None:
            raise not_found(who, request, "device")
        if body.subject_id is not None and not await enrol.subject_in_scope(
                cur, who, body.subject_id):
            raise not_found(who, request, "subject")
        return await cw.move_device(cur, who, before, body.subject_id)


@router.patch("/users/{user_id}", response_model=models.User, tags=["casework"])
async def patch_user(user_id: PathId, body: models.UserPatchIn, who: User, db: Store,
                     request: Request) -> dict:
    """Admins change anyone; others their own password and contact details. Disabling or a new
    password ends the user's sessions: REST at once, websockets within `session_recheck_s`."""
    patch = body.model_dump(exclude_unset=True)
    own = {"password", "phone", "email", "notify_webhook", "notify_format", "notify_secret"}
    if who.role != "admin" and (user_id != who.id or set(patch) - own):
        require(who, request, "admin")
    for field in ("disabled", "role", "notify_format"):
        if field in patch and patch[field] is None:
            raise invalid(f"{field} cannot be null", "body", field)
    if "password" in patch:
        if patch["password"] is None:
            raise invalid("password cannot be null", "body", "password")
        try:
            patch["password_hash"] = await passwords(request).hash(patch.pop("password"))
        except Busy as e:
            raise HTTPException(e.status_code, str(e), headers={"Retry-After": "1"}) from e
    async with db.write() as cur:
        before = await cw.user_for_update(cur, who, user_id)
        if before is None:
            raise not_found(who, request, "user")
        role = patch.get("role", before["role"])
        jid = patch.get("jurisdiction_id", before["jurisdiction_id"])
        if role != "admin" and jid is None:
            raise invalid("commanders and officers need a jurisdiction_id", "body",
                          "jurisdiction_id")
        if patch.get("jurisdiction_id") and not await enrol.jurisdiction_in_scope(
                cur, who, patch["jurisdiction_id"]):
            raise not_found(who, request, "jurisdiction")
        return await cw.patch_user(cur, who, before, patch) if patch else before


# --- monitoring orders -----------------------------------------------------------------------

async def _subject(cur, who: Principal, request: Request, sid: int) -> dict:
    row = await enrol.subject_in_scope(cur, who, sid, lock=True)
    if row is None:
        raise not_found(who, request, "subject")
    return row


@router.post("/subjects/{subject_id}/orders", response_model=mc.Order, status_code=201,
             tags=["orders"])
async def start_order(subject_id: PathId, body: mc.OrderIn, who: User, db: Store,
                      request: Request) -> dict:
    """Once a subject has orders, rules run (and positions are kept) only while one is in
    force."""
    require(who, request, *CASEWORKERS)
    async with db.write() as cur:
        await _subject(cur, who, request, subject_id)
        return await od.create_order(cur, who, subject_id, body.model_dump())


@router.get("/subjects/{subject_id}/orders", response_model=list[mc.Order], tags=["orders"])
async def list_orders(subject_id: PathId, who: User, db: Store, request: Request) -> list[dict]:
    async with db.read() as cur:
        if not await enrol.subject_in_scope(cur, who, subject_id):
            raise not_found(who, request, "subject")
        return await od.orders_of(cur, subject_id)


async def _open_order(cur, who: Principal, request: Request, oid: int) -> dict:
    row = await od.order_for_update(cur, who, oid)
    if row is None:
        raise not_found(who, request, "order")
    if row["ended_at"] is not None:
        raise _conflict("the order was ended")
    return row


@router.post("/orders/{order_id}/renew", response_model=mc.Order, tags=["orders"],
             responses=CONFLICT)
async def renew_order(order_id: PathId, body: mc.RenewIn, who: User, db: Store,
                      request: Request) -> dict:
    """A new end at most 3 months after the present one."""
    require(who, request, *CASEWORKERS)
    async with db.write() as cur:
        before = await _open_order(cur, who, request, order_id)
        if body.ends_at <= before["ends_at"]:
            raise invalid("ends_at must be after the order's present end", "body", "ends_at")
        if body.ends_at > mc.add_months(before["ends_at"], mc.MONTHS_PER_ORDER):
            raise invalid("ends_at may be at most 3 months after the present end", "body",
                          "ends_at")
        return await od.renew_order(cur, who, before, body.ends_at, body.note)


@router.post("/orders/{order_id}/end", response_model=mc.Order, tags=["orders"],
             responses=CONFLICT)
async def end_order(order_id: PathId, body: mc.EndIn, who: User, db: Store,
                    request: Request) -> dict:
    require(who, request, *CASEWORKERS)
    async with db.write() as cur:
        before = await _open_order(cur, who, request, order_id)
        if before["ends_at"] <= datetime.now(UTC):
            raise _conflict("the order has ended already")
        return await od.end_order(cur, who, before, body.note)


# --- leave -----------------------------------------------------------------------------------

@router.post("/subjects/{subject_id}/leaves", response_model=mc.Leave, status_code=201,
             tags=["leave"])
async def request_leave(subject_id: PathId, body: mc.LeaveIn, who: User, db: Store,
                        request: Request) -> dict:
    require(who, request, *CASEWORKERS)
    async with db.write() as cur:
        await _subject(cur, who, request, subject_id)
        return await od.create_leave(cur, who, subject_id, body.model_dump())


@router.get("/subjects/{subject_id}/leaves", response_model=list[mc.Leave], tags=["leave"])
async def list_leaves(subject_id: PathId, who: User, db: Store, request: Request) -> list[dict]:
    async with db.read() as cur:
        if not await enrol.subject_in_scope(cur, who, subject_id):
            raise not_found(who, request, "subject")
        return await od.leaves_of(cur, subject_id)


# action → (who may, from which states, new state)
_LEAVE_MOVES = {"approve": (WRITERS, ("requested",), "approved"),
                "reject": (WRITERS, ("requested",), "rejected"),
                "cancel": (CASEWORKERS, ("requested", "approved"), "cancelled"),
                "return": (CASEWORKERS, ("approved",), "returned")}


async def _leave_move(leave_id: int, action: str, note: str | None, who: Principal, db: Store,
                      request: Request) -> dict:
    roles, sources, target = _LEAVE_MOVES[action]
    require(who, request, *roles)
    async with db.write() as cur:
        before = await od.leave_for_update(cur, who, leave_id)
        if before is None:
            raise not_found(who, request, "leave")
        if action in ("approve", "reject") and before["requested_by"] == who.id:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "a leave is decided by someone other than its requester")
        if before["status"] not in sources:
            raise _conflict(f"the leave is {before['status']}")
        return await od.decide_leave(cur, who, before, target, note)


@router.post("/leaves/{leave_id}/approve", response_model=mc.Leave, tags=["leave"],
             responses=CONFLICT)
async def approve_leave(leave_id: PathId, who: User, db: Store, request: Request,
                        body: models.NoteIn | None = None) -> dict:
    """While the leave is in force the destination replaces the subject's inclusion zones and
    curfews; exclusion zones and victim links still apply."""
    return await _leave_move(leave_id, "approve", body and body.note, who, db, request)


@router.post("/leaves/{leave_id}/reject", response_model=mc.Leave, tags=["leave"],
             responses=CONFLICT)
async def reject_leave(leave_id: PathId, who: User, db: Store, request: Request,
                       body: models.NoteIn | None = None) -> dict:
    return await _leave_move(leave_id, "reject", body and body.note, who, db, request)


@router.post("/leaves/{leave_id}/cancel", response_model=mc.Leave, tags=["leave"],
             responses=CONFLICT)
async def cancel_leave(leave_id: PathId, who: User, db: Store, request: Request,
                       body: models.NoteIn | None = None) -> dict:
    return await _leave_move(leave_id, "cancel", body and body.note, who, db, request)


@router.post("/leaves/{leave_id}/return", response_model=mc.Leave, tags=["leave"],
             responses=CONFLICT)
async def return_from_leave(leave_id: PathId, who: User, db: Store, request: Request,
                            body: models.NoteIn | None = None) -> dict:
    return await _leave_move(leave_id, "return", body and body.note, who, db, request)
