"""The FastAPI application. Issue [3/7] adds the contract's REST surface; this is its base."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="Tether", version="0.1.0",
                  description="Real-time monitoring for community corrections. "
                              "The device protocol (MQTT) is described in docs/contract.md.")
    app.state.settings = settings

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
