"""Real receivers for notifications: an HTTP server for webhooks, aiosmtpd for e-mail."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Hook:
    """An ASGI app that records every POST it is sent."""

    received: list[dict] = field(default_factory=list)
    fail_with: int | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.received.append({"path": scope["path"], "query": scope["query_string"].decode(),
                              "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                              "body": body})
        status = self.fail_with or 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def http_receiver(hook: Hook, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(hook, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(), name="test-webhook-receiver")
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
