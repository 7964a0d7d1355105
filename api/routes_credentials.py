"""A device's broker login (contract section 6): `POST /api/devices/{id}/credentials`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel

from api.deps import Store, User, log, not_found, require
from api.store import credentials as cred
from api.store import enrol

router = APIRouter(prefix="/api")
ISSUERS = ("admin", "commander", "officer")
DeviceIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class Credentials(BaseModel):
    username: str
    password: str


@router.post("/devices/{device_id}/credentials", response_model=Credentials, tags=["devices"],
             responses={404: {"description": "no such device in your scope"},
                        409: {"description": "the MQTT username belongs to another device"},
                        503: {"description": "the broker manages no logins, or is unreachable"}})
async def issue_credentials(device_id: DeviceIdPath, request: Request, db: Store,
                            who: User) -> dict:
    """The device's MQTT login, shown once: a new call replaces the old password at once.
    The broker is changed inside the database transaction, so a refused broker call records
    nothing; a commit failing after it leaves a password nobody holds (ask again)."""
    require(who, request, *ISSUERS)
    s = request.app.state.settings
    async with db.write() as cur:
        device = await enrol.device_in_scope(cur, who, device_id)
        if device is None:
            raise not_found(who, request, "device")
        admin = await cred.admin_url(cur, s.mqtt_url)
        if admin is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                "the broker manages no device logins (run the setup)")
        login = cred.device_login(device["id"], device["kind"], s.mqtt_root, s.owntracks_root)
        password = cred.new_password()
        try:
            await cred.issue(cur, who, device, login)
            await cred.set_device_login(admin, login, password)
        except cred.LoginTaken as e:
            raise HTTPException(e.status, str(e)) from e
        except cred.BrokerUnavailable as e:
            log.warning("device login not issued", device=device_id, error=str(e))
            raise HTTPException(e.status, "the broker did not take the new login") from e
        except Exception as e:  # the broker is outside: whatever it does is a 503, not a 500
            log.exception("device login not issued", device=device_id)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                "the broker did not take the new login") from e
    log.info("device login issued", device=device_id, username=login.username,
             user=who.username)
    return {"username": login.username, "password": password}
