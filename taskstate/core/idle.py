"""Background threads hold no database connection while they wait for work.

The courier and ``taskstate.core.background`` each run one thread per process that reads the
database in bursts. Between bursts each closes its connections: one broken by a
database restart would fail every later burst, a pooler would count it, and a test
database could not be dropped while a thread still held it.
"""

from __future__ import annotations


def close_idle_connections() -> None:
    """Close this thread's open database connections, except inside a transaction."""
    # Imported when called: importing this module needs nothing from Django.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close()
