"""A TCP proxy that a test can cut and restore: a database "going away"
without stopping the shared server other suites are using.

It listens on a random loopback address (port chosen by the kernel) and
forwards every connection to the target.  :meth:`TcpProxy.cut` closes every
forwarded connection (both sides, with a reset) and stops listening, so new
connections are refused, as with a server that is down; :meth:`restore`
listens again on the same address and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.support.harness import random_loopback

#: Bytes read at a time in each direction.
CHUNK = 65536


class TcpProxy:
    """``async with TcpProxy("127.0.0.1", 5432) as proxy:`` then connect to
    ``proxy.host``:``proxy.port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = random_loopback()
        self.port = 0
        self.accepted = 0  # connections forwarded, over the proxy's life
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Listen again, on the same address and port."""
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._server is None:  # accepted just as the proxy was cut
            _reset(client)
            return
        try:
            server_reader, server = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            _reset(client)
            return
        if self._server is None:  # cut while connecting upstream
            _reset(client)
            _reset(server)
            return
        self.accepted += 1
        self._writers.update((client, server))
        pumps = [
            asyncio.create_task(_pump(client_reader, server)),
            asyncio.create_task(_pump(server_reader, client)),
        ]
        self._tasks.update(pumps)
        try:
            # Either side closing ends the connection on both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for writer in (client, server):
                self._writers.discard(writer)
                writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server's host would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
