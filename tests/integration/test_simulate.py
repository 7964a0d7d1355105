"""CI smoke of `tether simulate`: a real `tether serve` and the simulator as separate processes
(REST provisioning, MQTT at QoS 1), the scripted violations checked against GET /api/alerts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from api.auth import hash_password
from tests.integration.receivers import free_port
from tether.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PASSWORD = "simulated horse battery"
# Short server thresholds so that offline devices and separations come due within the run.
FAST = {"TETHER_OFFLINE_WEARABLE_S": "15", "TETHER_SEPARATION_DWELL_S": "5",
        "TETHER_LATE_AFTER_S": "10", "TETHER_BATCH_AGE_MS": "50", "TETHER_LOG_LEVEL": "WARNING"}


def _env(settings: Settings, port: int) -> dict[str, str]:
    return {**os.environ, **FAST, "TETHER_DATABASE_URL": settings.database_url,
            "TETHER_MQTT_URL": settings.mqtt_url, "TETHER_REDIS_URL": settings.redis_url,
            "TETHER_MQTT_ROOT": settings.mqtt_root,
            "TETHER_OWNTRACKS_ROOT": settings.owntracks_root,
            "TETHER_REDIS_PREFIX": settings.redis_prefix,
            "TETHER_MQTT_SHARE_GROUP": settings.mqtt_share_group,
            "TETHER_MQTT_CLIENT_ID": settings.mqtt_client_id,
            "TETHER_HTTP_HOST": "127.0.0.1", "TETHER_HTTP_PORT": str(port)}


@pytest.mark.timeout(240)
def test_simulated_fleet_raises_exactly_its_scripted_violations(
        settings: Settings, db: psycopg.Connection, tmp_path: Path) -> None:
    user = f"sim-{uuid.uuid4().hex[:6]}"
    db.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
               (user, hash_password(PASSWORD)))
    port = free_port()
    env = _env(settings, port)
    server = subprocess.Popen([sys.executable, "-m", "tether.cli", "serve"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tether serve did not start"
            assert server.poll() is None, "tether serve exited"
            time.sleep(0.2)
        out = tmp_path / "truth.json"
        run = subprocess.run(
            [sys.executable, "-m", "tether.cli", "simulate", "--subjects", "30",
             "--interval", "1", "--duration", "40", "--scenarios", "all", "--seed", "3",
             "--username", user, "--password", PASSWORD, "--json", str(out)],
            env=env, capture_output=True, text=True, timeout=180)
        report = json.loads(out.read_text())
    finally:
        server.terminate()
        server.wait(20)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    # What fits in 40 s with the thresholds above: entries, curfews (by a fix and by the
    # clock), a victim, tamper, spoofing, an offline wearable; the near-miss must raise nothing.
    assert report["expected"] >= 6, report
    assert report["missed"] == 0 and report["spurious"] == 0, report
    assert report["raised"] == report["expected"]
    types = {m["type"] for m in report["matched"]}
    assert {"exclusion_entry", "curfew", "strap_tamper", "location_spoofing"} <= types, types
    assert report["messages"] > 30 * 30  # every subject reported through the run
    stored = db.execute("SELECT count(*) FROM fixes f JOIN devices d ON d.id = f.device_id"
                        " WHERE d.id LIKE %s", ("sim%",)).fetchone()[0]
    assert stored > 500
    owntracks = db.execute("SELECT count(*) FROM fixes WHERE device_id LIKE %s",
                           ("sim%.phone",)).fetchone()[0]
    assert owntracks > 0  # OwnTracks phones are part of the mix
