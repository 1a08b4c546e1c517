"""taskstate.web.courier: the background sender. Jobs run on its own thread, in order;
progress is coalesced; nothing is dropped without a ``stream-reset`` for its channel."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from taskstate.core import threads
from taskstate.web import courier as courier_module
from taskstate.web.courier import Courier
from tests.support.processes import REPO, child_env, passes_in_forked_child


class Recorder:
    """What a courier sent: job labels in order, and the channels it reset."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.threads: set[str] = set()
        self.resets: list[str] = []
        self.reset_fails = 0
        self.reset_done = threading.Event()

    def job(self, label: str) -> Callable[[], None]:
        def run() -> None:
            self.threads.add(threading.current_thread().name)
            self.sent.append(label)

        return run

    def reset(self, channel: str) -> None:
        if self.reset_fails:
            self.reset_fails -= 1
            raise ConnectionError("redis is down")
        self.resets.append(channel)
        self.reset_done.set()


class Gate:
    """A job that holds the courier's thread until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.opened.wait(10), "the test never opened the gate"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def courier(recorder) -> Iterator[Courier]:
    made = Courier(reset=recorder.reset)
    yield made
    assert made.flush(5), "the courier did not drain"


def held(courier: Courier) -> Gate:
    gate = Gate()
    courier.submit(gate)
    assert gate.entered.wait(5)
    return gate


def test_jobs_run_in_order_on_the_couriers_own_thread(courier, recorder):
    for n in range(5):
        courier.submit(recorder.job(f"j{n}"))
    assert courier.flush()
    assert recorder.sent == [f"j{n}" for n in range(5)]
    assert recorder.threads == {"taskstate-courier"}


def test_progress_of_one_task_is_coalesced_to_its_latest_value(courier, recorder):
    gate = held(courier)
    for percent in (10, 20, 30):
        courier.submit(recorder.job(f"bar 7 {percent}"), replaces=("progress", 7))
    courier.submit(recorder.job("bar 8 50"), replaces=("progress", 8))
    gate.opened.set()
    assert courier.flush()
    assert recorder.sent == ["bar 7 30", "bar 8 50"], "the latest value, in the first's place"


def test_a_row_supersedes_the_pending_bar_of_its_task(courier, recorder):
    gate = held(courier)
    courier.submit(recorder.job("bar 7"), replaces=("progress", 7))
    courier.submit(recorder.job("bar 8"), replaces=("progress", 8))
    courier.submit(recorder.job("row 7"), supersedes=("progress", 7))
    gate.opened.set()
    assert courier.flush()
    assert recorder.sent == ["bar 8", "row 7"]


def test_a_pending_row_gives_way_to_a_later_state_of_its_task_and_never_to_an_earlier_one(
    courier, recorder
):
    """Rows waiting for the sender are coalesced per task to the highest rank, whichever
    thread announced first (a sender's ``enqueued`` can come after the worker's ``done``)."""
    gate = held(courier)
    courier.submit(recorder.job("row 7 running"), replaces=("row", 7), rank=(20, 1.0))
    courier.submit(recorder.job("row 8 running"), replaces=("row", 8), rank=(20, 1.0))
    courier.submit(recorder.job("row 7 done"), replaces=("row", 7), rank=(90, 2.0))
    courier.submit(recorder.job("row 7 enqueued"), replaces=("row", 7), rank=(10, 0.5))
    courier.submit(recorder.job("row 8 running, later"), replaces=("row", 8), rank=(20, 1.5))
    gate.opened.set()
    assert courier.flush()
    assert recorder.sent == ["row 7 done", "row 8 running, later"]


def test_a_full_queue_drops_new_jobs_and_resets_their_channels_once_drained(
    courier, recorder, monkeypatch, caplog
):
    monkeypatch.setattr(courier_module, "MAX_PENDING", 3)
    gate = held(courier)
    for n in range(3):
        courier.submit(recorder.job(f"a{n}"), channel="ch-a")
    for label, channel in [("b0", "ch-b"), ("c0", "ch-c"), ("b1", "ch-b"), ("x", None)]:
        courier.submit(recorder.job(label), channel=channel)
    assert recorder.resets == []
    gate.opened.set()
    assert courier.flush()
    assert recorder.sent == ["a0", "a1", "a2"]
    assert recorder.resets == ["ch-b", "ch-c"], "one reset per channel that lost an event"
    assert caplog.text.count("events waiting to be sent; dropping new ones") == 1
    courier.submit(recorder.job("later"), channel="ch-b")
    assert courier.flush()
    assert recorder.sent[-1] == "later" and recorder.resets == ["ch-b", "ch-c"]


def test_a_queue_that_stays_at_its_bound_logs_the_overflow_once(
    courier, recorder, monkeypatch, caplog
):
    """Senders faster than the courier: each job sent frees one slot, which the next
    submit fills. That is one overflow, not one per slot (a sustained run at 1,000
    messages/s logged it 3,907 times)."""
    monkeypatch.setattr(courier_module, "MAX_PENDING", 4)
    gate = held(courier)
    for n in range(4):
        courier.submit(recorder.job(f"a{n}"), channel="ch-a")
    courier.submit(recorder.job("over"), channel="ch-a")  # dropped: the episode starts
    for n in range(3):
        # One job leaves the queue, one more comes, and one more is dropped.
        with courier._cond:
            courier._jobs.popitem(last=False)
        courier.submit(recorder.job(f"b{n}"), channel="ch-a")
        courier.submit(recorder.job(f"over{n}"), channel="ch-a")
    assert caplog.text.count("events waiting to be sent; dropping new ones") == 1
    gate.opened.set()
    assert courier.flush()
    # Drained: a later overflow is a new episode, logged again.
    gate = held(courier)
    for n in range(5):
        courier.submit(recorder.job(f"c{n}"), channel="ch-c")
    assert caplog.text.count("events waiting to be sent; dropping new ones") == 2
    gate.opened.set()
    assert courier.flush()


def test_a_reset_that_cannot_be_sent_is_tried_again_once_sending_works(
    courier, recorder, monkeypatch
):
    monkeypatch.setattr(threads, "FIRST_RETRY_PAUSE", 60.0)
    recorder.reset_fails = 1
    courier.lost("ch-a")
    # Waiting to retry counts as drained: a flush does not wait for Redis to come back.
    assert courier.flush()
    assert recorder.resets == []
    # A job that sends fine shows sending works: the reset goes at once, not in 60 s.
    courier.submit(recorder.job("fine"))
    assert recorder.reset_done.wait(5)
    assert recorder.resets == ["ch-a"]


def test_a_failed_reset_is_retried_after_a_pause(courier, recorder, monkeypatch):
    monkeypatch.setattr(threads, "FIRST_RETRY_PAUSE", 0.01)
    recorder.reset_fails = 3
    courier.lost("ch-a")
    assert recorder.reset_done.wait(5)
    assert recorder.resets == ["ch-a"]


def test_an_event_lost_while_its_reset_is_sent_gets_a_reset_of_its_own(courier, recorder):
    sending = threading.Event()
    proceed = threading.Event()

    def slow_reset(channel: str) -> None:
        sending.set()
        assert proceed.wait(5)
        recorder.resets.append(channel)

    courier._reset = slow_reset
    courier.lost("ch-a")
    assert sending.wait(5)
    courier.lost("ch-a")  # lost after the first reset left: it does not cover this one
    proceed.set()
    assert courier.flush()
    assert recorder.resets == ["ch-a", "ch-a"]


def test_lost_channels_are_bounded(courier, recorder, monkeypatch, caplog):
    monkeypatch.setattr(courier_module, "MAX_LOST_CHANNELS", 2)
    gate = held(courier)
    for channel in ("ch-a", "ch-b", "ch-c", "ch-d"):
        courier.lost(channel)
    gate.opened.set()
    assert courier.flush()
    assert recorder.resets == ["ch-a", "ch-b"]
    assert caplog.text.count("events of more than 2 channels were lost") == 1


def test_a_failing_job_is_logged_and_the_next_one_still_runs(courier, recorder, caplog):
    def broken() -> None:
        raise RuntimeError("template error")

    courier.submit(broken)
    courier.submit(recorder.job("next"))
    assert courier.flush()
    assert recorder.sent == ["next"]
    assert "sending an event failed" in caplog.text


def test_a_failing_job_resets_its_channel(courier, recorder):
    # A row that cannot be rendered (its staff check hit a database that went away) is
    # an event lost like any other: its pages re-read the database.
    def broken() -> None:
        raise RuntimeError("database went away")

    courier.submit(broken, channel="taskstate-user-1")
    courier.submit(recorder.job("next"), channel="taskstate-user-2")
    assert courier.flush()
    assert recorder.sent == ["next"]
    assert recorder.resets == ["taskstate-user-1"]


@pytest.mark.django_db(transaction=True)
def test_an_idle_courier_holds_no_database_connection(courier, recorder):
    # Rendering a failed row reads its owner's staff flag on the courier's thread. That
    # connection must not outlive the burst: a restarted database would leave it broken
    # for every later failed row, and the test database could not be dropped.
    from django.contrib.auth import get_user_model
    from django.db import connections

    used = []

    def reads() -> None:
        get_user_model().objects.exists()
        used.append(connections["default"])  # the courier thread's own

    courier.submit(reads)
    assert courier.flush()
    assert used and used[0].connection is None


def test_flush_gives_up_after_its_timeout(courier, recorder):
    gate = held(courier)
    courier.submit(recorder.job("waits"))
    assert courier.flush(timeout=0.05) is False
    gate.opened.set()
    assert courier.flush()
    assert recorder.sent == ["waits"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_thread_is_replaced_by_the_next_submit(courier, recorder):
    def dies() -> None:
        raise SystemExit  # ends the thread, as nothing but Exception is caught

    courier.submit(dies)
    first = courier._thread
    assert first is not None
    first.join(5)
    assert not first.is_alive()
    assert courier.flush(), "nothing queued: a dead thread has nothing to flush"
    courier.submit(recorder.job("after"))
    assert courier.flush()
    assert recorder.sent == ["after"] and courier._thread is not first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_courier_without_the_parents_jobs(recorder):
    from taskstate.web.courier import courier as shared

    gate = held(shared)
    shared.submit(recorder.job("parent's"))

    def on_its_own() -> bool:  # the child: its own thread, none of the parent's jobs
        sent: list[str] = []
        shared.submit(lambda: sent.append("child's"))
        return shared.flush(5) and sent == ["child's"] and recorder.sent == []

    try:
        assert passes_in_forked_child(on_its_own)
    finally:
        gate.opened.set()
    assert shared.flush()
    assert recorder.sent == ["parent's"]


def run_python(script: str) -> None:
    """Run ``script`` in a fresh interpreter (its exit is what is tested)."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_pending_events_are_sent_when_the_process_exits(tmp_path):
    sent = tmp_path / "sent"
    script = (
        "import threading\n"
        "import django\n"
        "django.setup()\n"  # the app's ready() registers the exit flush
        "from taskstate.web.courier import courier\n"
        "gate = threading.Event()\n"
        "courier.submit(gate.wait)\n"  # the thread is busy when the interpreter exits
        f"courier.submit(lambda: open({str(sent)!r}, 'w').write('sent'))\n"
        "threading.Timer(0.2, gate.set).start()\n"
    )
    run_python(script)
    assert sent.read_text() == "sent", "the exit flushed the queue"


