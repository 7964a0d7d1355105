"""Real receivers for notifications: an HTTP server for webhooks, aiosmtpd for e-mail, and the
hostile ones (a receiver that hangs, one that drips its answer, one with a self-signed
certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound_socket(listen: bool = True) -> socket.socket:
    """A port held from the start (no race with other processes for a `free_port`); without
    `listen`, connections to it are refused for as long as the socket is open."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    if listen:
        s.listen(100)
    return s


def port_of(s: socket.socket) -> int:
    return s.getsockname()[1]


@dataclass
class Hook:
    """An ASGI app that records every POST it is sent."""

    received: list[dict] = field(default_factory=list)
    fail_with: int | None = None
    answer: bytes = b"ok"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.received.append({"at": time.monotonic(), "path": scope["path"],
                              "query": scope["query_string"].decode(),
                              "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                              "body": body})
        status = self.fail_with or 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": self.answer})


@contextlib.asynccontextmanager
async def http_receiver(hook: Hook, port: int | socket.socket,
                        tls: tuple[Path, Path] | None = None) -> AsyncIterator[None]:
    """On a port number or a `bound_socket`; `tls`: (certificate, key) files to serve HTTPS."""
    ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    sock = port if isinstance(port, socket.socket) else None
    server = uvicorn.Server(uvicorn.Config(hook, host="127.0.0.1",
                                           port=port_of(sock) if sock else port,
                                           log_level="warning", lifespan="off", **ssl))
    task = asyncio.create_task(server.serve(sockets=[sock] if sock else None),
                               name="test-webhook-receiver")
    while not server.started:  # noqa: ASYNC110 - uvicorn offers only this flag
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


class Mailbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"


@contextlib.contextmanager
def smtp_receiver(port: int):
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no client trusts: (certificate, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@dataclass
class Stall:
    """A raw TCP receiver: accepts, reads the request, then never answers (`drip_s` None) or
    drips a never-ending answer one byte every `drip_s` seconds. `connections` counts visitors."""

    drip_s: float | None = None
    connections: int = 0
    _handlers: set = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await reader.read(65536)
            if self.drip_s is None:
                await self._stop.wait()  # hang until the test ends (the client gives up first)
                return
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while not self._stop.is_set():
                writer.write(b"X")  # a header line that never ends
                await writer.drain()
                await asyncio.sleep(self.drip_s)
        except OSError:
            pass  # the client gave up: what it should do
        finally:
            self._handlers.discard(task)
            writer.transport.abort()


@contextlib.asynccontextmanager
async def stalling_receiver(stall: Stall, port: int | socket.socket) -> AsyncIterator[Stall]:
    if isinstance(port, socket.socket):
        server = await asyncio.start_server(stall._serve, sock=port)
    else:
        server = await asyncio.start_server(stall._serve, "127.0.0.1", port)
    try:
        yield stall
    finally:
        server.close()
        stall._stop.set()  # handlers end by themselves: a cancelled one would be logged
        await asyncio.wait_for(asyncio.gather(*stall._handlers, return_exceptions=True), 5)
        await server.wait_closed()
