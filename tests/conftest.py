from __future__ import annotations

import contextlib
import gc
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import dramatiq
import pytest
from django.db.backends.signals import connection_created
from dramatiq.brokers.stub import StubBroker

from taskstate.testing import settle
from taskstate.worker.writer import writer
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
        see taskstate.core.bounds) counts as the write it carries.
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
    """A group refresh a test caused runs before its database goes (taskstate.core.group_refresh)."""
    yield
    from taskstate.core.group_refresh import group_refresher

    group_refresher.flush(10)


@pytest.fixture(autouse=True)
def _cancel_watch_starts_empty() -> None:
    """Each test's workers know of no cancel request until they read (an earlier test's
    read is of an earlier test's database)."""
    from taskstate.worker.writer import cancels

    cancels.forget()


class CancelReads:
    """The cancel watch's reads (``taskstate.worker.writer.cancels_since``) made during a test."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    @property
    def count(self) -> int:
        return len(self.threads)

    @property
    def by_workers(self) -> int:
        """Reads a worker made (a start's, an idle process's look): not the writer's."""
        return sum(1 for name in self.threads if name != "taskstate-writer")


@pytest.fixture
def cancel_reads(monkeypatch: pytest.MonkeyPatch) -> CancelReads:
    import threading

    from taskstate.worker import writer as writer_module

    reads = CancelReads()
    read = writer_module.cancels_since

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.threads.append(threading.current_thread().name)
        return read(*args, **kwargs)

    monkeypatch.setattr(writer_module, "cancels_since", counted)
    return reads


@pytest.fixture(autouse=True)
def _changes_written_within_the_test() -> Iterator[None]:
    """Whatever a test queued for the background writer is written within it."""
    yield
    writer.flush(10)


