"""The FastAPI application: REST (contract §2), health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from api import live, pages, routes_casework, routes_credentials, routes_enrol, routes_read
from api.auth import Passwords
from api.settings import ApiSettings
from api.store import ApiStore, CheckViolation, DataError, Unavailable
from api.ws import AlertHub, alerts_socket
from tether import logs
from tether.supervise import Health, supervised

log = logs.get("api")


class PartHealth(BaseModel):
    status: str  # starting | running | failed
    failures: int
    last_error: str | None


class Healthz(BaseModel):
    status: str  # ok | degraded
    parts: dict[str, PartHealth]
    failing: list[str]


def create_app(settings: ApiSettings, health: Health | None = None) -> FastAPI:
    """`health`: the process's parts (ingest, delivery, ...) as `tether serve` supervises them;
    `/healthz` reports them with the API's own alert feed. Absent: the API's parts only."""
    health = health if health is not None else Health()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await app.state.store.open()
        hub = asyncio.create_task(
            supervised("api-alert-hub", app.state.hub.run, health, settings.task_restart_max_s),
            name="api-alert-hub")
        try:
            yield
        finally:
            hub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hub
            await app.state.store.close()
            app.state.passwords.close()

    app = FastAPI(title="Tether", version="0.1.0", lifespan=lifespan,
                  description="Real-time monitoring for community corrections. Bearer tokens "
                              "from POST /api/auth/token. The device protocol (MQTT) is "
                              "described in docs/contract.md.")
    app.state.settings = settings
    app.state.store = ApiStore(settings.database_url)
    app.state.tokens = None
    app.state.health = health
    app.state.passwords = Passwords(settings.login_concurrency)
    app.include_router(routes_enrol.router)
    app.include_router(routes_read.router)
    app.include_router(routes_credentials.router)  # device logins on the broker
    app.include_router(routes_casework.router)
    app.state.hub = AlertHub(app.state.store, settings.database_url)
    app.add_api_websocket_route("/ws/alerts", alerts_socket)
    live.install(app, settings)  # WS /ws/live, fed by ingest through Redis
    pages.install(app, settings)  # /, /officer, /playback

    @app.exception_handler(Unavailable[0])
    async def db_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": "database unavailable; try again"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(CheckViolation)
    @app.exception_handler(DataError)
    async def refused_by_database(request: Request, exc: Exception) -> JSONResponse:
        # Input that passed validation but that the database cannot hold: the client's error.
        log.warning("input refused by the database", path=request.url.path,
                    error=exc.diag.message_primary)
        return JSONResponse({"detail": [{"type": "value_error", "loc": ["request"],
                                         "msg": f"refused: {exc.diag.message_primary}"}]},
                            status_code=422)

    @app.get("/healthz", tags=["operations"], response_model=Healthz,
             responses={503: {"model": Healthz, "description": "a part is failing (named)"}})
    async def healthz() -> JSONResponse:
        """From memory, no query: fast even while the database or a part is down."""
        ok = health.healthy
        body = Healthz(status="ok" if ok else "degraded", parts=health.report(),
                       failing=[n for n, p in health.parts.items() if p.status == "failed"])
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
