from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import dramatiq
import pytest
from django.db.backends.signals import connection_created
from dramatiq.brokers.stub import StubBroker

from taskstate.writer import writer
from tests.support.workers import Sent, stop_worker


class QueryCounter:
    """Counts the statements of every database connection, in every thread.

    A wrapper is installed on each connection as it opens (``connection_created``), so
    the worker's threads are counted as well as the test's own.
    """

    def __init__(self) -> None:
        self.active = False
        self.statements: list[str] = []
        self.calls: list[tuple[str, Any]] = []  # each statement with its parameters
        self._lock = threading.Lock()

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        # Django's own set-up of a connection object that was open before (MySQL's
        # isolation level; the background writer reconnects after a worker's shutdown let
        # go of its connection): not a statement of ours, and not counted for a new one.
        if self.active and not sql.startswith(_CONNECTION_SETUP):
            with self._lock:
                self.statements.append(sql)
                self.calls.append((sql, params))
        return execute(sql, params, many, context)

    def matching(self, *words: str) -> list[str]:
        """Statements containing every word (case-insensitive)."""
        return [s for s in self.statements if all(w.lower() in s.lower() for w in words)]

    def starting(self, verb: str, table: str = "taskstate_task") -> list[str]:
        """Statements of one kind (INSERT, UPDATE, SELECT, ...) that touch ``table``.

        A write sent with its own timeouts first (``SELECT set_config(...); INSERT ...``,
        see taskstate.bounds) counts as the write it carries.
        """
        return [
            s
            for s in self.statements
            if _carried(s).upper().startswith(verb.upper()) and table in s
        ]


_CONNECTION_SETUP = ("SET SESSION TRANSACTION ISOLATION LEVEL",)


def _carried(sql: str) -> str:
    sql = sql.lstrip()
    if sql.startswith("SELECT set_config(") and "; " in sql:
        return sql.split("; ", 1)[1].lstrip()
    return sql


COUNTER = QueryCounter()


def _install(sender: Any, connection: Any, **kwargs: Any) -> None:
    if COUNTER not in connection.execute_wrappers:
        connection.execute_wrappers.append(COUNTER)


connection_created.connect(_install)


@pytest.fixture
def count_queries() -> Iterator[QueryCounter]:
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if COUNTER not in conn.execute_wrappers:
            conn.execute_wrappers.append(COUNTER)
    COUNTER.statements = []
    COUNTER.calls = []
    COUNTER.active = True
    try:
        yield COUNTER
    finally:
        COUNTER.active = False
        COUNTER.statements = []
        COUNTER.calls = []


@pytest.fixture(autouse=True)
def _groups_refreshed_within_the_test() -> Iterator[None]:
    """A group refresh a test caused runs before its database goes (taskstate.group_refresh)."""
    yield
    from taskstate.group_refresh import group_refresher

    group_refresher.flush(10)


@pytest.fixture(autouse=True)
def _cancel_watch_starts_empty() -> None:
    """Each test's workers know of no cancel request until they read (an earlier test's
    read is of an earlier test's database)."""
    from taskstate.writer import cancels

    cancels.forget()


@pytest.fixture(autouse=True)
def write_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """How the worker's changes are written: "background" (the default) for every test;
    modules or tests marked ``both_write_modes`` run once more "immediate".

    Tests that set ``settings.TASKSTATE`` themselves keep the mode with
    ``{**settings.TASKSTATE, ...}``.
    """
    mode = getattr(request, "param", "background")
    if mode != "background":
        settings = request.getfixturevalue("settings")
        settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_MODE": mode}
    yield mode
    # Whatever a test queued is written within it.
    writer.flush(10)


@pytest.fixture(scope="session", autouse=True)
def _writer_lets_go_of_the_test_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """The background writer's connection is closed before the test database is dropped
    (this fixture is set up after that one, so torn down before it)."""
    request.getfixturevalue("django_db_setup")
    yield
    writer.flush(10)
    writer.release()


#: ``pytestmark = both_write_modes``: each test runs with the background writer and
#: with immediate writes.
both_write_modes = pytest.mark.parametrize("write_mode", ["background", "immediate"], indirect=True)


#: ``pytestmark = immediate_writes``: unit tests of the immediate write path (the background
#: writer's own are in tests/test_writer.py).
immediate_writes = pytest.mark.parametrize("write_mode", ["immediate"], indirect=True)


def lifecycle_announced(announced: list[str], expected: list[str], exact: bool) -> bool:
    """Whether ``announced`` is what ``task_changed`` may say of the ``expected`` lifecycle.

    ``exact``: every status announced, in order. Otherwise each committed row is
    announced: statuses of one message merged within a batch are announced once, as the
    last of them; so the statuses announced are the expected ones in order, some possibly
    left out, never the final one.
    """
    if exact:
        return announced == expected
    rest = iter(expected)
    in_order = all(any(status == e for e in rest) for status in announced)
    return in_order and announced[-1:] == expected[-1:]


@pytest.fixture
def broker() -> Iterator[dramatiq.Broker]:
    b = dramatiq.get_broker()
    b.flush_all()
    yield b
    b.flush_all()


