"""Bounded waits of the tracking writes (taskstate.bounds) on a live database.

A hung server (SIGSTOP) is tested in tests/integration/test_faults.py; here the
server-side bounds: a write that waits for a lock gives up, the connection stays usable
and the project's own session settings are untouched.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from django.db import connection

from taskstate import transitions as t
from taskstate.models import Status, Task
from tests.test_transitions import apply, origin

pytestmark = pytest.mark.django_db(transaction=True)


def _dsn() -> str:
    params = connection.get_connection_params()
    keys = ("host", "port", "user", "dbname")
    return " ".join(f"{k}={params[k]}" for k in keys if params.get(k))


@pytest.mark.postgresql
def test_write_waiting_for_a_locked_row_gives_up_and_leaves_the_connection_usable(settings, caplog):
    settings.TASKSTATE = {"DB_LOCK_TIMEOUT": 0.2, "DB_STATEMENT_TIMEOUT": 30}
    apply("enqueued")
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with psycopg.connect(_dsn()) as other, other.transaction():
            other.execute("SELECT 1 FROM taskstate_task WHERE message_id = 'm-1' FOR UPDATE")
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(10)
        assert apply("running") is None
    finally:
        release.set()
        holder.join(10)
    assert "cannot write task state" in caplog.text
    assert "lock timeout" in caplog.text
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == "0"
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"
    assert apply("running") is not None
    assert Task.objects.get().status == Status.RUNNING


@pytest.mark.postgresql
def test_statement_timeout_bounds_our_statement_only(settings):
    settings.TASKSTATE = {"DB_STATEMENT_TIMEOUT": 0.05}
    # The project's own slow query on the same connection is not bound by our setting.
    t.write(origin(), Status.ENQUEUED, t.ENQUEUED_ORDER, {})
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.2)")
    assert Task.objects.get().status == Status.ENQUEUED
