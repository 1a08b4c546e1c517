"""Bounded waits of the tracking writes (taskstate.core.bounds) on a live database.

A hung server (SIGSTOP) is tested in tests/integration/test_faults.py; here the
server-side bounds: a write that waits for a lock gives up, the connection stays usable
and the project's own session settings are untouched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connection

from taskstate.core import conf
from taskstate.core.group_refresh import GroupRefresher
from taskstate.core.groups import refresh_group
from taskstate.core.models import Kind, Status, Task
from taskstate.core.states import ENQUEUED_ORDER
from tests.support.factories import make_task
from tests.support.processes import passes_in_forked_child
from tests.support.writes import progress_one, write_one
from tests.test_transitions import apply, origin

pytestmark = pytest.mark.django_db(transaction=True)


def _hold_the_row(
    where: str = "message_id = 'm-1'",
) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """Another connection takes a task row's lock (FOR UPDATE) until ``release`` is set."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(_dsn()) as other, other.transaction():
            other.execute(f"SELECT 1 FROM taskstate_task WHERE {where} FOR UPDATE")
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    return locked, release, holder


def _dsn() -> str:
    params = connection.get_connection_params()
    keys = ("host", "port", "user", "dbname")
    return " ".join(f"{k}={params[k]}" for k in keys if params.get(k))


@pytest.mark.postgresql
def test_write_waiting_for_a_locked_row_gives_up_and_leaves_the_connection_usable(
    monkeypatch, caplog
):
    monkeypatch.setattr(conf, "DB_LOCK_TIMEOUT", 0.2)
    monkeypatch.setattr(conf, "DB_STATEMENT_TIMEOUT", 30)
    apply("enqueued")
    locked, release, holder = _hold_the_row()
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
def test_statement_timeout_bounds_our_statement_only(monkeypatch):
    monkeypatch.setattr(conf, "DB_STATEMENT_TIMEOUT", 0.05)
    # The project's own slow query on the same connection is not bound by our setting.
    write_one(origin(), Status.ENQUEUED, ENQUEUED_ORDER, {})
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.2)")
    assert Task.objects.get().status == Status.ENQUEUED


@pytest.mark.postgresql
def test_a_write_inside_the_caller_s_transaction_never_breaks_it(monkeypatch, django_user_model):
    """A row lock held longer than the client bound, while a write runs inside the
    caller's own atomic(): the write waits like the caller's own queries (cutting the
    socket would fail the caller's transaction)."""
    import time

    from django.db import transaction

    monkeypatch.setattr(conf, "DB_STATEMENT_TIMEOUT", 0.3)
    apply("running")
    locked, release, holder = _hold_the_row()
    try:
        assert locked.wait(10)
        threading.Timer(1.5, release.set).start()  # past the 1.3 s client bound
        started = time.monotonic()
        with transaction.atomic():
            django_user_model.objects.create_user("before")
            assert progress_one(origin(), 1, 40, "step") is not None
            django_user_model.objects.create_user("after")  # the connection still works
        assert time.monotonic() - started >= 1.0  # it did wait for the lock
    finally:
        release.set()
        holder.join(10)
    assert django_user_model.objects.filter(username__in=["before", "after"]).count() == 2
    assert Task.objects.get().progress == 40


