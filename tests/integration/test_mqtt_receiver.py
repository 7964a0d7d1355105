"""The ingest's own MQTT receiver (ingest/mqtt.py) against the real Mosquitto when the broker
refuses, or stops answering: it keeps retrying, never exits, and loses nothing it was sent."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import pytest

from ingest import metrics
from ingest import mqtt as mqtt_mod
from ingest.mqtt import Broker, Delivery, MqttSource
from tests.integration.conftest import eventually, publish_all
from tests.integration.proxy import CuttableProxy
from tether.config import Settings


def _connects() -> float:
    return metrics.mqtt_connects._value.get()


async def _run(source: MqttSource, got: list[Delivery]) -> asyncio.Task:
    async def handle(burst: list[Delivery]) -> None:
        got.extend(burst)
        source.ack_all(burst)
    return asyncio.create_task(source.run(handle), name="test-mqtt-source")


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


@pytest.mark.timeout(60)
async def test_a_refused_login_is_retried_not_fatal(settings: Settings) -> None:
    b = Broker.from_url(settings.mqtt_url)
    source = MqttSource(Broker(b.host, b.port, "nobody", "wrong"), f"{settings.mqtt_client_id}-x",
                        [f"{settings.mqtt_root}/#"])
    task = await _run(source, [])
    try:
        await asyncio.sleep(2.5)  # several refused attempts (backoff 0.1 s up to 1 s)
        assert not task.done(), task.exception() if task.done() else ""
        assert not source.connected.is_set()
    finally:
        await _stop(task)


@pytest.mark.timeout(90)
async def test_a_broker_gone_silent_is_dropped_and_nothing_is_lost(
        settings: Settings, publisher, monkeypatch) -> None:
    monkeypatch.setattr(mqtt_mod, "KEEPALIVE_S", 2)  # silent for 3 s: gone
    m = urlsplit(settings.mqtt_url)
    proxy = await CuttableProxy(m.hostname, m.port or 1883).start()
    b = Broker.from_url(settings.mqtt_url)
    source = MqttSource(Broker(b.host, proxy.port, b.username, b.password),
                        settings.mqtt_client_id, [f"{settings.mqtt_root}/#"])
    got: list[Delivery] = []
    task = await _run(source, got)
    try:
        await asyncio.wait_for(source.connected.wait(), 10)
        before = _connects()
        proxy.frozen = True  # the TCP connection stays up; nothing passes either way
        topic = f"{settings.mqtt_root}/devices/silent/loc"
        await publish_all(publisher, [(topic, b'{"n":%d}' % i) for i in range(50)])
        # No PINGRESP for 1.5 keepalives: the connection is given up (without the keepalive
        # it would wait on the frozen socket forever).
        await eventually(lambda: not source.connected.is_set(), timeout=15,
                         what="the silent connection dropped")
        assert not got  # all held by the broker for the session
        proxy.frozen = False
        await eventually(lambda: _connects() > before, timeout=30, what="a reconnect")
        await eventually(lambda: len({d.payload for d in got}) == 50, timeout=20,
                         what=lambda: f"50 messages after the reconnect, have {len(got)}")
        assert not task.done()
    finally:
        await _stop(task)
        await proxy.stop()
