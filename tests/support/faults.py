"""Private servers and a browser-like stream for the fault tests.

The machine's shared PostgreSQL and Redis are never stopped: a test that needs to break
a service starts its own on a free loopback port and breaks that one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from httpx_sse import SSEError, connect_sse

from tests.support.processes import Process, free_port

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", step: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# --- Redis ------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence, as a child process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="taskstate-redis-")
        self.proc: Process | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = Process(
            "redis-server",
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self.dir,
            ],
            dict(os.environ),
        )
        self.proc.wait_for_output("Ready to accept connections", timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- PostgreSQL -------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    def version(pg_ctl: str) -> tuple[int, ...]:
        number = Path(pg_ctl).parent.parent.name
        return tuple(int(part) for part in number.split(".") if part.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    return Path(found[-1]).parent if found else None


def postgres_unavailable() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None when it can."""
    import pwd

    if _postgres_bin() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "starting a private PostgreSQL needs root (runuser -u postgres)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres OS user"
    return None


class PostgresServer:
    """A throwaway cluster run by the ``postgres`` OS user on a free loopback port.

    ``pg_ctl`` detaches the server, so :meth:`close` must run (the tests call it in a
    ``finally``): it stops the server at once and deletes the data directory.
    """

    def __init__(self, port: int | None = None, *, durable: bool = False, extra: str = "") -> None:
        """``durable``: fsync and synchronous commits on, as in production (benchmarks);
        ``extra``: more ``postgres`` options (``-c name=value ...``)."""
        self.durable = durable
        self.extra = extra
        bin_dir = _postgres_bin()
        if bin_dir is None:
            raise RuntimeError(postgres_unavailable())
        self.port = port or free_port()
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="taskstate-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.running = False
        try:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_postgres(
                "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
            )
            self.start()
        except BaseException:
            self.close()
            raise

    def _as_postgres(self, program: str, *args: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.dir,
        )
        if done.returncode:
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def _ctl(self, *args: str) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-w", "-t", "30", *args)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off"
        if self.extra:
            options += " " + self.extra
        self._ctl("-o", options, "-l", str(self.log), "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")
        self.running = False

    def _pids(self) -> list[int]:
        """The postmaster first, then every process it forked."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    def pause(self) -> None:
        """SIGSTOP the whole cluster: connections stay open, the kernel still ACKs, nobody
        answers (a hung server, not a refused or reset one).

        The postmaster first, so that it forks no backend meanwhile; then its children as
        they are now, less any that ended since (a backend whose client closed its
        connection: it answers nobody anyway)."""
        postmaster, *_ = self._pids()
        os.kill(postmaster, signal.SIGSTOP)
        for pid in self._pids()[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self._pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(), connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        if self.running or (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


# --- child processes on private servers ---------------------------------------------------


def fault_env(
    base: dict[str, str], directory: Path, redis: RedisServer, **extra: str
) -> dict[str, str]:
    """Environment for a child process whose broker and events use the private Redis."""
    env = dict(base)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["TASKSTATE_TEST_SERVICES"] = "1"
    env["TASKSTATE_TEST_REDIS_URL"] = redis.url
    env.update(extra)
    return env


def count_lines(process: Process, text: str) -> int:
    return sum(text in line for line in list(process.lines))


# --- a stream that behaves like the page ------------------------------------------------


class StaleTab(AssertionError):
    """A tab still did not show what the database says, when the test stopped waiting."""


_ROW = re.compile(r'id="taskstate-task-(\d+)"[^>]*data-status="(\w+)"')


class ResyncingStream:
    """What a browser tab does with ``taskstate/events/``, over plain HTTP.

    The page's script keeps one stream open: when it ends or cannot be opened it
    connects again after a pause, and every time a stream opens (``stream-open``) or is
    reset (``stream-reset``) the list re-reads its rows from ``taskstate/list/`` with
    ``HX-Request: true``, as its ``hx-trigger`` says. A stream
    that stays open is never replaced. :attr:`statuses` is what the tab shows: task pk
    to status, as the list would show it: a resync replaces every row, a pushed row
    replaces or adds its own.
    """

    def __init__(self, base_url: str, cookies: dict[str, str]) -> None:
        self.base_url = base_url
        self.cookies = cookies
        self.statuses: dict[int, str] = {}
        self.opened = 0
        self.resyncs = 0
        self.pushed_rows = 0
        self._changed = threading.Condition()
        self._closed = False
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="resyncing-stream", daemon=True)
        self._thread.start()

    # The page -----------------------------------------------------------------------

    def _run(self) -> None:
        pause = 0.25
        while not self._closed:
            try:
                self._stream()
                pause = 0.25
            except (OSError, httpx.HTTPError, SSEError, ValueError):
                pass
            if self._closed:
                return
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _client(self, timeout: float) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            cookies=self.cookies,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10)),
        )

    def _stream(self) -> None:
        with self._client(60) as client, connect_sse(client, "GET", "/taskstate/events/") as source:
            self._response = source.response
            if source.response.status_code != 200:
                return
            for sse in source.iter_sse():
                if self._closed:
                    return
                # httpx-sse names an unnamed message "message"; the page swaps those in.
                self._on_event("" if sse.event == "message" else sse.event, sse.data)

    def _on_event(self, event: str, data: str) -> None:
        if event in ("stream-open", "stream-reset"):
            with self._changed:
                self.opened += event == "stream-open"
            self._resync()
        elif event == "":
            rows = _ROW.findall(data)
            with self._changed:
                self.pushed_rows += len(rows)
            self._apply(rows)

    def _resync(self) -> None:
        with self._client(15) as client:
            response = client.get("/taskstate/list/", headers={"HX-Request": "true"})
        if response.status_code == 200:
            with self._changed:
                self.resyncs += 1
                self.statuses = {}  # the list's innerHTML is replaced
            self._apply(_ROW.findall(response.text))

    def _apply(self, rows: list[tuple[str, str]]) -> None:
        with self._changed:
            for pk, status in rows:
                self.statuses[int(pk)] = status  # upserted: the latest row wins
            self._changed.notify_all()

    # The test -------------------------------------------------------------------------

    def wait(self, predicate: Callable[[ResyncingStream], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StaleTab(
                        f"timed out after {timeout}s waiting for {what}; the tab shows "
                        f"{self.statuses} after {self.opened} stream(s), {self.resyncs} resync(s)"
                    )
                self._changed.wait(min(remaining, 0.5))

    def shows(self, pks: list[int], status: str = "done") -> bool:
        return all(self.statuses.get(pk) == status for pk in pks)

    def close(self) -> None:
        self._closed = True
        # The stream thread blocks in a socket read: shut the socket down to wake it up.
        response = self._response
        stream = response.extensions.get("network_stream") if response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
