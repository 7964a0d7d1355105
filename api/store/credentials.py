"""Broker logins: Mosquitto's dynamic-security plugin (shipped in Debian's `mosquitto` package),
driven over MQTT by the broker admin account, and their record in SQL.

Why the plugin rather than password and ACL files: it changes logins in the running broker at
once (no reload, no file shared between the API's machine and the broker's), and keeps them in
its own file across restarts. The broker is the only holder of device passwords (salted PBKDF2);
the database records who holds which username and when it was issued.

Grants: a device may publish only under its own topics; only the ingest account may subscribe
to the device trees (and so join the share group); anything else is refused by the plugin's
default access (no publish, no subscribe). Anonymous logins are refused by `allow_anonymous
false` (scripts/mosquitto.conf).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import ssl
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiomqtt
import psycopg
from psycopg import AsyncCursor

from api.store import Principal, audit

CONTROL = "$CONTROL/dynamic-security/v1"
INGEST_ROLE = "tether-ingest"
ADMIN_USER = "tether-admin"
INGEST_USER = "tether-ingest"
REPLY_S = 10.0  # a broker that does not answer its control topic within this is unavailable


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused a command: an HTTP 503."""

    status = 503


class LoginTaken(Exception):
    """Another device already holds this username (one OwnTracks user, one device): 409."""

    status = 409


@dataclass(frozen=True, slots=True)
class DeviceLogin:
    username: str
    role: str
    publish: tuple[str, ...]  # topic filters the device may publish to


def device_login(device_id: str, kind: str, mqtt_root: str, owntracks_root: str) -> DeviceLogin:
    """Contract section 1: username = device id. An OwnTracks phone's id is `{user}.{device}`
    and its username the `{user}` of its topic, split at the first dot: `a.b.c` may publish
    under `owntracks/a/b.c` only, never `owntracks/a.b/c`, so each id has one topic tree."""
    publish = [f"{mqtt_root}/devices/{device_id}/#"]
    username = device_id
    if kind == "phone" and "." in device_id:
        username, _, device = device_id.partition(".")
        publish.append(f"{owntracks_root}/{username}/{device}/#")
    return DeviceLogin(username, f"device:{device_id}", tuple(publish))


def tls_context(url: str) -> ssl.SSLContext | None:
    """`mqtts://`: the system's trust store, or the CA file named by SSL_CERT_FILE (OpenSSL's own
    variable), so a private CA needs no setting of ours."""
    return ssl.create_default_context() if urlsplit(url).scheme == "mqtts" else None


def with_login(url: str, username: str, password: str) -> str:
    """The URL with a user and password, unless it already names a user (which then wins)."""
    u = urlsplit(url)
    if u.username:
        return url
    host = u.hostname or "127.0.0.1"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(u._replace(netloc=netloc + (f":{u.port}" if u.port else "")))


class DynSec:
    """One admin connection sending dynamic-security commands and awaiting their answers."""

    def __init__(self, admin_url: str) -> None:
        u = urlsplit(admin_url)
        self._client = aiomqtt.Client(
            u.hostname or "127.0.0.1", u.port or 1883, username=u.username,
            password=u.password, identifier=f"tether-admin-{uuid.uuid4().hex[:12]}",
            tls_context=tls_context(admin_url), protocol=aiomqtt.ProtocolVersion.V311)

    async def __aenter__(self) -> DynSec:
        try:
            await self._client.__aenter__()
            await self._client.subscribe(f"{CONTROL}/response", qos=1)
        except aiomqtt.MqttError as e:
            raise BrokerUnavailable(f"broker admin login failed: {e}") from e
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def run(self, *commands: dict[str, Any], tolerate: tuple[str, ...] = ()) -> list[dict]:
        """Send the commands in one message; an error not in `tolerate` (e.g. "already exists"
        when ensuring) raises BrokerUnavailable."""
        tag = uuid.uuid4().hex
        cmds = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
        try:
            await self._client.publish(CONTROL, json.dumps({"commands": cmds}), qos=1)
            async with asyncio.timeout(REPLY_S):
                async for m in self._client.messages:
                    answers = json.loads(bytes(m.payload)).get("responses", [])
                    if any(str(a.get("correlationData", "")).startswith(tag) for a in answers):
                        break
        except (aiomqtt.MqttError, TimeoutError, ValueError) as e:
            raise BrokerUnavailable(f"broker did not answer its control topic: {e!r}") from e
        for a in answers:
            err = a.get("error")
            if err and not any(t in err for t in tolerate):
                raise BrokerUnavailable(f"broker refused {a.get('command')}: {err}")
        return answers


async def set_device_login(admin_url: str, login: DeviceLogin, password: str) -> None:
    """Create or replace the device's login: a new password replaces the old one at once."""
    acls = [{"acltype": "publishClientSend", "topic": t, "allow": True} for t in login.publish]
    async with DynSec(admin_url) as ds:
        await ensure_login(ds, login.username, password, login.role, acls)


async def ensure_login(ds: DynSec, username: str, password: str, role: str,
                       acls: list[dict]) -> None:
    """Idempotent: the role with these ACLs, the client with this password and the role."""
    await ds.run({"command": "createRole", "rolename": role, "acls": acls},
                 tolerate=("already exists",))
    await ds.run({"command": "createClient", "username": username, "password": password,
                  "roles": [{"rolename": role}]}, tolerate=("already exists",))
    # Mosquitto 2.0 answers "Internal error" to adding a role a client holds: remove it first.
    await ds.run({"command": "setClientPassword", "username": username, "password": password},
                 {"command": "removeClientRole", "username": username, "rolename": role},
                 {"command": "addClientRole", "username": username, "rolename": role},
                 *({"command": "addRoleACL", "rolename": role, **a} for a in acls),
                 {"command": "enableClient", "username": username},
                 tolerate=("already exists",))


