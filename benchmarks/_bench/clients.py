"""Many HTTP clients in one asyncio process: SSE streams, 1-second polling, resyncs.

Started by ``common.ClientProcess`` as ``python clients.py CONFIG.json``; it reads one
JSON command a line on stdin and answers one JSON line on stdout. Raw asyncio streams
(HTTP/1.1, chunked transfer-encoding and SSE parsed here) keep 1000 connections cheap.
Everything is bounded: connects and reads have timeouts, loops end at a deadline.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import random
import re
import resource
import sys
import time
from typing import Any

ROW = re.compile(r'id="taskstate-task-(\d+)"[^>]*?data-status="(\w+)"')
PROGRESS = re.compile(r'id="taskstate-progress-(\d+)"')
VALUENOW = re.compile(r'aria-valuenow="(\d+)"')
#: What benchmark descriptions (and the ``labelled`` actor's progress messages) carry.
TOKEN = re.compile(r"\[r=([0-9a-z]+) u=(\d+) s=(\d+)(?: t=([0-9.]+))?\]")
LIST_ITEM = '<li id="taskstate-task-'


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parse_frame(data: str) -> tuple[str, int | None, str | None, list[Any]]:
    """(kind, task pk, status, token) of one SSE data payload."""
    match = TOKEN.search(data)
    token: list[Any] = []
    if match:
        token = [match[1], int(match[2]), int(match[3]), float(match[4]) if match[4] else None]
    row = ROW.search(data)
    if row:
        return "row", int(row[1]), row[2], token
    if 'hx-swap="delete"' in data:
        return "remove", None, None, token
    bar = PROGRESS.search(data)
    if bar:
        value = VALUENOW.search(data)
        return "progress", int(bar[1]), value[1] if value else None, token
    return "other", None, None, token


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before the status line")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    for _ in range(100):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        for _ in range(100_000):
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return b"".join(parts)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


class Stream:
    """One SSE connection of one user."""

    def __init__(self, uid: int, session: str) -> None:
        self.uid = uid
        self.session = session
        self.open = asyncio.Event()
        self.frames: list[list[Any]] = []
        self.status: int | None = None
        self.error = ""
        self.closed_by_server = False
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.named: dict[str, int] = {}


class Clients:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host = config["host"]
        self.port = config["port"]
        self.users = [(int(u), str(s)) for u, s in config["users"]]
        self.streams: list[Stream] = []

    def _request(self, path: str, session: str, extra: str = "") -> bytes:
        return (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Cookie: sessionid={session}\r\n{extra}\r\n"
        ).encode()

    # --- SSE ------------------------------------------------------------------------

    async def _run_stream(self, stream: Stream) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
            stream.writer = writer
            writer.write(
                self._request("/taskstate/events/", stream.session, "Accept: text/event-stream\r\n")
            )
            status, headers = await read_head(reader)
            stream.status = status
            if status != 200:
                stream.error = f"HTTP {status}"
                stream.open.set()
                return
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            decoder = codecs.getincrementaldecoder("utf-8")()
            buffer = ""
            while True:
                if chunked:
                    line = await reader.readline()
                    if not line:
                        break
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    data = (await reader.readexactly(size + 2))[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                arrival = time.time()
                buffer += decoder.decode(data)
                while "\n\n" in buffer:
                    raw, buffer = buffer.split("\n\n", 1)
                    self._frame(stream, raw, arrival)
            stream.closed_by_server = True
        except asyncio.CancelledError:
            raise
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
            stream.closed_by_server = stream.open.is_set()
        finally:
            stream.open.set()

    def _frame(self, stream: Stream, raw: str, arrival: float) -> None:
        event: str | None = None
        data: list[str] = []
        for line in raw.split("\n"):
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if event is None and not data:
            return
        if event:
            stream.named[event] = stream.named.get(event, 0) + 1
            if event == "stream-open":
                stream.open.set()
            return
        kind, pk, status, token = parse_frame("\n".join(data))
        stream.frames.append([arrival, kind, pk, status, *token])

    async def connect(self, timeout: float, concurrency: int, count: int | None) -> dict[str, Any]:
        """Open streams for the next ``count`` users (all the rest by default)."""
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        first = len(self.streams)
        todo = self.users[first:] if count is None else self.users[first : first + count]
        new = [Stream(uid, session) for uid, session in todo]
        self.streams.extend(new)

        async def one(stream: Stream) -> None:
            async with gate:
                stream.task = asyncio.ensure_future(self._run_stream(stream))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stream.open.wait(), timeout)

        await asyncio.wait_for(asyncio.gather(*(one(s) for s in new)), timeout + len(new) + 5)
        ok = [s for s in new if s.status == 200 and not s.error and s.named.get("stream-open")]
        failed = [s for s in new if s not in ok]
        return {
            "ok": len(ok),
            "failed": len(failed),
            "uids": [s.uid for s in ok],
            "errors": sorted({s.error or f"status {s.status}" for s in failed})[:5],
            "seconds": time.monotonic() - started,
        }

    def count(self) -> dict[str, Any]:
        return {
            "frames": sum(len(s.frames) for s in self.streams),
            "open": sum(1 for s in self.streams if s.task and not s.task.done()),
        }

    def dump(self, path: str) -> dict[str, Any]:
        """Write and forget every frame (and named event count) recorded so far."""
        frames = 0
        named: dict[str, int] = {}
        with open(path, "w") as f:
            for s in self.streams:
                f.write(json.dumps({"uid": s.uid, "frames": s.frames}) + "\n")
                frames += len(s.frames)
                s.frames = []
                for k, v in s.named.items():
                    named[k] = named.get(k, 0) + v
                s.named = {}
        closed = sum(1 for s in self.streams if s.closed_by_server)
        return {"frames": frames, "named": named, "closed_by_server": closed}

    async def close_streams(self) -> dict[str, Any]:
        for s in self.streams:
            if s.writer is not None:
                s.writer.close()
            if s.task is not None:
                s.task.cancel()
        tasks = [s.task for s in self.streams if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        n = len(self.streams)
        self.streams = []
        return {"closed": n}

    # --- plain requests -------------------------------------------------------------

    async def _get(
        self, conn: list[Any], path: str, session: str, timeout: float
    ) -> tuple[int, bytes]:
        """One GET on a kept-alive connection held in ``conn`` ([reader, writer])."""
        for attempt in range(2):
            if not conn:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), timeout
                )
                conn[:] = [reader, writer]
            reader, writer = conn
            try:
                writer.write(self._request(path, session, "HX-Request: true\r\n"))
                status, headers = await asyncio.wait_for(read_head(reader), timeout)
                body = await asyncio.wait_for(read_body(reader, headers), timeout)
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    conn.clear()
                return status, body
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                conn.clear()
                if attempt:
                    raise
        raise ConnectionError("unreachable")

    async def poll(self, duration: float, interval: float, path: str) -> dict[str, Any]:
        """Each user GETs ``path`` every ``interval`` seconds for ``duration`` seconds."""
        latencies: list[float] = []
        errors: dict[str, int] = {}
        started = time.monotonic()
        deadline = started + duration

        async def user(uid: int, session: str) -> None:
            conn: list[Any] = []
            next_at = started + random.random() * interval
            try:
                for _ in range(int(duration / interval) + 2):
                    now = time.monotonic()
                    if next_at >= deadline or now >= deadline:
                        break
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    t0 = time.monotonic()
                    try:
                        status, _ = await asyncio.wait_for(
                            self._get(conn, path, session, timeout=15), 20
                        )
                        if status != 200:
                            errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                        else:
                            latencies.append(time.monotonic() - t0)
                    except (
                        OSError,
                        ValueError,
                        asyncio.TimeoutError,
                        asyncio.IncompleteReadError,
                    ) as exc:
                        name = type(exc).__name__
                        errors[name] = errors.get(name, 0) + 1
                        if conn:
                            conn[1].close()
                            conn.clear()
                    # Like a page polling every second: a slow answer delays the next
                    # request, it never piles them up.
                    next_at = max(next_at + interval, time.monotonic())
            finally:
                if conn:
                    conn[1].close()

        await asyncio.gather(*(user(u, s) for u, s in self.users))
        elapsed = time.monotonic() - started
        latencies.sort()

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))]

        return {
            "requests": len(latencies),
            "errors": errors,
            "seconds": elapsed,
            "mean": sum(latencies) / len(latencies) if latencies else None,
            "p50": pct(50),
            "p99": pct(99),
        }

    async def resync(self, path: str, out: str, concurrency: int) -> dict[str, Any]:
        """Each user reads their list once; rows (pk, status, token) go to ``out``."""
        gate = asyncio.Semaphore(concurrency)
        result: dict[int, Any] = {}
        errors: dict[str, int] = {}

        async def user(uid: int, session: str) -> None:
            conn: list[Any] = []
            async with gate:
                try:
                    status, body = await self._get(conn, path, session, timeout=60)
                except (
                    OSError,
                    ValueError,
                    asyncio.TimeoutError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                finally:
                    if conn:
                        conn[1].close()
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                return
            rows = []
            for item in body.decode().split(LIST_ITEM)[1:]:
                row = ROW.search(LIST_ITEM + item)
                if row is None:
                    continue
                token = TOKEN.search(item)
                rows.append(
                    [int(row[1]), row[2], [token[1], int(token[2]), int(token[3])] if token else []]
                )
            result[uid] = rows

        started = time.monotonic()
        await asyncio.gather(*(user(u, s) for u, s in self.users))
        with open(out, "w") as f:
            json.dump({str(k): v for k, v in result.items()}, f)
        return {"users": len(result), "errors": errors, "seconds": time.monotonic() - started}


async def serve(config: dict[str, Any]) -> None:
    clients = Clients(config)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        name = command.get("cmd")
        try:
            if name == "ping":
                reply: dict[str, Any] = {"pong": True}
            elif name == "connect":
                reply = await clients.connect(
                    command.get("timeout", 60), command.get("concurrency", 20), command.get("count")
                )
            elif name == "count":
                reply = clients.count()
            elif name == "dump":
                reply = clients.dump(command["path"])
            elif name == "close_streams":
                reply = await clients.close_streams()
            elif name == "poll":
                reply = await clients.poll(
                    command["duration"], command.get("interval", 1.0), command["path"]
                )
            elif name == "resync":
                reply = await clients.resync(
                    command["path"], command["out"], command.get("concurrency", 50)
                )
            elif name == "quit":
                await clients.close_streams()
                print(json.dumps({"bye": True}), flush=True)
                return
            else:
                reply = {"error": f"unknown command {name!r}"}
        except Exception as exc:  # reported to the driver, which fails loudly
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    raise_fd_limit(len(config["users"]) * 2 + 256)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
