"""``django.tasks`` functions beside the actors (Django >= 6 only): Django's ``@task``,
run by Dramatiq through ``taskstate.backends.DramatiqBackend`` (settings: ``TASKS``).

The demo app's ``ready()`` imports this module on Django 6, so every worker knows their
actors.
"""

from __future__ import annotations

import time
from typing import Any

from django.tasks import task

import taskstate
from demo.tasks import FeedUnavailable, pause


@task
def count_pages(pages: int) -> dict[str, Any]:
    """About 0.4 s per page, with progress; Cancel stops it at the next page.

    At full pace whatever ``DEMO_PACE`` says: a few seconds anyway, and long enough to be
    cancelled while it runs.
    """
    words = 0
    for page in taskstate.track(range(1, pages + 1), total=pages):
        time.sleep(0.4)
        words += 250 + page
    return {"pages": pages, "words": words}


@task
def import_prices(feed_back_at: float) -> dict[str, Any]:
    """Fails while the supplier feed is down (until the Unix time ``feed_back_at``).

    The backend does not retry a ``@task`` (``MAX_RETRIES`` is 0), so it fails at once;
    Retry from its row sends it again with the same arguments.
    """
    if time.time() < feed_back_at:
        raise FeedUnavailable("The supplier feed answered 503 Service Unavailable")
    for _ in taskstate.track(range(10)):
        pause(0.1)
    return {"prices": 10}