async def issue(cur: AsyncCursor, who: Principal, device: dict, login: DeviceLogin) -> None:
    """Record the login on the caller's transaction, with its audit row (no password in it)."""
    await cur.execute("SELECT device_id FROM device_credentials WHERE username = %s"
                      " AND device_id <> %s", (login.username, device["id"]))
    other = await cur.fetchone()
    if other is not None:
        raise LoginTaken(f"MQTT username {login.username!r} already belongs to another device")
    await cur.execute(
        "INSERT INTO device_credentials (device_id, username, issued_by) VALUES (%s, %s, %s)"
        " ON CONFLICT (device_id) DO UPDATE SET username = EXCLUDED.username,"
        " issued_at = now(), issued_by = EXCLUDED.issued_by RETURNING *",
        (device["id"], login.username, who.id))
    row = await cur.fetchone()
    await audit(cur, who, "credentials", "device", device["id"], None,
                {"username": row["username"], "issued_at": row["issued_at"]})


async def admin_url(cur: AsyncCursor, mqtt_url: str) -> str | None:
    """The broker admin's URL from the setup's record, or None: this broker manages no logins."""
    await cur.execute("SELECT username, password FROM broker_accounts WHERE name = 'admin'")
    row = await cur.fetchone()
    return None if row is None else with_login(mqtt_url, row["username"], row["password"])


def new_password() -> str:
    return secrets.token_urlsafe(24)


ACCOUNTS_FILE = "/etc/tether/broker-accounts.json"  # written by the setup, mode 0600


def accounts_file() -> Path:
    return Path(os.environ.get("TETHER_BROKER_ACCOUNTS", ACCOUNTS_FILE))


def service_url(database_url: str, mqtt_url: str, name: str = "ingest") -> str:
    """Contract section 4: a process given a URL without a user logs in with its service
    account: the database's record, else the setup's accounts file on this machine (a database
    made after the setup, e.g. a test run's); else the URL as given (an open broker)."""
    if urlsplit(mqtt_url).username:
        return mqtt_url
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute("SELECT username, password FROM broker_accounts WHERE name = %s",
                               (name,)).fetchone()
        except psycopg.errors.UndefinedTable:  # not migrated yet: no record
            row = None
    if row is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            acc = json.loads(accounts_file().read_text())[name]
            row = (str(acc["username"]), str(acc["password"]))
    return mqtt_url if row is None else with_login(mqtt_url, row[0], row[1])


# What each service account may do. `#` never matches `$`-topics, so $CONTROL stays the
# admin's. `dev` exists only on development and test machines (TETHER_DEV_BROKER=1 in
# scripts/test and scripts/demo): the simulators and the test suite publish as any device.
_SUBSCRIBE = [{"acltype": "subscribePattern", "topic": t, "allow": True} for t in ("#", "$share/#")]
ROLES = {"ingest": ("tether-ingest", INGEST_USER, _SUBSCRIBE),
         "dev": ("tether-dev", "tether-dev",
                 [*_SUBSCRIBE, {"acltype": "publishClientSend", "topic": "#", "allow": True}])}


async def provision(database_url: str, mqtt_url: str, accounts: dict[str, dict],
                    names: tuple[str, ...] = ("ingest",)) -> dict[str, dict]:
    """Run by the setup once the broker runs (and by tests on their own broker). `accounts`
    holds at least the broker admin made by `mosquitto_ctrl dynsec init`; each of `names` is
    created, or re-keyed to the password already recorded, so the database, the accounts file
    and the broker agree afterwards. Returns the accounts, new ones added. Idempotent."""
    out = {k: dict(v) for k, v in accounts.items()}
    for name in names:
        out.setdefault(name, {"username": ROLES[name][1], "password": new_password()})
    admin = out["admin"]
    async with DynSec(with_login(mqtt_url, admin["username"], admin["password"])) as ds:
        for name in names:
            role, _, acls = ROLES[name]
            await ensure_login(ds, out[name]["username"], out[name]["password"], role, acls)
    with psycopg.connect(database_url) as conn:
        for name in ("admin", *names):
            conn.execute("INSERT INTO broker_accounts (name, username, password) VALUES"
                         " (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET username ="
                         " EXCLUDED.username, password = EXCLUDED.password, updated_at = now()",
                         (name, out[name]["username"], out[name]["password"]))
    return out


def _setup_main(path: str, names: list[str]) -> None:
    """`python -m api.store.credentials FILE [dev]`: the setup's provisioning step; the
    database and broker come from TETHER_DATABASE_URL and TETHER_MQTT_URL (or their defaults)."""
    from tether.settings import CommonSettings
    s = CommonSettings()
    f = Path(path)
    accounts = asyncio.run(provision(s.database_url, s.mqtt_url, json.loads(f.read_text()),
                                     ("ingest", *names)))
    f.write_text(json.dumps(accounts, indent=1))


if __name__ == "__main__":
    _setup_main(sys.argv[1], sys.argv[2:])


__all__ = ["BrokerUnavailable", "DeviceLogin", "DynSec", "LoginTaken", "admin_url",
           "device_login", "issue", "new_password", "provision", "service_url",
           "set_device_login", "with_login"]
