"""pytest fixtures for a project that uses taskstate (registered as the ``taskstate``
plugin through the ``pytest11`` entry point; ``-p no:taskstate`` turns it off).

Nothing here runs unless a test asks for a fixture: the module imports neither Django nor
taskstate's models when it is loaded, so projects without Django collect as without it.

- ``taskstate_worker``: a started :class:`taskstate.testing.SettlingWorker` on the
  configured broker (flushed before and after); ``taskstate_worker.drain()`` runs every
  queued message and returns once every state is written;
- ``taskstate_settle``: :func:`taskstate.testing.settle`;
- ``taskstate_events``: :func:`taskstate.testing.record_events`, closed after the test.

The worker's threads use database connections of their own, so a test that uses it needs
committed data: pytest-django's ``transactional_db`` (or ``django_db(transaction=True)``);
under ``db`` the fixture stops the test with a clear error. See docs/testing.md.
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
    """A Dramatiq worker running the project's actors in this process; its ``join()`` and
    ``drain()`` return once taskstate has written every state."""
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
