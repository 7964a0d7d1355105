"""Device identity on the broker: a private Mosquitto with the dynamic-security plugin and
`allow_anonymous false` (the machine's shared broker is left alone), provisioned the way the
setup provisions the real one, with logins issued through the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import httpx
import psycopg
import pytest

from api import routes_credentials
from api.app import create_app
from api.store import credentials as cred
from ingest.store import migrate
from tests.integration.api_world import PASSWORD, seed
from tests.integration.conftest import count, eventually, running
from tests.integration.receivers import free_port
from tether.config import Settings

DYNSEC = next(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"), None)
pytestmark = pytest.mark.skipif(DYNSEC is None or not shutil.which("mosquitto_ctrl"),
                                reason="Debian's mosquitto package ships the plugin")
ADMIN_PW = "admin-secret-for-this-test"


def start_mosquitto(tmp: Path, port: int, extra: str = "") -> subprocess.Popen:
    """A private broker like scripts/mosquitto.conf's, on its own port and files."""
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"plugin {DYNSEC}\nplugin_opt_config_file {tmp / 'dynsec.json'}\n"
                    f"persistence true\npersistence_location {tmp}/\n"
                    "max_inflight_messages 10000\nmax_queued_messages 2000000\n"
                    f"log_dest file {tmp / 'mosquitto.log'}\n{extra}"
                    # As root, Mosquitto would drop to `mosquitto`, who cannot read pytest's tmp.
                    + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            import socket
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"mosquitto did not listen on {port}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """The URL (no user) of a private dynamic-security broker with its admin made by init."""
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(tmp_path / "dynsec.json"),
                    cred.ADMIN_USER, ADMIN_PW], check=True, capture_output=True)
    port = free_port()
    proc = start_mosquitto(tmp_path, port)
    yield f"mqtt://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def secured(broker: str, scratch_db: str, settings: Settings) -> AsyncIterator[Settings]:
    """Settings for a migrated database of its own whose broker the setup has provisioned."""
    migrate(scratch_db)
    await cred.provision(scratch_db, broker,
                         {"admin": {"username": cred.ADMIN_USER, "password": ADMIN_PW}})
    yield settings.model_copy(update={"database_url": scratch_db, "mqtt_url": broker})


@contextlib.asynccontextmanager
async def api(s: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(s)
    if not any(getattr(r, "path", "").endswith("/credentials") for r in app.routes):
        app.include_router(routes_credentials.router)  # until api/app.py includes it
    await app.state.store.open()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            yield client
    finally:
        await app.state.store.close()


async def token(client: httpx.AsyncClient, user: str) -> dict:
    r = await client.post("/api/auth/token", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def client(url: str, user: str | None = None, password: str | None = None,
           **kw: object) -> aiomqtt.Client:
    port = int(url.rsplit(":", 1)[1])
    return aiomqtt.Client("127.0.0.1", port, username=user, password=password,
                          protocol=aiomqtt.ProtocolVersion.V311, **kw)


async def refused(url: str, user: str | None, password: str | None) -> bool:
    try:
        async with client(url, user, password):
            return False
    except aiomqtt.MqttError:
        return True


async def subscribe_granted(url: str, user: str, password: str, topic: str) -> bool:
    async with client(url, user, password) as c:
        granted = await c.subscribe(topic, qos=1)
    return all(g < 128 for g in (granted if isinstance(granted, (list, tuple)) else [granted]))


async def test_anonymous_and_unknown_logins_are_refused(broker: str, secured: Settings) -> None:
    assert await refused(broker, None, None)
    assert await refused(broker, "nobody", "guess")
    assert await refused(broker, cred.INGEST_USER, "wrong")
    ingest = cred.service_url(secured.database_url, broker)
    assert "tether-ingest:" in ingest  # the process found its account by itself
    user, pw = ingest.split("//")[1].split("@")[0].split(":")
    assert not await refused(broker, user, pw)


async def test_devices_publish_only_their_own_topics(broker: str, secured: Settings) -> None:
    with psycopg.connect(secured.database_url, autocommit=True) as db:
        ids = seed(db)
        a, b = ids["dev_countyA"], ids["dev_countyB"]
        phone = f"u{ids['tag']}.ph1"
        db.execute("INSERT INTO devices (id, kind, subject_id) VALUES (%s, 'phone', %s)",
                   (phone, ids["subj_countyA"]))
        async with api(secured) as http:
            hdr = await token(http, f"admin-{ids['tag']}")
            logins = {}
            for d in (a, b, phone):
                r = await http.post(f"/api/devices/{d}/credentials", headers=hdr)
                assert r.status_code == 200, r.text
                logins[d] = r.json()
        assert logins[a]["username"] == a and logins[phone]["username"] == f"u{ids['tag']}"
        s = secured.model_copy(update={
            "mqtt_url": cred.service_url(secured.database_url, broker)})
        root, ot = s.mqtt_root, s.owntracks_root
        now = time.time()
        fix = lambda i: json.dumps({"ts": now - 60 + i, "lat": 31.2, "lon": 121.4,  # noqa: E731
                                    "acc": 8}).encode()
        loc = json.dumps({"_type": "location", "tst": int(now) - 30, "lat": 31.3,
                          "lon": 121.5, "acc": 12}).encode()
        async with running(s):
            async with client(broker, a, logins[a]["password"]) as c:
                await c.publish(f"{root}/devices/{a}/loc", fix(1), qos=1)  # its own: stored
                await c.publish(f"{root}/devices/{b}/loc", fix(2), qos=1)  # another's: dropped
                await c.publish(f"{ot}/x/{b}", loc, qos=1)                 # forged phone
            ph = logins[phone]
            async with client(broker, ph["username"], ph["password"]) as c:
                await c.publish(f"{ot}/u{ids['tag']}/ph1", loc, qos=1)     # its own
                await c.publish(f"{root}/devices/{b}/loc", fix(3), qos=1)  # another's
            async with client(broker, b, logins[b]["password"]) as c:
                await c.publish(f"{root}/devices/{b}/loc", fix(4), qos=1)  # the last one sent
            await eventually(lambda: count(db, "SELECT count(*) FROM fixes WHERE device_id ="
                                           " %s AND fix_time > now() - interval '1 day'", b) > 0,
                             what="device b's own fix")
            await asyncio.sleep(0.3)
        fresh = "SELECT count(*) FROM fixes WHERE device_id = %s AND" \
                " fix_time > now() - interval '1 day'"
        # Sent 6, 3 of them forged: only each device's own 3 arrive, once each.
        assert (count(db, fresh, a), count(db, fresh, b), count(db, fresh, phone)) == (1, 1, 1)
        assert count(db, "SELECT count(*) FROM ingest_rejects") == 0
        # Nobody but the ingest account reads the device trees or joins the share group.
        for topic in ("#", f"{root}/devices/{b}/loc", f"$share/{s.mqtt_share_group}/{root}/#",
                      "$CONTROL/dynamic-security/v1/response"):
            assert not await subscribe_granted(broker, a, logins[a]["password"], topic), topic


async def test_new_credentials_replace_old_within_scope_and_are_audited(
        broker: str, secured: Settings) -> None:
    with psycopg.connect(secured.database_url, autocommit=True) as db:
        ids = seed(db)
        a = ids["dev_countyA"]
        async with api(secured) as http:
            off_a, off_b = (await token(http, f"offA-{ids['tag']}"),
                            await token(http, f"offB-{ids['tag']}"))
            first = (await http.post(f"/api/devices/{a}/credentials", headers=off_a)).json()
            assert not await refused(broker, a, first["password"])
            second = await http.post(f"/api/devices/{a}/credentials", headers=off_a)
            assert second.status_code == 200
            assert await refused(broker, a, first["password"])  # the old password is gone
            assert not await refused(broker, a, second.json()["password"])
            out = await http.post(f"/api/devices/{a}/credentials", headers=off_b)
            assert out.status_code == 404  # out of scope looks absent
            assert await refused(broker, a, "")
            assert (await http.post("/api/devices/nope/credentials",
                                    headers=off_a)).status_code == 404
        rows = db.execute("SELECT user_id, after FROM audit_log WHERE action = 'credentials'"
                          " AND object_id = %s", (a,)).fetchall()
        assert [r[0] for r in rows] == [ids["offA"]] * 2
        assert all("password" not in json.dumps(r[1]) for r in rows)
        assert count(db, "SELECT count(*) FROM device_credentials WHERE device_id = %s", a) == 1
