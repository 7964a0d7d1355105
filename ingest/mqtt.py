"""The MQTT edge: the only module importing aiomqtt/paho, and the ingest's receiver.

The receiver (`MqttSource`) speaks the frames of `ingest/mqtt_wire.py` over an asyncio stream:
at saturation, paho's receive path took a quarter of a worker (docs/bench.md). It acknowledges
a QoS 1 message only after the batch holding it is committed, so a crash between receipt and
commit loses nothing the broker already forgot. Publishing (simulators' helpers, benches, tests)
and the bench's bare subscriber stay on aiomqtt.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from ingest import metrics
from ingest import mqtt_wire as wire
from ingest.mqtt_wire import Delivery
from tether import logs
from tether.retry import Backoff

log = logs.get("ingest.mqtt")


class MqttError(Exception):
    """The broker refused or broke the session: `MqttSource.run` reconnects."""


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
KEEPALIVE_S = 30  # asked of the broker; a test shortens it to see a silent broker dropped
HANDSHAKE_S = 10.0  # CONNACK and SUBACK, each
READ_BYTES = 256 * 1024


class MqttSource:
    """Consumes subscriptions with a persistent session, reconnecting with backoff forever.

    On the frames of `ingest/mqtt_wire.py` (why: its docstring): each socket read is parsed
    whole and its messages handed over in bursts of up to `burst`; acks are written a batch at
    a time. Backpressure: while `handle` waits (the writer is behind), the socket is not read;
    the broker's in-flight window (`max_inflight_messages`, 10,000 in scripts/mosquitto.conf)
    bounds what is taken and not acknowledged, and the broker holds the rest - never a drop.
    `burst=1` hands messages over one at a time, kept for `tether bench` to compare."""

    def __init__(self, broker: Broker, client_id: str, subscriptions: Sequence[str],
                 burst: int = BURST) -> None:
        self.broker = broker
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.burst = burst
        self._writer: asyncio.StreamWriter | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._generation = 0
        self.connected = asyncio.Event()

    async def run(self, handle: Callable[[list[Delivery]], Awaitable[None]]) -> None:
        # Retried at least every second: after a restart Mosquitto 2.0 has forgotten the share
        # group's subscriptions (it restores only plain ones, docs/faults.md), and until a
        # worker subscribes again, what devices send is acknowledged to them and dropped.
        # Devices retry after 1 s and up (paho's shortest delay), so the ingest must be first.
        backoff = Backoff(0.1, 1.0)
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.broker.host, self.broker.port, ssl=self.broker.tls_context()),
                    HANDSHAKE_S)
                try:
                    # Python 3.11's wait_for returns the result instead of raising when a
                    # cancellation arrives with it: a stopped worker must not go on consuming.
                    logs.still_running()
                    await self._session(reader, writer, handle, backoff)
                except asyncio.CancelledError:  # a stop: the last acks and a DISCONNECT go out
                    writer.write(wire.DISCONNECT_FRAME)
                    writer.close()
                    raise
                finally:
                    self.connected.clear()
                    self._writer = None
                    if not writer.is_closing():
                        writer.transport.abort()  # broken: nothing left worth sending
            except (OSError, TimeoutError, wire.ProtocolError, MqttError) as e:
                logs.still_running()
                log.warning("mqtt connection lost; retrying", error=str(e) or type(e).__name__,
                            retry_s=backoff.delay)
            await backoff.wait()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       handle: Callable[[list[Delivery]], Awaitable[None]],
                       backoff: Backoff) -> None:
        b = self.broker
        writer.write(wire.connect_frame(self.client_id, KEEPALIVE_S, False, b.username,
                                        b.password))
        buf = bytearray()
        self._generation += 1  # before reading: messages may share CONNACK's read
        generation = self._generation
        frames = await asyncio.wait_for(self._read(reader, buf, generation), HANDSHAKE_S)
        logs.still_running()  # as above
        code = wire.connack_result(frames.pop(0))  # nothing may come before it
        if code:
            raise MqttError(f"broker refused the connection: "
                            f"{wire.CONNACK_REFUSED.get(code, code)}")
        self._writer = writer
        writer.write(wire.subscribe_frame(1, self.subscriptions))
        heard = [time.monotonic()]
        # A timer, not a task beside this loop: an error of the loop must reach `run` as
        # itself (a TaskGroup would wrap it in an ExceptionGroup, and `run` would not retry).
        self._ping = asyncio.get_running_loop().call_later(KEEPALIVE_S / 2, self._keepalive,
                                                           writer, heard)
        try:
            subscribed_by = time.monotonic() + HANDSHAKE_S
            while True:
                # A persistent session redelivers right after CONNACK: messages may come
                # before the SUBACK, and are handed over like any other.
                for k in range(0, len(frames), self.burst):
                    part = frames[k:k + self.burst]
                    burst = [f for f in part if type(f) is Delivery]
                    if len(burst) < len(part):
                        self._control([f for f in part if type(f) is not Delivery], backoff)
                    if burst:
                        heard[0] = math.inf  # blocked in handle (backpressure): silence is ours
                        await handle(burst)
                        heard[0] = time.monotonic()
                if not self.connected.is_set() and time.monotonic() > subscribed_by:
                    raise MqttError("no SUBACK from the broker")
                frames = await self._read(reader, buf, generation)
                heard[0] = time.monotonic()
        finally:
            self._ping.cancel()  # the timer re-arms itself: this is its latest handle

    async def _read(self, reader: asyncio.StreamReader, buf: bytearray, generation: int
                    ) -> list:
        while True:
            data = await reader.read(READ_BYTES)
            if not data:
                raise MqttError("connection closed by the broker")
            buf += data
            frames, used = wire.parse(buf, generation)
            del buf[:used]
            if frames:
                return frames

    def _control(self, frames: list, backoff: Backoff) -> None:
        for f in frames:
            if f.kind == wire.SUBACK:
                _mid, granted = wire.suback_codes(f)
                if len(granted) != len(self.subscriptions) or 0x80 in granted:
                    raise MqttError(f"subscriptions refused by the broker: {granted.hex()}")
                logs.still_running()
                metrics.mqtt_connects.inc()
                log.info("mqtt connected", client_id=self.client_id,
                         subscriptions=self.subscriptions)
                self.connected.set()
                backoff.reset()
            elif f.kind != wire.PINGRESP:
                raise wire.ProtocolError(f"unexpected packet type {f.kind}")

    def _keepalive(self, writer: asyncio.StreamWriter, heard: list[float]) -> None:
        """PINGREQ at half the keepalive. A broker silent for 1.5 keepalives (no PINGRESP,
        nothing) while we read is gone: the connection is aborted, the read fails, and `run`
        reconnects. `heard` is infinite while the receiver waits in `handle` and reads nothing.
        """
        if writer.is_closing():
            return
        if time.monotonic() - heard[0] > 1.5 * KEEPALIVE_S:
            writer.transport.abort()
            return
        writer.write(wire.PINGREQ_FRAME)
        self._ping = asyncio.get_running_loop().call_later(KEEPALIVE_S / 2, self._keepalive,
                                                           writer, heard)

    def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge after commit, in arrival order, in one write. A message from an earlier
        connection is not acked: the broker redelivers it, and the store's unique key makes
        that harmless."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        g = self._generation
        mids = [d.mid for d in deliveries if d.qos and d.generation == g]
        if mids:
            writer.write(wire.pubacks(mids))


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


__all__ = ["Broker", "Delivery", "MqttError", "MqttPublisher", "MqttSource",
           "PlainSubscriber"]


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
