"""The FastAPI application: REST (contract §2), health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import routes_enrol, routes_read
from api.store import ApiStore, CheckViolation, DataError, Unavailable
from api.ws import AlertHub, alerts_socket
from ingest import logs
from ingest.settings import Settings

log = logs.get("api")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await app.state.store.open()
        hub = asyncio.create_task(app.state.hub.run(), name="api-alert-hub")
        try:
            yield
        finally:
            hub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hub
            await app.state.store.close()

    app = FastAPI(title="Tether", version="0.1.0", lifespan=lifespan,
                  description="Real-time monitoring for community corrections. Bearer tokens "
                              "from POST /api/auth/token. The device protocol (MQTT) is "
                              "described in docs/contract.md.")
    app.state.settings = settings
    app.state.store = ApiStore(settings.database_url)
    app.state.tokens = None
    app.include_router(routes_enrol.router)
    app.include_router(routes_read.router)
    app.state.hub = AlertHub(app.state.store, settings.database_url)
    app.add_api_websocket_route("/ws/alerts", alerts_socket)

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

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
