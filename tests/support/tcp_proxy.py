"""A loopback TCP proxy a test can cut or blackhole: real network faults, on demand."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading


class _Pair:
    """One proxied connection; ``forgotten`` once an end closed during a blackhole."""

    forgotten = False


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to an upstream port until told to cut or blackhole.

    :meth:`cut` drops every connection (both ends see it). :meth:`blackhole` stops
    forwarding without closing anything, as a partition does; :meth:`heal` resumes.
    A connection whose other end closed during the blackhole is forgotten, as by a
    firewall that lost the flow: its open end is never told and what it sends vanishes.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._flowing: asyncio.Event | None = None
        self._pairs: dict[_Pair, tuple[asyncio.StreamReader, ...]] = {}
        self._cuts = 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.open()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def open(self) -> None:
        """Accept connections (again)."""

        async def start() -> None:
            if self._flowing is None:
                self._flowing = asyncio.Event()
                self._flowing.set()
            # A connection remembers which opening accepted it: one that a cut overtook
            # before its handler ran is dropped by the handler.
            handle = functools.partial(self._handle, self._cuts)
            self._server = await asyncio.start_server(handle, "127.0.0.1", self.port)

        self._call(start())

    def cut(self) -> None:
        """Stop accepting and drop every connection, both ways."""

        async def stop() -> None:
            server, self._server = self._server, None
            self._cuts += 1
            if server is not None:
                server.close()
            # Drop the connections before waiting for the server: since Python 3.12.1
            # Server.wait_closed() also waits until every connection it accepted is gone.
            for writer in list(self._writers):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            self._writers.clear()
            if server is not None:
                # A connection still held in a blackhole can keep 3.12.1+'s wait_closed()
                # waiting: the listening socket is closed already, which is what a cut means.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 2)

        self._call(stop())

    def blackhole(self) -> None:
        """Stop forwarding, both ways, without closing or refusing anything."""

        async def stop() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._call(stop())

    def heal(self) -> None:
        """Forward again (what was held goes through, unless its connection is forgotten)."""

        async def start() -> None:
            assert self._flowing is not None
            # A far end that closed during the blackhole has its FIN in the kernel by
            # now: let the loop read it (a few turns), so that its pair is forgotten.
            for _ in range(5):
                await asyncio.sleep(0)
            for pair, readers in self._pairs.items():
                if any(reader.at_eof() for reader in readers):
                    pair.forgotten = True  # even if its pipe holds data it read before
            self._flowing.set()

        self._call(start())

    async def _handle(
        self, accepted_at: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if accepted_at != self._cuts:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        if accepted_at != self._cuts:  # cut while the upstream connection opened
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers.update({writer, up_writer})
        pair = _Pair()
        self._pairs[pair] = (reader, up_reader)
        flowing = self._flowing
        assert flowing is not None

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await flowing.wait()
                    if not pair.forgotten:
                        dst.write(data)
                        await dst.drain()
            except Exception:
                pass
            finally:
                if pair.forgotten or not flowing.is_set():
                    pair.forgotten = True  # the other end never hears of it
                else:
                    with contextlib.suppress(Exception):
                        dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})
        self._pairs.pop(pair, None)

    def close(self) -> None:
        self.cut()

        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(finish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
