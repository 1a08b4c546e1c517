from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from django.db.backends.signals import connection_created


class QueryCounter:
    """Counts the statements of every database connection, in every thread.

    A wrapper is installed on each connection as it opens (``connection_created``), so
    the worker's threads are counted as well as the test's own.
    """

    def __init__(self) -> None:
        self.active = False
        self.statements: list[str] = []
        self._lock = threading.Lock()

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        if self.active:
            with self._lock:
                self.statements.append(sql)
        return execute(sql, params, many, context)

    def matching(self, *words: str) -> list[str]:
        """Statements containing every word (case-insensitive)."""
        return [s for s in self.statements if all(w.lower() in s.lower() for w in words)]

    def starting(self, verb: str, table: str = "taskstate_task") -> list[str]:
        """Statements of one kind (INSERT, UPDATE, SELECT, ...) that touch ``table``."""
        return [
            s for s in self.statements
            if s.lstrip().upper().startswith(verb.upper()) and table in s
        ]


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
    COUNTER.active = True
    try:
        yield COUNTER
    finally:
        COUNTER.active = False
        COUNTER.statements = []


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
    w.stop()
    # Each Worker adds a middleware of its own to the broker and never takes it back.
    broker.middleware[:] = [m for m in broker.middleware if getattr(m, "worker", None) is not w]


@pytest.fixture
def run_all(broker: dramatiq.Broker, worker: dramatiq.Worker) -> Callable[[], None]:
    """Wait until every queued message, delayed ones included, has been processed."""

    def run() -> None:
        if isinstance(broker, StubBroker):
            broker.join("default", timeout=30_000, fail_fast=False)
        else:
            broker.join("default", timeout=30_000)
        worker.join()

    return run


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw")
