"""Real processes on loopback: a ``rundramatiq`` worker and a uvicorn server.

These tests need PostgreSQL and Redis (``TASKSTATE_TEST_SERVICES=1``); see the root
conftest for how they are selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from dramatiq.brokers.redis import RedisBroker

from tests.support.faults import RedisServer
from tests.support.processes import Process, child_env, free_port, start_uvicorn, start_worker
from tests.support.sse import SSEClient, session_cookie

pytestmark = pytest.mark.integration


@pytest.fixture
def process_env(transactional_db) -> dict[str, str]:
    """Environment for a child process: same settings, same test database."""
    return child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="1",
        TASKSTATE_TEST_DB_NAME=connection.settings_dict["NAME"],
    )


@pytest.fixture
def worker_process(process_env, broker) -> Iterator[Process]:
    worker = start_worker(process_env)
    yield worker
    worker.stop()


@pytest.fixture
def server(process_env) -> Iterator[tuple[Process, str]]:
    port = free_port()
    proc = start_uvicorn("tests.asgi:application", process_env, port)
    yield proc, f"http://127.0.0.1:{port}"
    proc.stop()


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
