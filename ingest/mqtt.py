"""The MQTT edge: the only module importing aiomqtt/paho, so the hot path can change library.

Why manual acknowledgement: aiomqtt 2.5 acknowledges QoS 1 messages on receipt, so a crash
between receipt and commit would lose fixes the broker already forgot. The paho client under
it supports manual acks; we switch them on before connecting and acknowledge only after the
batch holding a message is committed. aiomqtt 3 offers this natively; moving to it changes
this module only.

Backpressure: unacknowledged messages count against the broker's in-flight window
(`max_inflight_messages`, 10,000 in scripts/mosquitto.conf), so the client-side queue can never
hold more than that window; beyond it the broker queues (persistently) for us. That window is
the bound of this queue, and its overflow rule is "the broker holds the rest" - never a drop.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from ingest import metrics
from tether import logs
from tether.retry import Backoff

log = logs.get("ingest.mqtt")


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    payload: bytes
    retained: bool
    mid: int
    qos: int
    generation: int  # which connection delivered it: an ack on a later one would be wrong


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> Broker:
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise ValueError(f"TETHER_MQTT_URL must be mqtt:// or mqtts://host:port, not {url!r}")
        tls = u.scheme in ("mqtts", "ssl")
        return cls(u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883),
                   unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None, tls)

    def tls_context(self) -> ssl.SSLContext | None:
        """mqtts: the system's trust store, or the CA file in SSL_CERT_FILE (a private CA)."""
        return ssl.create_default_context() if self.tls else None


BURST = 512  # messages handed over at once, at most


class MqttSource:
    """Consumes subscriptions with a persistent session, reconnecting with backoff forever.

    Messages are handed over in bursts: after waiting for one, everything already queued (up
    to `burst`) is taken without waiting again. aiomqtt's iterator costs a task and an
    `asyncio.wait` per message, which the profile of one fix per message showed as the
    receiver's largest cost; `burst=1` is the old path, kept for `tether bench` to compare."""

    def __init__(self, broker: Broker, client_id: str, subscriptions: Sequence[str],
                 burst: int = BURST) -> None:
        self.broker = broker
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.burst = burst
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self.connected = asyncio.Event()

    async def run(self, handle: Callable[[list[Delivery]], Awaitable[None]]) -> None:
        # Retried at least every second: after a restart Mosquitto 2.0 has forgotten the share
        # group's subscriptions (it restores only plain ones, docs/faults.md), and until a
        # worker subscribes again, what devices send is acknowledged to them and dropped.
        # Devices retry after 1 s and up (paho's shortest delay), so the ingest must be first.
        backoff = Backoff(0.1, 1.0)
        while True:
            client = aiomqtt.Client(
                self.broker.host, self.broker.port, identifier=self.client_id,
                username=self.broker.username, password=self.broker.password,
                tls_context=self.broker.tls_context(),
                protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=30)
            # Before connecting: a persistent session redelivers as soon as CONNACK is sent.
            client._client.manual_ack_set(True)
            try:
                async with client:
                    self._generation += 1
                    generation = self._generation
                    self._client = client
                    await client.subscribe([(t, 1) for t in self.subscriptions])
                    # subscribe() waits through Python 3.11's asyncio.wait_for, which returns the
                    # SUBACK instead of raising when a cancellation arrives with it: without
                    # this check a stopped worker would go on consuming.
                    logs.still_running()
                    metrics.mqtt_connects.inc()
                    log.info("mqtt connected", client_id=self.client_id,
                             subscriptions=self.subscriptions)
                    self.connected.set()
                    backoff.reset()
                    queue = client._queue  # aiomqtt 2.5: what `client.messages` reads
                    async for m in client.messages:
                        burst = [m]
                        while len(burst) < self.burst and not queue.empty():
                            burst.append(queue.get_nowait())
                        await handle([Delivery(x.topic.value, bytes(x.payload), x.retain, x.mid,
                                               x.qos, generation) for x in burst])
            except aiomqtt.MqttError as e:
                logs.still_running()
                log.warning("mqtt connection lost; retrying", error=str(e),
                            retry_s=backoff.delay)
            finally:
                self.connected.clear()
                self._client = None
            await backoff.wait()

    def ack(self, d: Delivery) -> None:
        """Acknowledge after commit. A message from an earlier connection is not acked: the
        broker redelivers it, and the store's unique key makes that harmless."""
        client = self._client
        if d.qos == 0 or client is None or d.generation != self._generation:
            return
        client._client.ack(d.mid, d.qos)


class MqttPublisher:
    """Publishing side, for simulators, benchmarks and tests."""

    def __init__(self, broker: Broker, client_id: str = "") -> None:
        self._client = aiomqtt.Client(broker.host, broker.port, identifier=client_id or None,
                                      username=broker.username, password=broker.password,
                                      tls_context=broker.tls_context(),
                                      protocol=aiomqtt.ProtocolVersion.V311,
                                      max_inflight_messages=1000)
        # Bulk publishers keep thousands of QoS 1 publishes in flight on purpose.
        self._client.pending_calls_threshold = 10_000

    async def __aenter__(self) -> MqttPublisher:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                      retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=qos, retain=retain)


__all__ = ["Broker", "Delivery", "MqttPublisher", "MqttSource", "PlainSubscriber"]


class PlainSubscriber:
    """The baseline for benchmarks: a persistent-session subscriber that only counts messages
    (library acks on receipt), i.e. what one process can take from the broker at all."""

    def __init__(self, broker: Broker, client_id: str, topic: str) -> None:
        self.broker, self.client_id, self.topic = broker, client_id, topic

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(self.broker.host, self.broker.port, identifier=self.client_id,
                              username=self.broker.username, password=self.broker.password,
                              tls_context=self.broker.tls_context(),
                              clean_session=False, protocol=aiomqtt.ProtocolVersion.V311)

    async def create_session(self) -> None:
        async with self._client() as c:
            await c.subscribe(self.topic, qos=1)

    async def drain(self, n: int) -> float:
        """Seconds to receive n messages from the moment of connecting; ends the session."""
        got = 0
        async with self._client() as c:
            started = time.perf_counter()
            async for _ in c.messages:
                got += 1
                if got == n:
                    break
            elapsed = time.perf_counter() - started
            await c.unsubscribe(self.topic)
        return elapsed
