"""Users, the shared signing secret and failed logins."""

from __future__ import annotations

import secrets
from datetime import timedelta

from psycopg import AsyncCursor

from api.store import Principal, audit

USER_COLUMNS = ("id, username, role, jurisdiction_id, phone, email, notify_webhook,"
                " notify_format, disabled, created_at")


async def signing_secret(cur: AsyncCursor) -> str:
    """One secret for every API process, made on first use."""
    await cur.execute("INSERT INTO app_secrets (name, value) VALUES ('jwt', %s)"
                      " ON CONFLICT (name) DO NOTHING", (secrets.token_urlsafe(48),))
    await cur.execute("SELECT value FROM app_secrets WHERE name = 'jwt'")
    return (await cur.fetchone())["value"]


async def user_for_login(cur: AsyncCursor, username: str) -> dict | None:
    await cur.execute("SELECT id, username, role, jurisdiction_id, password_hash, disabled"
                      " FROM users WHERE username = %s", (username,))
    return await cur.fetchone()


async def principal(cur: AsyncCursor, user_id: int,
                    issued_at: float | None = None) -> Principal | None:
    """The user of a token issued at `issued_at`: None if disabled, gone, or if the sessions
    were ended (password change, disabling) after the token was issued."""
    await cur.execute("SELECT id, username, role, jurisdiction_id FROM users"
                      " WHERE id = %(id)s AND NOT disabled AND (sessions_valid_after IS NULL"
                      " OR to_timestamp(%(iat)s::float8) >= sessions_valid_after)",
                      {"id": user_id, "iat": issued_at})
    row = await cur.fetchone()
    return Principal(**row) if row else None


async def recent_failures(cur: AsyncCursor, username: str, client: str,
                          window: timedelta) -> dict:
    """Failures from this client within the window: for this user name (`pair`) and for any
    (`by_client`), with the seconds since the latest of each (None: no failure)."""
    await cur.execute(
        "SELECT count(*) FILTER (WHERE username = %(u)s) AS pair, count(*) AS by_client,"
        " extract(epoch FROM now() - max(at) FILTER (WHERE username = %(u)s))::float8"
        "   AS pair_age_s,"
        " extract(epoch FROM now() - max(at))::float8 AS client_age_s"
        " FROM login_failures WHERE client = %(c)s AND at > now() - %(w)s",
        {"u": username, "c": client, "w": window})
    return await cur.fetchone()


async def forget_failures(cur: AsyncCursor, username: str, client: str) -> None:
    """A right password from this client ends its throttle for this user name (only)."""
    await cur.execute("DELETE FROM login_failures WHERE username = %s AND client = %s",
                      (username, client))


async def record_failure(cur: AsyncCursor, username: str, client: str) -> None:
    await cur.execute("INSERT INTO login_failures (username, client) VALUES (%s, %s)",
                      (username, client))
    await cur.execute("DELETE FROM login_failures WHERE at < now() - interval '1 day'")


async def create_user(cur: AsyncCursor, who: Principal | None, fields: dict) -> dict:
    await cur.execute(
        "INSERT INTO users (username, password_hash, role, jurisdiction_id, phone, email,"
        " notify_webhook, notify_format, notify_secret) VALUES (%(username)s,"
        " %(password_hash)s, %(role)s, %(jurisdiction_id)s, %(phone)s, %(email)s,"
        f" %(notify_webhook)s, %(notify_format)s, %(notify_secret)s) RETURNING {USER_COLUMNS}",
        fields)
    row = await cur.fetchone()
    await audit(cur, who, "create", "user", row["id"], None, row)
    return row