@pytest.fixture(scope="session", autouse=True)
def _writer_lets_go_of_the_test_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every connection taskstate's threads hold is closed before the test database is
    dropped (this fixture is set up after that one, so torn down before it): the
    writer's, the cancel watch's, and those of the threads that read while they send
    (the event sender, the background thread) or check streams."""
    request.getfixturevalue("django_db_setup")
    yield
    writer.flush(10)
    writer.release()
    from taskstate.core.background import background
    from taskstate.core.threads import close_idle_connections
    from taskstate.web.courier import courier
    from taskstate.web.streams import registry
    from taskstate.worker.writer import cancels
    from tests.support.drain import stop_checks

    cancels.close()
    courier.submit(close_idle_connections)
    background.submit(close_idle_connections)
    assert courier.flush(10) and background.flush(10)
    stop_checks(registry)
    # And those of threads a test ran and that ended (asyncio.to_thread): unreachable now,
    # closed when collected.
    gc.collect()
    with request.getfixturevalue("django_db_blocker").unblock():
        _end_other_sessions()


def _end_other_sessions() -> None:
    """PostgreSQL: end any other session still on the test database (a thread of a
    library's pool, say), named in a warning, so the database can be dropped."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name, state, left(query, 60), pg_terminate_backend(pid) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        ended = cursor.fetchall()
    connection.close()
    if ended:
        warnings.warn(f"sessions left on the test database, ended: {ended}", stacklevel=1)


def lifecycle_announced(announced: list[str], expected: list[str]) -> bool:
    """Whether ``announced`` is what ``task_changed`` may say of the ``expected`` lifecycle.

    Each committed row is announced: statuses of one message merged within a batch are
    announced once, as the last of them; so the statuses announced are the expected ones
    in order, some possibly left out, never the final one.
    """
    rest = iter(expected)
    in_order = all(any(status == e for e in rest) for status in announced)
    return in_order and announced[-1:] == expected[-1:]


def without_the_senders(statuses: list[str]) -> list[str]:
    """The statuses announced of one message, without the sender's "enqueued".

    The sender writes "enqueued" after the broker has the message. A quick worker may
    write "running" first: the late "enqueued" is refused and never announced. Or the
    sender's row is committed first, and the sending thread announces it while the
    background writer announces the worker's rows: in one process the two can come in
    either order, as they can from two processes. Pages and JSON clients keep the row
    with the higher order (docs/how-to/json.md).
    """
    assert statuses.count("enqueued") <= 1, statuses
    return [status for status in statuses if status != "enqueued"]


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
        settle(30)

    return run


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw")


# --- tasks about an object: the object is a django.contrib.auth group ---------------------


@pytest.fixture
def team() -> Any:
    from django.contrib.auth.models import Group

    return Group.objects.create(name="Team Orion")


def with_perm(django_user_model: Any, name: str, *codenames: str) -> Any:
    """A new user holding these permissions, read afresh (no permission cache)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(name, password="pw")
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def viewer(django_user_model: Any) -> Any:
    """May see every group (the model's view permission), change none."""
    return with_perm(django_user_model, "vera", "view_group")


@pytest.fixture
def controller(django_user_model: Any) -> Any:
    """May see and change every group."""
    return with_perm(django_user_model, "carl", "view_group", "change_group")


@pytest.fixture
def stranger(django_user_model: Any) -> Any:
    """Logged in, no permission on groups."""
    return with_perm(django_user_model, "sam")


@pytest.fixture
def object_backend(settings: Any) -> Iterator[set[tuple[Any, str, Any]]]:
    """Object permissions granted one object at a time (as django-guardian grants them)."""
    from tests.support import object_permissions

    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, object_permissions.PATH]
    object_permissions.GRANTED.clear()
    yield object_permissions.GRANTED
    object_permissions.GRANTED.clear()


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

            self._client = redis.Redis(**self._redis)
            self._pubsub = self._client.pubsub()
            self._pubsub.subscribe("events_channel")
            self._pubsub.get_message(timeout=1)  # the subscribe confirmation
        else:
            import asyncio

            from django_eventstream.views import Listener, get_listener_manager

            self._loop = asyncio.new_event_loop()
            self._listener = Listener()
            self._listener.loop = self._loop
            self._listener.channels = set(channels)
            with current_loop(self._loop):
                get_listener_manager().add_listener(self._listener)

    def events(self, wait: float = 0.5) -> list[tuple[str, str, str]]:
        """(channel, event type, data) of everything delivered so far, in order."""
        import json
        import time

        from tests.support.drain import flush

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


def pytest_itemcollected(item: pytest.Item) -> None:
    # Marked by folder as each test is collected: before ``-m`` selects by mark.
    parts = Path(str(item.fspath)).parts
    if "integration" in parts:
        item.add_marker(pytest.mark.integration)
    if "browser" in parts:
        item.add_marker(pytest.mark.browser)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselected = []
    kept = []
    for item in items:
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
    # Browser tests last, after pytest-django's ordering (db tests first): sync Playwright
    # leaves its event loop marked running in the main thread for the rest of the session,
    # and Django then refuses any later query or check in that thread as async code.
    items[:] = sorted(kept, key=_uses_a_browser)


@contextlib.contextmanager
def current_loop(loop: Any) -> Iterator[None]:
    """``loop`` as this thread's current event loop, then the one before it again.

    django-eventstream's ``add_listener`` asks for the current loop (with
    ``EVENTSTREAM_REDIS``); since Python 3.12 none is made on demand once an earlier
    ``asyncio.run()`` in this thread has ended.
    """
    import asyncio

    try:
        before = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        before = None
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(before)


def _uses_a_browser(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return item.get_closest_marker("browser") is not None or "browser" in names


def pytest_report_header(config: pytest.Config) -> list[str]:
    mode = "PostgreSQL + Redis (TASKSTATE_TEST_SERVICES=1)" if SERVICES else "SQLite + StubBroker"
    return [f"taskstate test mode: {mode}; CI={IN_CI}"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under pytest-xdist, a report travels to the main process as UTF-8: the hostile
    values some tests log (lone surrogates) are escaped in its captured output first."""
    report.sections = [
        (name, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for name, text in report.sections
    ]
