"""Real processes on loopback: a ``rundramatiq`` worker and a uvicorn server.

These tests need PostgreSQL and Redis (``TASKSTATE_TEST_SERVICES=1``); see the root
conftest for how they are selected.

The ``server`` and ``worker_process`` of a module's tests are started once and shared:
starting them is most of these tests' cost. A test still gets them as it left them
only when nothing was left in them: a worker still holding a message when its test ends
is stopped (its messages go back to Redis, which the ``broker`` fixture empties), and a
process a test stopped is started again for the next test. A test that starts a worker
of its own asks for ``own_processes``, which stops the shared ones first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from django.db import connection
from dramatiq.brokers.redis import RedisBroker

from tests.support.faults import RedisServer
from tests.support.processes import (
    Process,
    Shared,
    child_env,
    free_port,
    start_uvicorn,
    start_worker,
)
from tests.support.sse import SSEClient, session_cookie

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def module_env(django_db_setup: None) -> dict[str, str]:
    """Environment for a child process: same settings, same test database."""
    return child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="1",
        TASKSTATE_TEST_DB_NAME=connection.settings_dict["NAME"],
    )


@pytest.fixture
def process_env(module_env: dict[str, str], transactional_db: None) -> dict[str, str]:
    """The child processes' environment; the test's rows are committed, so they see them."""
    return dict(module_env)


@pytest.fixture(scope="module")
def module_worker(module_env: dict[str, str]) -> Iterator[Shared]:
    shared = Shared(lambda: start_worker(module_env))
    yield shared
    shared.stop()


@pytest.fixture
def worker_process(
    process_env: dict[str, str], broker: dramatiq.Broker, module_worker: Shared
) -> Iterator[Process]:
    yield module_worker.get()
    module_worker.stop_unless_idle(broker)


@pytest.fixture(scope="module")
def module_server(module_env: dict[str, str]) -> Iterator[tuple[Shared, list[str]]]:
    base: list[str] = []

    def start() -> Process:
        port = free_port()
        base[:] = [f"http://127.0.0.1:{port}"]
        return start_uvicorn("tests.asgi:application", module_env, port)

    shared = Shared(start)
    yield shared, base
    shared.stop()


@pytest.fixture
def server(
    process_env: dict[str, str], module_server: tuple[Shared, list[str]]
) -> tuple[Process, str]:
    shared, base = module_server
    return shared.get(), base[0]


@pytest.fixture
def own_processes(module_worker: Shared, module_server: tuple[Shared, list[str]]) -> None:
    """For a test that starts processes of its own: the module's shared ones are stopped
    (started again for the next test that asks), so no other worker takes its messages
    and nothing else holds a connection to the test database."""
    module_worker.stop()
    module_server[0].stop()


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
