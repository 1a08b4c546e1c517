"""Real processes on loopback: a ``rundramatiq`` worker and a uvicorn server.

These tests need PostgreSQL and Redis (``TASKSTATE_TEST_SERVICES=1``); see the root
conftest for how they are selected.

The ``server`` and ``worker_process`` of a module's tests are started once and shared:
starting them is most of these tests' cost. A test still gets them as it left them
only when nothing was left in them: a worker still holding a message when its test ends
is stopped (its messages go back to Redis, which the ``broker`` fixture empties), and a
process a test stopped is started again for the next test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from django.db import connection
from dramatiq.brokers.redis import RedisBroker

from tests.support.faults import RedisServer
from tests.support.processes import Process, child_env, free_port, start_uvicorn, start_worker
from tests.support.sse import SSEClient, session_cookie

pytestmark = pytest.mark.integration

#: How long the end of a test waits for the shared worker to finish what it holds.
IDLE_WAIT = 5.0


@pytest.fixture(scope="module")
def _module_env(django_db_setup: None) -> dict[str, str]:
    """Environment for a child process: same settings, same test database."""
    return child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="1",
        TASKSTATE_TEST_DB_NAME=connection.settings_dict["NAME"],
    )


@pytest.fixture
def process_env(_module_env: dict[str, str], transactional_db: None) -> dict[str, str]:
    """The child processes' environment; the test's rows are committed, so they see them."""
    return dict(_module_env)


class Shared:
    """One child process for a module's tests, started when a test first needs it and
    again when a test stopped it."""

    def __init__(self, start: Callable[[], Process]) -> None:
        self._start = start
        self.process: Process | None = None

    def get(self) -> Process:
        if self.process is not None and self.process.proc.poll() is not None:
            self.process.stop()  # joins its output reader
            self.process = None
        if self.process is None:
            self.process = self._start()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def holds_messages(broker: dramatiq.Broker) -> bool:
    """Whether a queue of the test's Redis database still has a message, or a worker
    holds one unacked (running, or delayed until its ETA). An ack set can outlive a
    worker that was killed, naming messages long gone: only a message whose body is
    still stored counts."""
    if not isinstance(broker, RedisBroker):
        return False
    client, prefix = broker.client, f"{broker.namespace}:"
    for key in client.scan_iter(match=f"{prefix}*"):
        name = key.decode()[len(prefix) :]
        kind = client.type(key)
        if kind == b"list" and client.llen(key):
            return True
        if kind == b"set" and name.startswith("__acks__."):
            queue = name.split(".", 2)[2]  # __acks__.<worker id>.<queue>
            held = client.smembers(key)
            if held and any(client.hmget(f"{prefix}{queue}.msgs", list(held))):
                return True
    return False


@pytest.fixture(scope="module")
def _module_worker(_module_env: dict[str, str]) -> Iterator[Shared]:
    shared = Shared(lambda: start_worker(_module_env))
    yield shared
    shared.stop()


@pytest.fixture
def worker_process(
    process_env: dict[str, str], broker: dramatiq.Broker, _module_worker: Shared
) -> Iterator[Process]:
    worker = _module_worker.get()
    worker.forget_output()
    yield worker
    deadline = time.monotonic() + IDLE_WAIT
    while holds_messages(broker):
        if time.monotonic() > deadline:
            _module_worker.stop()
            break
        time.sleep(0.05)


@pytest.fixture(scope="module")
def _module_server(_module_env: dict[str, str]) -> Iterator[tuple[Shared, list[str]]]:
    base: list[str] = []

    def start() -> Process:
        port = free_port()
        base[:] = [f"http://127.0.0.1:{port}"]
        return start_uvicorn("tests.asgi:application", _module_env, port)

    shared = Shared(start)
    yield shared, base
    shared.stop()


@pytest.fixture
def server(
    process_env: dict[str, str], _module_server: tuple[Shared, list[str]]
) -> tuple[Process, str]:
    shared, base = _module_server
    process = shared.get()
    process.forget_output()
    return process, base[0]

@pytest.fixture
def streams() -> Iterator[Callable[..., SSEClient]]:
    """Open SSE streams (as a logged-in user, or anonymous); all closed after the test."""
    opened: list[SSEClient] = []

    def open_stream(url: str, user: Any = None) -> SSEClient:
        stream = SSEClient(url, cookies=session_cookie(user) if user else {})
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis server of the test's own, to break (tests.support.faults)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sender(private_redis) -> Iterator[RedisBroker]:
    """Sends straight to the private Redis, without middleware: the worker creates the rows."""
    broker = RedisBroker(url=private_redis.url, middleware=[])
    try:
        yield broker
    finally:
        broker.close()
