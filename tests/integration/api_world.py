"""A city with two sibling counties, users at each level, and data in each."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from api.auth import hash_password

PASSWORD = "correct horse battery"
T = datetime(2026, 5, 1, 12, tzinfo=UTC)


@dataclass
class ApiWorld:
    client: httpx.AsyncClient
    ids: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)

    def auth(self, user: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def get(self, user: str, url: str, headers: dict | None = None,
                  **kw) -> httpx.Response:
        return await self.client.get(url, headers={**self.auth(user), **(headers or {})}, **kw)

    async def post(self, user: str, url: str, body: dict | None = None) -> httpx.Response:
        return await self.client.post(url, headers=self.auth(user), json=body or {})


def seed(db: psycopg.Connection) -> dict:
    tag = uuid.uuid4().hex[:6]
    ids: dict = {"tag": tag}

    def one(sql: str, *args: object) -> int:
        return db.execute(sql, args).fetchone()[0]

    ids["city"] = one("INSERT INTO jurisdictions (name) VALUES (%s) RETURNING id", f"city-{tag}")
    for c in ("A", "B"):
        ids[f"county{c}"] = one("INSERT INTO jurisdictions (name, parent_id) VALUES (%s, %s)"
                                " RETURNING id", f"county{c}-{tag}", ids["city"])
    users = {"admin": ("admin", None), "cmdCity": ("commander", ids["city"]),
             "cmdA": ("commander", ids["countyA"]), "offA": ("officer", ids["countyA"]),
             "offB": ("officer", ids["countyB"])}
    pw = hash_password(PASSWORD)
    for name, (role, j) in users.items():
        ids[name] = one("INSERT INTO users (username, password_hash, role, jurisdiction_id)"
                        " VALUES (%s, %s, %s, %s) RETURNING id", f"{name}-{tag}", pw, role, j)
    for where in ("city", "countyA", "countyB"):
        s = one("INSERT INTO subjects (name, jurisdiction_id) VALUES (%s, %s) RETURNING id",
                f"subject in {where}", ids[where])
        ids[f"subj_{where}"] = s
        dev = f"api-{tag}-{where}"
        db.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, 'wearable', %s)",
                   (dev, s))
        ids[f"dev_{where}"] = dev
        for i in range(10):
            db.execute("INSERT INTO fixes (device_id, fix_time, received_at, lat, lon,"
                       " accuracy_m) VALUES (%s, %s, %s, %s, %s, 8)",
                       (dev, T + timedelta(minutes=i), T, 31.2 + i * 1e-4, 121.4))
        ids[f"zone_{where}"] = one(
            "INSERT INTO zones (name, kind, geometry, radius_m, jurisdiction_id) VALUES"
            " ('z', 'exclusion', %s, 100, %s) RETURNING id",
            json.dumps({"type": "Point", "coordinates": [121.5, 31.3]}), ids[where])
        ids[f"alert_{where}"] = one(
            "INSERT INTO alerts (type, severity, subject_id, device_id) VALUES"
            " ('sos', 'critical', %s, %s) RETURNING id", s, dev)
    return ids


# Who sees which jurisdiction's data.
SEES = {"admin": {"city", "countyA", "countyB"}, "cmdCity": {"city", "countyA", "countyB"},
        "cmdA": {"countyA"}, "offA": {"countyA"}, "offB": {"countyB"}}
