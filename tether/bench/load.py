"""The bench's load generator and bare subscriber, each in processes of their own, on plain paho
(no event loop), so that neither is the bottleneck of what it measures.

A generator publishes one fix per QoS 1 message from pre-encoded pieces: per device, eight
positions around its home (a few metres apart: no jump is impossible), and only the time stamp
formatted per message. Its target rate is a shared value the bench moves while it runs; it reports
what it published, what the broker acknowledged, and its own CPU seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import paho.mqtt.client as paho

TICK_S = 0.005
# Unacknowledged publishes kept in flight; beyond, the generator waits. paho's own in-flight
# limit is off (0): with it, every PUBACK scans all queued messages (O(n) per ack), which made
# the generator, not the broker, the bottleneck (2,400 acks/s at 100 % CPU).
MAX_UNACKED = 1000


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
    c.max_inflight_messages_set(0)  # unlimited here: bounded by MAX_UNACKED instead
    c.max_queued_messages_set(0)
    return c


def generator(target: Target, client_id: str, rate: mp.Value, stop: mp.Event,
              counts: mp.Array, slot: int) -> None:
    """counts[slot*3 .. +3] = published, acked, cpu seconds (updated as it goes)."""
    acked = [0]
    c = _client(client_id, target.login)
    c.on_publish = lambda *_a: acked.__setitem__(0, acked[0] + 1)
    c.connect(target.host, target.port, keepalive=60)
    c.loop_start()
    n, i, cycle = 0, 0, 0
    topics, tails = target.topics, target.tails
    devices = len(topics)
    started = time.monotonic()
    sent_at_rate, rate_since, current = 0, started, -1.0
    try:
        while not stop.is_set():
            r = rate.value
            if r != current:
                current, rate_since, sent_at_rate = r, time.monotonic(), 0
            now = time.monotonic()
            due = int(current * (now - rate_since)) - sent_at_rate
            room = MAX_UNACKED - (n - acked[0])
            if due <= 0 or room <= 0:
                time.sleep(TICK_S if due <= 0 else 0.0005)
            else:
                ts = b'{"ts":%.3f' % time.time()
                for _ in range(min(due, room)):
                    c.publish(topics[i], ts + tails[i][cycle % len(tails[i])], qos=1)
                    n += 1
                    sent_at_rate += 1
                    i += 1
                    if i == devices:
                        i, cycle = 0, cycle + 1
                        ts = b'{"ts":%.3f' % (time.time() + 0.001)
            counts[slot * 3] = n
            counts[slot * 3 + 1] = acked[0]
            t = os.times()
            counts[slot * 3 + 2] = t.user + t.system
    finally:
        c.loop_stop()
        c.disconnect()


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
