"""The pages (contract §7): `/` the command-center map, `/officer` the officer's phone page
(installable), `/playback?subject={id}` a subject's track. Served by the API process from `web/`
with the npm packages it pins (`web/package.json`, installed by the setup's `npm ci`), so the
pages work with no Internet access: no CDN, no glyph or tile server unless an operator sets one.

The operator's tile URL and its datum come from the settings `tile_url`, `tile_datum` (`wgs84`
or `gcj02`) and `tile_attribution`; unset, the map draws the built-in Natural Earth basemap.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.settings import ApiSettings

WEB = Path(__file__).resolve().parents[1] / "web"
MODULES = WEB / "node_modules"
# What the pages may load from the npm packages: (URL prefix, directory under node_modules).
VENDOR = {"maplibre-gl": "maplibre-gl/dist", "gcoord": "gcoord/dist",
          "basemap": "mapeo-offline-map/dist"}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate pages, so a new release shows at once


def _page(name: str, headers: dict | None = None):
    path = WEB / name

    async def serve() -> FileResponse:
        return FileResponse(path, headers={**NO_CACHE, **(headers or {})})
    return serve


def install(app: FastAPI, settings: ApiSettings) -> None:
    """Adds the page routes, `/config.json`, `/static/` (web/) and `/vendor/` (npm files)."""
    cfg = {"tile_url": settings.tile_url, "tile_datum": settings.tile_datum,
           "tile_attribution": settings.tile_attribution,
           "silent_after_s": settings.offline_wearable_s}
    pages = {"/": "index.html", "/officer": "officer.html", "/playback": "playback.html"}
    for url, name in pages.items():
        app.add_api_route(url, _page(name), methods=["GET"], include_in_schema=False)
    # The service worker is served from the officer page's level, so that it may control it.
    app.add_api_route("/officer-sw.js", _page("officer-sw.js", {"Service-Worker-Allowed": "/"}),
                      methods=["GET"], include_in_schema=False)
    app.add_api_route("/officer.webmanifest", _page("officer.webmanifest"),
                      methods=["GET"], include_in_schema=False)

    async def config() -> JSONResponse:
        return JSONResponse(cfg, headers=NO_CACHE)
    app.add_api_route("/config.json", config, methods=["GET"], include_in_schema=False)

    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    for prefix, sub in VENDOR.items():
        directory = MODULES / sub
        if directory.is_dir():
            app.mount(f"/vendor/{prefix}", StaticFiles(directory=directory), name=prefix)
        else:  # not installed (no `npm ci` yet): say so, instead of a bare 404 per file
            app.add_api_route(f"/vendor/{prefix}/{{rest:path}}", _missing(prefix),
                              methods=["GET"], include_in_schema=False)


def _missing(prefix: str):
    async def missing(rest: str) -> None:
        raise HTTPException(503, f"{prefix} is not installed: run `npm ci` in web/")
    return missing
