"""A TCP proxy in front of a real service that a test can cut and restore: an outage of the
database, Redis or broker as the client sees it, without stopping the machine's service."""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[asyncio.StreamWriter] = set()
        self.cut = False
        self.frozen = False  # nothing passes, not even a close: a hung peer, not a closed one

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.sever()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def sever(self) -> None:
        """Drop every open connection and refuse new ones until `restore`."""
        self.cut = True
        for w in list(self._pairs):
            w.transport.abort()
        self._pairs.clear()

    def restore(self) -> None:
        self.cut = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        self._pairs.add(writer)  # a sever while the upstream connects must cut this one too
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._pairs.discard(writer)
            return
        if self.cut:  # severed while connecting upstream: seen once letting a commit through
            up_w.transport.abort()
            writer.transport.abort()
            self._pairs.discard(writer)
            return
        self._pairs.update((writer, up_w))
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await r.read(65536):
                if self.frozen:  # swallowed, as a peer that stopped answering would
                    continue
                w.write(data)
                await w.drain()
        if self.frozen:  # a hung peer passes on no close either: the other side stays open
            return
        w.transport.abort()
        self._pairs.discard(w)
