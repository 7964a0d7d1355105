"""A clustered broker on this machine: three NATS servers (Debian's `nats-server`, its MQTT
support on JetStream with three replicas), each in a network namespace this test creates. A
QoS 1 stream runs from a device on one node to a persistent-session subscriber on another; the
subscriber's node is stopped mid-stream and the subscriber resumes its session on a third node:
nothing the cluster acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.integration.conftest import eventually

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("nats-server") is None or shutil.which("ip") is None,
                                 reason="needs Debian's nats-server and iproute2 (and root)")]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def cluster() -> Iterator[dict]:
    """Three namespaces on a private bridge (10.R.R.0/24): {name: (ip, process)} and a stop."""
    tag = uuid.uuid4().hex[:6]
    net = f"10.{int(tag[:2], 16) % 200 + 20}.{int(tag[2:4], 16)}"
    bridge, base = f"tbr{tag}", Path(tempfile.mkdtemp(prefix="tether-nats-"))
    names = [f"tn{tag}{i}" for i in (1, 2, 3)]
    ips = {n: f"{net}.{i + 1}" for i, n in enumerate(names)}
    procs: dict[str, subprocess.Popen] = {}
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{net}.254/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i, n in enumerate(names):
            sh("ip", "netns", "add", n)
            sh("ip", "link", "add", f"tv{tag}{i}", "type", "veth", "peer", "name", "eth0",
               "netns", n)
            sh("ip", "link", "set", f"tv{tag}{i}", "master", bridge, "up")
            sh("ip", "-n", n, "addr", "add", f"{ips[n]}/24", "dev", "eth0")
            sh("ip", "-n", n, "link", "set", "eth0", "up")
            sh("ip", "-n", n, "link", "set", "lo", "up")

        def start(n: str) -> None:
            conf = base / f"{n}.conf"
            routes = ", ".join(f"nats://{ips[o]}:6222" for o in names if o != n)
            conf.write_text(
                f"server_name: {n}\nlisten: {ips[n]}:4222\n"
                f"jetstream {{ store_dir: '{base / n}' }}\n"
                f"cluster {{ name: tether, listen: {ips[n]}:6222, routes: [{routes}] }}\n"
                f"mqtt {{ listen: {ips[n]}:1883, stream_replicas: 3 }}\n")
            with open(base / f"{n}.log", "ab") as log:  # the child keeps its own descriptor
                procs[n] = subprocess.Popen(["ip", "netns", "exec", n, "nats-server", "-c",
                                             str(conf)], stdout=subprocess.DEVNULL, stderr=log)

        def stop(n: str) -> None:
            procs[n].terminate()
            procs[n].wait(10)

        for n in names:
            start(n)
        yield {"ips": ips, "names": names, "stop": stop, "start": start, "logs": base}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def connectable(ip: str) -> bool:
    with contextlib.suppress(aiomqtt.MqttError, OSError):
        async with aiomqtt.Client(ip, 1883, identifier=f"probe-{uuid.uuid4().hex[:6]}",
                                  timeout=2):
            return True
    return False


@pytest.mark.timeout(240)
async def test_a_node_stopped_mid_stream_loses_nothing(cluster: dict) -> None:
    ips, (n1, n2, n3) = cluster["ips"], cluster["names"]
    for n in (n1, n2, n3):
        await eventually(lambda n=n: connectable(ips[n]), 60, f"{n} takes MQTT")
    received: set[int] = set()
    acked: set[int] = set()
    topic = "tether/v1/devices/nats-1/loc"

    async def subscriber(ip: str, stop_after: float | None) -> None:
        async with aiomqtt.Client(ip, 1883, identifier="tether-ingest-nats", clean_session=False,
                                  protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as c:
            await c.subscribe(topic, qos=1)
            deadline = time.monotonic() + (stop_after or 1e9)
            with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    async for m in c.messages:
                        received.add(int(bytes(m.payload)))

    # The session exists before the stream starts (as the ingest's does).
    await subscriber(ips[n2], 1.0)
    sub = asyncio.create_task(subscriber(ips[n2], 1e9))
    async with aiomqtt.Client(ips[n1], 1883, identifier="device-nats-1",
                              protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as dev:
        for i in range(1500):
            await dev.publish(topic, str(i), qos=1)
            acked.add(i)
            if i == 500:
                cluster["stop"](n2)  # the subscriber's node, mid-stream
            if i % 100 == 0:
                await asyncio.sleep(0.05)
    sub.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await sub
    # The subscriber comes back on the third node, resuming its session from JetStream.
    await eventually(lambda: connectable(ips[n3]), 30, "n3 still takes MQTT")
    with contextlib.suppress(aiomqtt.MqttError):
        async with asyncio.timeout(60):
            while not acked <= received:
                await subscriber(ips[n3], 5.0)
    lost = len(acked - received)
    print(f"\n[NATS 3 nodes, subscriber's node stopped at 500] sent {len(acked)},"
          f" received {len(received)}, lost {lost}")
    assert lost == 0