@pytest.mark.postgresql
def test_a_senders_read_back_of_a_row_it_moved_on_is_bounded_too(monkeypatch):
    """The sender's statement moved an existing row on (it returns such a row's key only):
    the row is read back within the write's bounds, so a table locked in between costs
    ``send()`` the bound, not the lock's time."""
    from taskstate.core import transitions as t
    from taskstate.core.states import DELAYED_ORDER

    monkeypatch.setattr(conf, "DB_STATEMENT_TIMEOUT", 0.3)  # cut at 1.3 s
    assert write_one(origin(), Status.DELAYED, DELAYED_ORDER, {}) is not None
    locked, release = threading.Event(), threading.Event()

    def lock_the_table() -> None:
        with psycopg.connect(_dsn()) as other, other.transaction():
            other.execute("LOCK TABLE taskstate_task IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(60)

    def after_the_upsert(execute: Any, sql: str, *args: Any) -> Any:
        result = execute(sql, *args)
        if "INSERT INTO" in sql and not locked.is_set():
            threading.Thread(target=lock_the_table).start()
            assert locked.wait(10)
        return result

    threading.Timer(30, release.set).start()  # whatever happens, the lock ends
    try:
        with connection.execute_wrapper(after_the_upsert), pytest.raises(t.Outage):
            t.write_batch([t.Change(origin(), Status.ENQUEUED, ENQUEUED_ORDER, {})])
        # Given up while the table was still locked; the write itself had landed.
        assert locked.is_set() and not release.is_set()
    finally:
        release.set()
    assert Task.objects.get().status == Status.ENQUEUED


def test_the_watchdog_shuts_a_socket_whose_peer_never_answers_and_spares_a_disarmed_one():
    import socket

    from taskstate.core.bounds import _Watchdog

    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        hung = socket.create_connection(listener.getsockname())
        quick = socket.create_connection(listener.getsockname())
        try:
            watchdog = _Watchdog()
            alarm = watchdog.arm(hung.fileno(), 0.2)
            spared = watchdog.arm(quick.fileno(), 0.2)
            assert watchdog.disarm(spared) is False  # its write ended in time
            hung.settimeout(30)
            assert hung.recv(1) == b""  # the read that would hang for ever ends
            assert watchdog.disarm(alarm) is True
            quick.setblocking(False)
            with pytest.raises(BlockingIOError):
                quick.recv(1)  # still open, still waiting for its peer
        finally:
            hung.close()
            quick.close()


def test_an_alarm_due_before_the_ones_pending_still_fires_on_time_and_ended_ones_do_not_pile_up():
    """The thread is woken only for an alarm due before the ones it waits for (a write of
    a bound shorter than the last one's, say); alarms of writes that ended are cleared by
    the next arm, so a process that writes all day keeps a heap of the writes under way."""
    import socket

    from taskstate.core.bounds import _Watchdog

    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        hung = socket.create_connection(listener.getsockname())
        quick = socket.create_connection(listener.getsockname())
        try:
            watchdog = _Watchdog()
            for _ in range(1_000):
                watchdog.disarm(watchdog.arm(quick.fileno(), 60))
            assert len(watchdog._heap) == 1
            waiting = watchdog.arm(quick.fileno(), 60)
            started = time.monotonic()
            alarm = watchdog.arm(hung.fileno(), 0.2)
            hung.settimeout(30)
            assert hung.recv(1) == b""  # cut, not left to wait for the 60-second alarm
            assert time.monotonic() - started < 10
            assert watchdog.disarm(alarm) is True
            assert watchdog.disarm(waiting) is False
        finally:
            hung.close()
            quick.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_has_a_watchdog_of_its_own_that_cuts_its_sockets():
    """Forked while a thread of the parent holds the watchdog's lock (as its thread does
    while it shuts a socket), with an alarm of the parent's pending: the child's watchdog
    has its own lock, none of the parent's alarms, and cuts the child's own hung socket."""
    import socket

    from taskstate.core.bounds import _watchdog

    with socket.create_server(("127.0.0.1", 0)) as listener:
        parents = socket.create_connection(listener.getsockname())
        parent_alarm = _watchdog.arm(parents.fileno(), 60)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with _watchdog._cond:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(10)

            def own_watchdog() -> bool:
                signal.alarm(20)  # a child stuck on the parent's lock is ended, failing
                hung = socket.create_connection(listener.getsockname())
                alarm = _watchdog.arm(hung.fileno(), 0.2)
                hung.settimeout(15)
                cut = hung.recv(1) == b""
                pending = [a for _, _, a in _watchdog._heap if a.armed]
                return cut and _watchdog.disarm(alarm) and parent_alarm not in pending

            assert passes_in_forked_child(own_watchdog)
        finally:
            release.set()
            holder.join(10)
            assert _watchdog.disarm(parent_alarm) is False
            parents.close()


def test_shutting_a_descriptor_that_is_gone_or_not_connected_never_raises():
    import socket

    from taskstate.core.bounds import _shut

    _shut(2**20)  # no such descriptor
    with socket.socket() as unconnected:
        _shut(unconnected.fileno())


@pytest.mark.postgresql
def test_the_server_bounds_are_the_constants_in_milliseconds(monkeypatch):
    from taskstate.core.bounds import client_bound, server_bounds

    monkeypatch.setattr(conf, "DB_STATEMENT_TIMEOUT", 1.5)
    monkeypatch.setattr(conf, "DB_LOCK_TIMEOUT", 0.25)
    assert server_bounds(connection) == [("statement_timeout", "1500"), ("lock_timeout", "250")]
    assert client_bound() == 2.5


@pytest.mark.postgresql
def test_a_group_refresh_behind_a_locked_row_gives_up_within_the_bound_and_a_later_one_lands(
    monkeypatch, caplog
):
    monkeypatch.setattr(conf, "DB_LOCK_TIMEOUT", 0.2)
    monkeypatch.setattr(conf, "DB_STATEMENT_TIMEOUT", 30)
    parent = make_task(kind=Kind.GROUP, status=Status.ENQUEUED, state_order=1)
    make_task(parent=parent, position=1)  # done: the refresh ends the group
    landed: list[int] = []

    def refresh(pk: int) -> Any:
        refreshed = refresh_group(pk)
        landed.append(pk)
        return refreshed

    refresher = GroupRefresher(refresh)  # its own thread and connection, like the publisher's
    locked, release, holder = _hold_the_row(f"id = {parent.pk}")
    try:
        assert locked.wait(10)
        started = time.monotonic()
        refresher.changed(parent.pk)
        assert refresher.flush(5), "the refresh still waits for the locked group row"
        assert time.monotonic() - started < 2
    finally:
        release.set()
        holder.join(10)
    assert f"refreshing group {parent.pk} failed" in caplog.text
    assert "lock timeout" in caplog.text
    assert Task.objects.get(pk=parent.pk).status == Status.ENQUEUED
    refresher.changed(parent.pk)
    assert refresher.flush(5)
    assert landed == [parent.pk]  # the refresh behind the lock raised; the later one landed
    assert Task.objects.get(pk=parent.pk).status == Status.DONE
