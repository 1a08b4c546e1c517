"""The worker a module's tests share (tests/integration/conftest.py) carries nothing from
one test into the next: one still holding a message when its test ends is stopped."""

from __future__ import annotations

from tests.support.faults import wait_for
from tests.support.processes import holds_messages
from tests.testapp import tasks as actors


def test_a_worker_holding_a_delayed_message_is_stopped_and_an_idle_one_kept(
    worker_process, broker, module_worker
):
    assert not holds_messages(broker)
    module_worker.stop_unless_idle(broker, wait=0.5)
    assert module_worker.process is worker_process, "an idle worker was stopped"

    # Due in a minute: the worker takes it from Redis at once and holds it until then.
    actors.noop.send_with_options(delay=60_000)
    queued = f"{broker.namespace}:default.DQ"
    wait_for(lambda: broker.client.llen(queued) == 0, 15, "the worker took the message")
    assert holds_messages(broker)
    module_worker.stop_unless_idle(broker, wait=0.5)
    assert module_worker.process is None
    assert worker_process.proc.poll() is not None, "the worker holding a message still runs"
    # Stopped, it handed the message back to Redis; the next test's worker would run it.
    assert holds_messages(broker)
    broker.flush_all()
    assert not holds_messages(broker)


def test_what_is_left_in_redis_but_no_message_holds_nothing(broker):
    """An ack set a killed worker left behind, naming a message long gone, and
    dramatiq-abort's event lists: no message to wait for."""
    stale = f"{broker.namespace}:__acks__.a-worker-killed-long-ago.default"
    abort = f"{broker.namespace}:aborts:cancel:a-message"
    broker.client.sadd(stale, "a-message-long-gone")
    broker.client.rpush(abort, "an abort event")
    try:
        assert not holds_messages(broker)
    finally:
        broker.client.delete(stale, abort)
