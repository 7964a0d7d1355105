"""Tether's own ingest on NATS (Debian's `nats-server`, its MQTT on JetStream), the clustered
broker docs/scaling.md proposes: a real `tether ingest` process, per-device logins as NATS users
and permissions, manual acknowledgement through JetStream, and a NATS restart mid-stream.

NATS 2.9's MQTT has no `$share` (a `$share/...` filter receives nothing), so the worker runs
with `TETHER_MQTT_SHARE_GROUP=` (empty: plain subscriptions) and takes everything alone. The
PostgreSQL and Redis are private, as in the fault suite (`test_faults.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from tests.integration.conftest import eventually
from tests.integration.receivers import free_port
from tests.integration.test_faults import World, _wait_port, fleet, private_world, settle

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("nats-server") is None
                                 or shutil.which("redis-server") is None,
                                 reason="needs Debian's nats-server and redis-server")]

# Who may do what, as NATS permissions on the subjects MQTT topics map to (`/` -> `.`, `#` ->
# `>` and the level itself). The ingest also needs `$MQTT.sub.>`: the delivery subjects of its
# own JetStream consumers (without it a QoS 1 subscription fails with a permission violation).
USERS = {
    "ingest": {"publish": {"deny": [">"]},
               "subscribe": {"allow": ["tether.v1", "tether.v1.>", "owntracks", "owntracks.>",
                                       "$MQTT.sub.>"]}},
    "dev": {"publish": {"allow": ["tether.v1.>", "owntracks.>"]}, "subscribe": {"deny": [">"]}},
    "nd0": {"publish": {"allow": ["tether.v1.devices.nd0.>"]}, "subscribe": {"deny": [">"]}},
}


@dataclass
class PrivateNats:
    dir: Path
    port: int = field(default_factory=free_port)  # MQTT
    http_port: int = field(default_factory=free_port)  # monitoring (/jsz)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        users = ", ".join(json.dumps({"user": u, "password": f"pw-{u}", "permissions": p})
                          for u, p in USERS.items())
        conf = self.dir / "nats.conf"
        conf.write_text(
            f"server_name: tether-nats\nlisten: 127.0.0.1:{free_port()}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f"jetstream {{ store_dir: '{self.dir / 'js'}' }}\n"
            # Tether acks after commit, up to a batch of 2,000 messages: more may be pending
            # than NATS's default of 1,024 per subscription.
            f"mqtt {{ listen: 127.0.0.1:{self.port}, max_ack_pending: 10000 }}\n"
            f"authorization {{ users: [{users}] }}\n")
        with open(self.dir / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # lame-duck free, clean: JetStream flushes
            self.proc.wait(20)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def ack_pending(self) -> int:
        """Messages JetStream delivered to MQTT sessions and has not had acknowledged."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz?consumers=true",
                                    timeout=5) as r:
            jsz = json.load(r)
        consumers = [c for a in jsz.get("account_details", [])
                     for s in a.get("stream_detail", []) for c in s.get("consumer_detail", [])]
        assert consumers, f"no JetStream consumer in /jsz: {str(jsz)[:300]}"  # the ingest's
        return sum(c["num_ack_pending"] for c in consumers)


class NatsWorld(World):
    def env(self, slot: int = 0) -> dict[str, str]:
        ingest = self.accounts["ingest"]
        return {**super().env(slot), "TETHER_MQTT_SHARE_GROUP": "",
                "TETHER_MQTT_URL": f"mqtt://{ingest['username']}:{ingest['password']}"
                                   f"@127.0.0.1:{self.broker.port}"}


def _nats(base: Path) -> tuple[PrivateNats, Callable[[str], dict]]:
    nats = PrivateNats(base)
    nats.start()
    return nats, lambda _pg_url: {u: {"username": u, "password": f"pw-{u}"} for u in USERS}


@pytest.fixture
def world() -> Iterator[NatsWorld]:
    with private_world(_nats, NatsWorld) as w:
        yield w  # type: ignore[misc]


@pytest.mark.timeout(240)
async def test_tether_ingest_on_nats_loses_nothing(world: NatsWorld) -> None:
    """A fleet publishing QoS 1 while the worker is SIGKILLed twice and NATS itself restarts:
    every fix NATS acknowledged is stored once, and in the end JetStream has no message waiting
    for an acknowledgement (Tether's acks after commit reach it)."""
    w = world
    devices = w.enrol(20)
    worker = w.start_worker()
    await w.subscribed()
    async with fleet(w, devices) as f:
        await eventually(lambda: len(w.stored()[0]) > 100, 30, "ingest running on NATS")
        for _ in range(2):
            await asyncio.sleep(1.5)
            worker.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait, 10)
            worker = w.start_worker()
        await asyncio.sleep(2)
        await asyncio.to_thread(w.broker.stop)
        await asyncio.to_thread(w.broker.start)
        before = len(f.acked)
        await eventually(lambda: len(f.acked) > before + 500, 30, "the fleet back on NATS")
    await settle(w, f, "ingest on NATS, killed twice, NATS restarted", 60)
    await eventually(lambda: w.broker.ack_pending() == 0, 30,
                     lambda: f"{w.broker.ack_pending()} messages unacknowledged in JetStream")


@pytest.mark.timeout(120)
async def test_nats_device_logins_only_their_own_topics(world: NatsWorld) -> None:
    """A device's NATS user publishes its own fixes (stored); one published as another device
    is dropped by NATS and never stored; it cannot subscribe; anonymous is refused."""
    w = world
    w.enrol(2, "nd")  # nd0, nd1
    w.start_worker()
    await w.subscribed()
    now = time.time()
    async with aiomqtt.Client("127.0.0.1", w.broker.port, identifier="nd0", username="nd0",
                              password="pw-nd0") as c:
        for device, seq in (("nd0", 1), ("nd1", 2)):
            await c.publish(f"{w.root}/devices/{device}/loc", json.dumps(
                {"ts": now + seq, "lat": 31.2, "lon": 121.4, "acc": 8, "seq": seq}), qos=1)
        granted = await c.subscribe("#", qos=1)
    assert list(granted) != [1]  # refused (0x80), never granted QoS 1
    await eventually(lambda: ("nd0", 1) in w.stored()[0], 30, "nd0's own fix stored")
    await asyncio.sleep(2)
    assert ("nd1", 2) not in w.stored()[0]  # the forged one: dropped by NATS
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", w.broker.port, identifier="anon"):
            pass
    with psycopg.connect(w.pg.url()) as db:
        assert db.execute("SELECT count(*) FROM fixes WHERE device_id = 'nd1'").fetchone()[0] == 0
    with contextlib.suppress(Exception):
        print(f"\nNATS log: {(w.broker.dir / 'nats.log').read_text().count('Violation')}"
              " permission violations logged")
