"""`mqtts://` for devices and for the ingest, with a private CA made by `openssl`, on a private
Mosquitto (logins required, as in scripts/mosquitto.conf) that this test starts."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from api.store import credentials as cred
from ingest.mqtt import Broker
from ingest.store import migrate
from tests.integration.conftest import count, eventually, running
from tests.integration.receivers import free_port
from tests.integration.test_broker_auth import ADMIN_PW, DYNSEC, start_mosquitto
from tether.config import Settings

pytestmark = pytest.mark.skipif(DYNSEC is None, reason="Debian's mosquitto ships the plugin")


def make_ca(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (what docs/scaling.md shows)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tether-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return d / "ca.crt", d / "server.crt", d / "server.key"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(mqtts URL, plain URL of the same broker, CA file)."""
    ca, crt, key = make_ca(tmp_path)
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(tmp_path / "dynsec.json"),
                    cred.ADMIN_USER, ADMIN_PW], check=True, capture_output=True)
    plain, tls = free_port(), free_port()
    proc = start_mosquitto(tmp_path, plain, f"listener {tls} 127.0.0.1\ncafile {ca}\n"
                           f"certfile {crt}\nkeyfile {key}\n")
    time.sleep(0.2)
    yield f"mqtts://127.0.0.1:{tls}", f"mqtt://127.0.0.1:{plain}", ca
    proc.terminate()
    proc.wait(10)


def tls_client(url: str, ctx: ssl.SSLContext | None, user: str, pw: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", int(url.rsplit(":", 1)[1]), username=user, password=pw,
                          tls_context=ctx, protocol=aiomqtt.ProtocolVersion.V311)


async def test_devices_log_in_over_tls_only_with_a_trusted_certificate(
        tls_broker: tuple[str, str, Path], scratch_db: str, monkeypatch) -> None:
    url, plain, ca = tls_broker
    migrate(scratch_db)
    accounts = await cred.provision(scratch_db, plain,
                                    {"admin": {"username": cred.ADMIN_USER, "password": ADMIN_PW}})
    ing = accounts["ingest"]
    trusted = ssl.create_default_context(cafile=str(ca))
    async with tls_client(url, trusted, ing["username"], ing["password"]) as c:
        await c.subscribe("x/#")  # a login over TLS
    with pytest.raises(aiomqtt.MqttError):  # the system's trust store does not know our CA
        async with tls_client(url, ssl.create_default_context(), ing["username"],
                              ing["password"]):
            pass
    with pytest.raises(aiomqtt.MqttError):  # no TLS on the TLS port: refused
        async with tls_client(url, None, ing["username"], ing["password"]):
            pass
    # The admin connection (device logins issued by the API) goes over TLS with SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with cred.DynSec(cred.with_login(url, cred.ADMIN_USER, ADMIN_PW)) as ds:
        answers = await ds.run({"command": "listClients"})
    assert ing["username"] in json.dumps(answers)


@pytest.mark.skipif(not hasattr(Broker, "tls_context"),
                    reason="until ingest/mqtt.py's Broker takes mqtts:// (the issue 14 diff)")
async def test_the_ingest_reads_over_tls(tls_broker: tuple[str, str, Path], scratch_db: str,
                                         settings: Settings, monkeypatch) -> None:
    url, plain, ca = tls_broker
    migrate(scratch_db)
    await cred.provision(scratch_db, plain,
                         {"admin": {"username": cred.ADMIN_USER, "password": ADMIN_PW}})
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with psycopg.connect(scratch_db, autocommit=True) as db:
        j = db.execute("INSERT INTO jurisdictions (name) VALUES ('t') RETURNING id").fetchone()
        s_id = db.execute("INSERT INTO subjects (name, jurisdiction_id) VALUES ('s', %s)"
                          " RETURNING id", j).fetchone()
        db.execute("INSERT INTO devices (id, kind, subject_id) VALUES ('tls-1', 'wearable', %s)",
                   s_id)
        login = cred.device_login("tls-1", "wearable", settings.mqtt_root, "owntracks")
        await cred.set_device_login(cred.with_login(plain, cred.ADMIN_USER, ADMIN_PW), login,
                                    "device-password-123456")
        s = settings.model_copy(update={
            "database_url": scratch_db, "mqtt_url": cred.service_url(scratch_db, url)})
        async with running(s):
            async with tls_client(url, ssl.create_default_context(cafile=str(ca)), "tls-1",
                                  "device-password-123456") as c:
                await c.publish(f"{s.mqtt_root}/devices/tls-1/loc", json.dumps(
                    {"ts": time.time() - 5, "lat": 31.2, "lon": 121.4}), qos=1)
            await eventually(lambda: count(db, "SELECT count(*) FROM fixes") == 1,
                             what="the fix, over TLS both ways")