@pytest.fixture
def worker(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=8)
    w.start()
    yield w
    stop_worker(broker, w)
    writer.flush(30)


@pytest.fixture
def sent(broker: dramatiq.Broker) -> Iterator[Sent]:
    """What the broker enqueues during the test."""
    recorder = Sent()
    broker.add_middleware(recorder)
    yield recorder
    broker.middleware[:] = [m for m in broker.middleware if m is not recorder]


@pytest.fixture
def run_all(broker: dramatiq.Broker, worker: dramatiq.Worker) -> Callable[[], None]:
    """Wait until every queued message, delayed ones included, has been processed."""

    def run() -> None:
        if isinstance(broker, StubBroker):
            broker.join("default", timeout=30_000, fail_fast=False)
        else:
            broker.join("default", timeout=30_000)
        worker.join()
        # The background writer writes the worker's last changes moments later.
        assert writer.flush(30)

    return run


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw")


class EventCapture:
    """What django-eventstream delivered on some channels, captured where it really goes.

    In-process mode: a real listener registered with django-eventstream's listener
    manager. Redis mode: a real subscription to django-eventstream's pub/sub channel.
    """

    def __init__(self, channels: set[str]) -> None:
        from django.conf import settings

        self.channels = channels
        self._redis = getattr(settings, "EVENTSTREAM_REDIS", None)
        if self._redis:
            import redis

            from taskstate.presence import board

            self._client = redis.Redis(**self._redis)
            self._pubsub = self._client.pubsub()
            self._pubsub.subscribe("events_channel")
            self._pubsub.get_message(timeout=1)  # the subscribe confirmation
            # Not a django-eventstream stream: say so, or nothing is rendered for it.
            board.hold(channels)
        else:
            import asyncio

            from django_eventstream.views import Listener, get_listener_manager

            self._loop = asyncio.new_event_loop()
            self._listener = Listener()
            self._listener.loop = self._loop
            self._listener.channels = set(channels)
            get_listener_manager().add_listener(self._listener)

    def events(self, wait: float = 0.5) -> list[tuple[str, str, str]]:
        """(channel, event type, data) of everything delivered so far, in order."""
        import json
        import time

        from taskstate.publish import flush

        flush()
        out: list[tuple[str, str, str]] = []
        if self._redis:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                message = self._pubsub.get_message(timeout=0.05)
                if message and message["type"] == "message":
                    item = json.loads(message["data"])
                    if item["channel"] in self.channels:
                        out.append((item["channel"], item["event_type"], item["data"]))
            return out
        for channel, items in self._listener.channel_items.items():
            out.extend((channel, e.type, e.data) for e in items)
        self._listener.channel_items = {}
        return out

    def close(self) -> None:
        if self._redis:
            from taskstate.presence import board

            board.release(self.channels)
            self._pubsub.close()
            self._client.close()
        else:
            from django_eventstream.views import get_listener_manager

            get_listener_manager().remove_listener(self._listener)
            self._loop.close()


@pytest.fixture
def capture_events() -> Iterator[Callable[..., EventCapture]]:
    made: list[EventCapture] = []

    def start(*channels: str) -> EventCapture:
        capture = EventCapture(set(channels))
        made.append(capture)
        return capture

    yield start
    for capture in made:
        capture.close()


# --- selection: what runs where -------------------------------------------------------
#
# Integration tests need PostgreSQL and Redis (TASKSTATE_TEST_SERVICES=1). On a user's
# machine without them they are skipped, saying why. In CI (CI=true) the first pass is
# the README's command without services: there they are deselected, not skipped, since
# the second pass of .ci/run runs them against the real services.

SERVICES = os.environ.get("TASKSTATE_TEST_SERVICES") == "1"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselected = []
    kept = []
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "browser" in parts:
            item.add_marker(pytest.mark.browser)
        if item.get_closest_marker("integration") and not SERVICES:
            if IN_CI:
                deselected.append(item)
                continue
            item.add_marker(
                pytest.mark.skip(
                    reason="needs PostgreSQL and Redis on 127.0.0.1: run with TASKSTATE_TEST_SERVICES=1 "
                    "(.ci/run does)"
                )
            )
        if item.get_closest_marker("postgresql") and not SERVICES:
            # PostgreSQL settings (lock and statement timeouts): the services pass runs them.
            if IN_CI:
                deselected.append(item)
                continue
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL (TASKSTATE_TEST_SERVICES=1)"))
        if item.get_closest_marker("django6") and django.VERSION < (6, 0):
            # Django 6 features (its CSP middleware): run in the matrix's Django 6 cells.
            if IN_CI:
                deselected.append(item)
                continue
            item.add_marker(pytest.mark.skip(reason="needs Django 6 (nox -s unit runs it)"))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> list[str]:
    mode = "PostgreSQL + Redis (TASKSTATE_TEST_SERVICES=1)" if SERVICES else "SQLite + StubBroker"
    return [f"taskstate test mode: {mode}; CI={IN_CI}"]
