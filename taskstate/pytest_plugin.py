"""pytest fixtures for a project that uses taskstate (the ``taskstate`` plugin, through
the ``pytest11`` entry point; ``-p no:taskstate`` turns it off): ``taskstate_worker``,
``taskstate_settle`` and ``taskstate_events`` (docs/testing.md).

Nothing here runs unless a test asks for a fixture, and loading it imports neither Django
nor taskstate's models. The worker's threads use connections of their own, so its tests
need committed data (``transactional_db``); under ``db`` the fixture stops with a clear
error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from taskstate.testing import EventLog, SettlingWorker


@pytest.fixture
def taskstate_worker(request: pytest.FixtureRequest) -> Iterator[SettlingWorker]:
    """A Dramatiq worker running the project's actors in this process, on the configured
    broker (emptied before and after); its ``join()`` and ``drain()`` return once
    taskstate has written every state."""
    import dramatiq

    from taskstate.testing import SettlingWorker, require_committed_data, settle

    require_committed_data()
    broker = dramatiq.get_broker()
    broker.flush_all()
    worker = SettlingWorker(broker, worker_threads=4)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        broker.flush_all()
        # What the test set going is written while its database is still there.
        settle()


@pytest.fixture
def taskstate_settle() -> Callable[..., None]:
    """:func:`taskstate.testing.settle`: wait until every state is written and sent."""
    from taskstate.testing import settle

    return settle


@pytest.fixture
def taskstate_events() -> Iterator[Callable[..., EventLog]]:
    """Start recording what the pages of some users receive:
    ``log = taskstate_events(user)``; ``log.rows()``, ``log.events``."""
    from taskstate.testing import record_events

    with ExitStack() as stack:

        def start(*owners: Any) -> EventLog:
            return stack.enter_context(record_events(*owners))

        yield start
