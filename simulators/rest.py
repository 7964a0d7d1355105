"""The simulators' REST client: provisioning and reading alerts as an integrator would
(docs/api.md), with no project import."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx


class ApiError(RuntimeError):
    pass


class Api:
    def __init__(self, base_url: str, username: str, password: str,
                 concurrency: int = 8) -> None:
        self.base = base_url.rstrip("/")
        self._creds = {"username": username, "password": password}
        self._client = httpx.AsyncClient(base_url=self.base, timeout=30.0)
        self._token = ""
        self._gate = asyncio.Semaphore(concurrency)  # bounded: an API under load is not DoSed

    async def __aenter__(self) -> Api:
        await self.login()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def login(self) -> None:
        r = await self._client.post("/api/auth/token", data=self._creds)
        if r.status_code != 200:
            raise ApiError(f"login as {self._creds['username']!r}: HTTP {r.status_code} {r.text}")
        self._token = r.json()["access_token"]

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        async with self._gate:
            for attempt in range(2):
                r = await self._client.request(
                    method, path, headers={"Authorization": f"Bearer {self._token}"}, **kw)
                if r.status_code == 401 and attempt == 0:  # short-lived tokens: log in again
                    await self.login()
                    continue
                if r.status_code >= 400:
                    raise ApiError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
                return r.json() if r.content else None
        raise ApiError(f"{method} {path}: unauthorised")

    async def post(self, path: str, body: dict) -> dict:
        return await self._call("POST", path, json=body)

    async def jurisdiction(self, name: str, timezone: str = "UTC") -> int:
        return (await self.post("/api/jurisdictions", {"name": name, "timezone": timezone}))["id"]

    async def subject(self, name: str, jurisdiction_id: int) -> int:
        return (await self.post("/api/subjects", {"name": name,
                                                  "jurisdiction_id": jurisdiction_id}))["id"]

    async def device(self, device_id: str, kind: str, subject_id: int) -> None:
        await self.post("/api/devices", {"id": device_id, "kind": kind, "subject_id": subject_id})

    async def zone(self, body: dict) -> int:
        return (await self.post("/api/zones", body))["id"]

    async def victim(self, subject_id: int, device_id: str, radius_m: float) -> None:
        await self.post(f"/api/subjects/{subject_id}/victims",
                        {"device_id": device_id, "radius_m": radius_m})

    async def alerts(self, since: datetime) -> list[dict]:
        return await self._call("GET", "/api/alerts",
                                params={"since": since.isoformat(), "limit": 5000})
