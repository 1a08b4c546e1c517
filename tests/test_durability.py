"""Which writes wait for the database's disk (PostgreSQL's ``synchronous_commit``).

A final change waits: an ack relies on it, and nothing writes the row again. The
sender's ``enqueued`` row, a ``running`` change and progress reports do not: a later
write of the same task repairs them, and a write committed after them makes them durable
too (the log is flushed in order). A trigger records the setting in force in the
transaction that wrote each row.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection, transaction

from taskstate.core import conf
from taskstate.core import transitions as t
from taskstate.core.states import TERMINAL_ORDER, Status, retrying_order, running_order
from taskstate.worker.writer import writer
from tests.test_transitions import origin
from tests.testapp import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgresql]


@pytest.fixture
def commits() -> Iterator[list[tuple[str, str, str]]]:
    """(message id, status, synchronous_commit) of each row write, in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE TABLE taskstate_test_commits (
                id serial PRIMARY KEY, message_id text, status text, sync text);
            CREATE FUNCTION taskstate_test_commit() RETURNS trigger AS $$
            BEGIN
                INSERT INTO taskstate_test_commits (message_id, status, sync)
                VALUES (NEW.message_id, NEW.status, current_setting('synchronous_commit'));
                RETURN NULL;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER taskstate_test_commit AFTER INSERT OR UPDATE ON taskstate_task
            FOR EACH ROW EXECUTE FUNCTION taskstate_test_commit();
            """
        )
    seen: list[tuple[str, str, str]] = []
    yield seen
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER taskstate_test_commit ON taskstate_task;"
            "DROP FUNCTION taskstate_test_commit(); DROP TABLE taskstate_test_commits;"
        )


def _read(seen: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT message_id, status, sync FROM taskstate_test_commits ORDER BY id")
        seen[:] = [tuple(row) for row in cursor.fetchall()]
    return seen


def test_the_senders_row_does_not_wait_for_the_disk(commits, broker):
    message = tasks.noop.send(for_state={"description": "one"})
    assert _read(commits) == [(message.message_id, "enqueued", "off")]
    # The session's own setting is left as it was.
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)


def test_the_rows_of_a_transactions_sends_are_written_at_its_commit_without_waiting(
    commits, broker
):
    with transaction.atomic():
        sent = [tasks.noop.send(for_state={"description": f"n{n}"}) for n in range(3)]
    assert sorted(_read(commits)) == sorted((m.message_id, "enqueued", "off") for m in sent)


def test_the_writer_waits_for_the_disk_for_a_final_change_only(commits):
    running = t.Change(origin("m-1"), Status.RUNNING, running_order(1), {"attempts": 1})
    assert writer.submit(running)
    assert writer.flush(10)
    assert _read(commits) == [("m-1", "running", "off")]

    done = t.Change(origin("m-1"), Status.DONE, TERMINAL_ORDER, {"attempts": 1})
    assert writer.submit(done, final=True)
    assert writer.flush(10)
    assert _read(commits)[-1] == ("m-1", "done", "on")


def test_one_setting_holds_for_every_row_of_a_batchs_transaction(commits):
    t.write_batch(
        [
            t.Change(origin("m-1"), Status.RUNNING, running_order(1), {"attempts": 1}),
            t.Change(origin("m-2"), Status.FAILED, TERMINAL_ORDER, {"attempts": 1}),
        ],
        durable=True,
    )
    t.write_batch(
        [t.Change(origin("m-3"), Status.RUNNING, running_order(1), {"attempts": 1})],
        durable=False,
    )
    assert sorted(_read(commits)) == [
        ("m-1", "running", "on"),
        ("m-2", "failed", "on"),
        ("m-3", "running", "off"),
    ]


def test_the_senders_row_of_a_retryable_task_waits_for_the_disk(commits, broker):
    # What a retry needs is written with the sender's and the running change only: no
    # later write would put it back after a crash.
    message = tasks.noop.send(for_state={"description": "again", "retryable": True})
    assert _read(commits) == [(message.message_id, "enqueued", "on")]


def test_a_final_change_merged_into_the_next_attempts_running_still_waits(commits, monkeypatch):
    # Attempt 1's retrying (its ack waits) and attempt 2's running meet in the queue: one
    # change, whose order is running's, still written as the final change it holds.
    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    retrying = t.Change(origin("m-1"), Status.RETRYING, retrying_order(1), {"attempts": 1})
    running = t.Change(origin("m-1"), Status.RUNNING, running_order(2), {"attempts": 2})
    assert writer.submit(retrying, final=True)
    assert writer.submit(running)
    assert writer.flush(10)
    assert _read(commits) == [("m-1", "running", "on")]