def test_events_pending_at_exit_go_out_before_the_grip_publisher_is_closed(tmp_path):
    """django-grip's publisher (pubcontrol) closes itself at exit; an event the courier
    flushes after that fails ("pubcontrol instance is closed", seen at the end of a
    cleanup run). The courier's flush must come first, whichever module loads first."""
    seen = tmp_path / "seen"
    script = (
        "import threading\n"
        "import django\n"
        "django.setup()\n"
        "from taskstate.web.courier import courier\n"
        "from pubcontrol import PubControl\n"  # imported after taskstate, as in a project
        "publisher = PubControl()\n"
        "gate = threading.Event()\n"
        "courier.submit(gate.wait)\n"
        f"courier.submit(lambda: open({str(seen)!r}, 'w').write(str(publisher.closed)))\n"
        "threading.Timer(0.2, gate.set).start()\n"
    )
    run_python(script)
    assert seen.read_text() == "False", "the publisher was still open for the last event"


def test_the_default_reset_is_a_stream_reset_event_on_the_channel(monkeypatch):
    import django_eventstream

    calls = []
    monkeypatch.setattr(django_eventstream, "send_event", lambda *a, **k: calls.append((a, k)))
    courier_module.send_reset("taskstate-user-3")
    assert calls == [
        (
            ("taskstate-user-3", "stream-reset", '{"channels": ["taskstate-user-3"]}'),
            {"json_encode": False},
        )
    ]


def test_no_log_noise_while_resets_keep_failing(courier, recorder, monkeypatch, caplog):
    monkeypatch.setattr(threads, "FIRST_RETRY_PAUSE", 60.0)
    recorder.reset_fails = 100
    with caplog.at_level(logging.INFO, logger="taskstate"):
        courier.lost("ch-a")
        assert courier.flush()
    assert not caplog.records, "the publishing outage is logged by publish, once"
    recorder.reset_fails = 0
    courier.submit(recorder.job("fine"))
    assert recorder.reset_done.wait(5)
