"""The bench's load generator and bare subscriber, each in processes of their own (no event
loop), so that neither is the bottleneck of what it measures.

A generator publishes one fix per QoS 1 message from pre-built frames: per device, eight
positions around its home (a few metres apart: no jump is impossible), and only the time stamp
formatted per message. Its target rate is a shared value the bench moves while it runs; it reports
what it published, what the broker acknowledged, and its own CPU seconds.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho

from ingest import mqtt_wire as wire

TICK_S = 0.005
# Unacknowledged publishes kept in flight; beyond, the generator waits.
MAX_UNACKED = 1000
KEEPALIVE_PING_S = 20.0  # the connection asks for a 60 s keepalive


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    topics: list[str]  # per device: the topic
    tails: list[list[bytes]]  # per device: pre-encoded `,"lat":..}` pieces
    login: tuple[str, str] | None = None  # the broker account (the setup's `dev` one)


def _client(client_id: str, login: tuple[str, str] | None, clean: bool = True) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean, protocol=paho.MQTTv311)
    if login is not None:
        c.username_pw_set(*login)
    return c


class _Wire:
    """One MQTT 3.1.1 connection that only publishes at QoS 1, written by hand: the frames of
    a device's messages are pre-built, so a message costs a few byte joins and a share of one
    `sendall` per tick. On paho (`publish()` per message, a lock and a queue each) the two
    generators took 0.33 cores at 4,600 msgs/s on this machine: CPU the server under test lost.
    A thread counts the PUBACKs."""

    def __init__(self, host: str, port: int, client_id: str, login: tuple[str, str] | None
                 ) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(wire.connect_frame(client_id, 60, True, *(login or (None, None))))
        buf, frames = bytearray(), []
        while not frames:
            if not (more := self.sock.recv(4)):
                raise ConnectionError("broker closed the connection before CONNACK")
            buf += more
            frames, _ = wire.parse(buf)
        if code := wire.connack_result(frames[0]):
            raise ConnectionError(f"broker refused the connection: "
                                  f"{wire.CONNACK_REFUSED.get(code, code)}")
        self.sock.settimeout(None)
        self.acked = 0
        self.closed = False
        self.reader = threading.Thread(target=self._read, name="bench-load-pubacks",
                                       daemon=True)
        self.reader.start()

    def _read(self) -> None:
        buf = bytearray()
        while not self.closed:
            try:
                more = self.sock.recv(65536)
            except OSError:
                return
            if not more:
                return
            buf += more
            frames, used = wire.parse(buf)
            del buf[:used]
            self.acked += sum(1 for f in frames if f.kind == wire.PUBACK)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.sendall(wire.DISCONNECT_FRAME)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def generator(target: Target, client_id: str, rate: mp.Value, stop: mp.Event,
              counts: mp.Array, slot: int) -> None:
    """counts[slot*3 .. +3] = published, acked, cpu seconds (updated as it goes)."""
    conn = _Wire(target.host, target.port, client_id, target.login)
    # Per device: the PUBLISH frame's topic part; the length prefix and packet id per message.
    topics = [wire.utf8(t) for t in target.topics]
    tails = target.tails
    n, i, cycle, pid = 0, 0, 0, 0
    devices = len(topics)
    started = last_sent = time.monotonic()
    sent_at_rate, rate_since, current = 0, started, -1.0
    try:
        while not stop.is_set():
            r = rate.value
            if r != current:
                current, rate_since, sent_at_rate = r, time.monotonic(), 0
            now = time.monotonic()
            due = int(current * (now - rate_since)) - sent_at_rate
            room = MAX_UNACKED - (n - conn.acked)
            if due <= 0 or room <= 0:
                if now - last_sent > KEEPALIVE_PING_S:
                    conn.sock.sendall(wire.PINGREQ_FRAME)  # the broker keeps us
                    last_sent = now
                counts[slot * 3 + 1] = conn.acked
                time.sleep(TICK_S if due <= 0 else 0.0005)
                continue
            ts = b'{"ts":%.3f' % time.time()
            frames = []
            for _ in range(min(due, room)):
                pid = pid % 65535 + 1  # 1..65535; at most MAX_UNACKED of them in flight
                frames.append(wire.publish_frame(topics[i], ts + tails[i][cycle % len(tails[i])],
                                                 pid))
                n += 1
                sent_at_rate += 1
                i += 1
                if i == devices:
                    i, cycle = 0, cycle + 1
                    ts = b'{"ts":%.3f' % (time.time() + 0.001)
            conn.sock.sendall(b"".join(frames))
            last_sent = now
            counts[slot * 3] = n
            counts[slot * 3 + 1] = conn.acked
            t = os.times()
            counts[slot * 3 + 2] = t.user + t.system
    finally:
        conn.close()


def bare_subscriber(host: str, port: int, topic: str, client_id: str, stop: mp.Event,
                    counts: mp.Array, login: tuple[str, str] | None = None) -> None:
    """The baseline: a QoS 1 subscriber that only counts (paho acks on receipt)."""
    got = [0]

    def on_message(*_a: object) -> None:
        got[0] += 1

    c = _client(client_id, login)
    c.on_message = on_message
    c.on_connect = lambda cl, *_a: cl.subscribe(topic, qos=1)
    c.connect(host, port, keepalive=60)
    c.loop_start()
    while not stop.is_set():
        time.sleep(0.05)
        counts[0] = got[0]
        t = os.times()
        counts[1] = t.user + t.system
    c.loop_stop()
    c.disconnect()


class Load:
    """`procs` generator processes sharing the devices; `set(rate)` spreads a total rate."""

    def __init__(self, host: str, port: int, topics: list[str], tails: list[list[bytes]],
                 procs: int, tag: str, login: tuple[str, str] | None = None) -> None:
        ctx = mp.get_context("spawn")  # no copy of the bench's event loop or sockets
        self.rate = [ctx.Value("d", 0.0, lock=False) for _ in range(procs)]
        self.stop = ctx.Event()
        self.counts = ctx.Array("d", procs * 3, lock=False)
        self.procs = [ctx.Process(target=generator, name=f"bench-load-{k}", daemon=True, args=(
            Target(host, port, topics[k::procs], tails[k::procs], login), f"{tag}-load{k}",
            self.rate[k], self.stop, self.counts, k)) for k in range(procs)]
        for p in self.procs:
            p.start()

    def set(self, total: float) -> None:
        for v in self.rate:
            v.value = total / len(self.rate)

    def published(self) -> int:
        return int(sum(self.counts[k * 3] for k in range(len(self.procs))))

    def acked(self) -> int:
        return int(sum(self.counts[k * 3 + 1] for k in range(len(self.procs))))

    def cpu_s(self) -> float:
        return sum(self.counts[k * 3 + 2] for k in range(len(self.procs)))

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
