"""Shared pieces of the routes: the store, the current user, errors, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import OAuth2PasswordBearer

from api.auth import Passwords, TokenError, Tokens, client_address
from api.store import ApiStore, Principal
from api.store.accounts import principal, signing_secret
from geofence.types import DEVICE_ID_PATTERN
from tether import logs

log = logs.get("api")
oauth2 = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


def store(request: Request) -> ApiStore:
    return request.app.state.store


def passwords(request: Request) -> Passwords:
    return request.app.state.passwords


def caller(request: Request) -> str:
    """The caller's address for throttling and logs (X-Forwarded-For only via trusted proxies)."""
    return client_address(request.client.host if request.client else None,
                          request.headers.get("x-forwarded-for"),
                          request.app.state.settings.trusted_proxies)


async def tokens(request: Request) -> Tokens:
    """The signing secret is shared through the database, fetched once per process."""
    app = request.app
    if app.state.tokens is None:
        async with app.state.store.write() as cur:
            app.state.tokens = Tokens(await signing_secret(cur),
                                      app.state.settings.token_ttl_s)
    return app.state.tokens


async def current_user(request: Request, token: Annotated[str | None, Depends(oauth2)],
                       toks: Annotated[Tokens, Depends(tokens)]) -> Principal:
    unauthorised = HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid token",
                                 headers={"WWW-Authenticate": "Bearer"})
    if not token:
        raise unauthorised
    try:
        uid, _, issued_at = toks.session(token)
    except TokenError as e:
        raise unauthorised from e
    async with store(request).read() as cur:  # per request: a disabled user is out at once
        who = await principal(cur, uid, issued_at)
    if who is None:
        raise unauthorised
    return who


User = Annotated[Principal, Depends(current_user)]
# Ids and offsets are bounded so that no request can overflow a bigint in SQL (a 500).
PathId = Annotated[int, Path(ge=1, le=2**62)]
QueryId = Annotated[int | None, Query(ge=1, le=2**62)]
DeviceIdPath = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN}$")]
Store = Annotated[ApiStore, Depends(store)]


def denied(who: Principal, request: Request, why: str) -> HTTPException:
    log.warning("access denied", user=who.username, role=who.role, method=request.method,
                path=request.url.path, why=why)
    return HTTPException(status.HTTP_403_FORBIDDEN, why)


def not_found(who: Principal, request: Request, what: str) -> HTTPException:
    """Out of scope and absent look the same: an object's existence is not disclosed."""
    log.warning("not found or out of scope", user=who.username, method=request.method,
                path=request.url.path, what=what)
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def invalid(msg: str, *loc: str | int) -> RequestValidationError:
    """A 422 in the same shape as FastAPI's own (the schema every client already handles)."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg,
                                    "input": None}])


def require(who: Principal, request: Request, *roles: str) -> None:
    if who.role not in roles:
        raise denied(who, request, f"needs the role {' or '.join(roles)}")


def wants_csv(request: Request) -> bool:
    return "text/csv" in request.headers.get("accept", "")


def csv_response(rows: Iterable[dict], columns: list[str], filename: str) -> Response:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()})
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
