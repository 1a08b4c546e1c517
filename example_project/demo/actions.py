"""The buttons of the demo page: what each one is called, says and sends."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import django
import dramatiq

import taskstate
from demo import tasks

BATCH_SIZE = 20
#: Seconds the feed of the django.tasks price import stays down from its click. A
#: ``@task`` is not retried, so it fails at once; its Retry goes through after that.
FEED_DOWN_SECONDS = int(os.environ.get("DEMO_FEED_DOWN_SECONDS", "10"))


def _for_state(user_pk: Any, description: str, **more: Any) -> dict[str, Any]:
    return {"user_pk": user_pk, "description": description, **more}


def _build_report(user_pk: Any) -> None:
    # retryable: a cancelled report can be started again from its row.
    tasks.build_report.send(for_state=_for_state(user_pk, "Build a report", retryable=True))


def _flaky_import(user_pk: Any) -> None:
    tasks.flaky_import.send(for_state=_for_state(user_pk, "Flaky import", retryable=True))


def _quick_ping(user_pk: Any) -> None:
    tasks.quick_ping.send(for_state=_for_state(user_pk, "Quick ping"))


def _batch(user_pk: Any) -> None:
    # One row for the whole batch: its children show when the row is opened.
    batch = dramatiq.group(  # type: ignore[no-untyped-call]
        tasks.batch_item.message(
            random.randint(10, 30),
            for_state={"description": f"Batch item {number} of {BATCH_SIZE}"},
        )
        for number in range(1, BATCH_SIZE + 1)
    )
    description = f"Batch of {BATCH_SIZE}"
    # retryable: a cancelled batch can be sent again from its row, its unfinished part only.
    taskstate.track_group(batch, for_state=_for_state(user_pk, description, retryable=True)).run()


def _pipeline(user_pk: Any, *, fail: bool = False) -> None:
    steps = dramatiq.pipeline(
        [
            tasks.fetch_orders.message(for_state={"description": "Fetch the orders"}),
            # Steps after the first get the previous step's result as their last argument.
            tasks.check_orders.message_with_options(
                args=(fail,), kwargs={"for_state": {"description": "Check them"}}
            ),
            tasks.load_orders.message_with_options(
                kwargs={"for_state": {"description": "Load them"}}
            ),
        ]
    )
    description = "Pipeline with a failing step" if fail else "Three-step pipeline"
    taskstate.track_group(steps, for_state=_for_state(user_pk, description)).run()


@dataclass(frozen=True)
class DemoAction:
    key: str
    label: str
    explanation: str
    start: Callable[[Any], None]


ACTIONS: dict[str, DemoAction] = {
    action.key: action
    for action in (
        DemoAction(
            "report",
            "Build a report",
            "About 12 seconds in sections; the bar moves as each section is written. "
            "Cancel stops it at the next section.",
            _build_report,
        ),
        DemoAction(
            "flaky",
            "Flaky import",
            "Its supplier feed is down: retried twice with a short back-off, then failed. "
            "The feed is back by the time you press Retry in its row, and the import goes "
            "through.",
            _flaky_import,
        ),
        DemoAction("ping", "Quick ping", "Done in well under a second.", _quick_ping),
        DemoAction(
            "batch",
            f"Batch of {BATCH_SIZE}",
            f"{BATCH_SIZE} short tasks at once, tracked as one group: one row, "
            "combined progress; open it to see each task. Cancel stops the unfinished "
            "ones; Retry sends only those again.",
            _batch,
        ),
        DemoAction(
            "pipeline",
            "Three-step pipeline",
            "Fetch, check, load: each step starts when the one before it is done.",
            _pipeline,
        ),
        DemoAction(
            "pipeline-fails",
            "Pipeline with a failing step",
            "The check step fails halfway: the pipeline fails, naming it; loading never runs.",
            lambda user_pk: _pipeline(user_pk, fail=True),
        ),
    )
}


def _count_pages(user_pk: Any) -> None:
    from demo import jobs
    from taskstate.backends import owned_by

    # A django.tasks function: owned_by() gives it its row in the owner's list.
    with owned_by(user_pk, description="Count pages (django.tasks)"):
        jobs.count_pages.enqueue(15)


def _import_prices(user_pk: Any) -> None:
    from demo import jobs
    from taskstate.backends import owned_by

    with owned_by(user_pk, description="Import prices (django.tasks)"):
        jobs.import_prices.enqueue(time.time() + FEED_DOWN_SECONDS)


if django.VERSION >= (6, 0):
    ACTIONS["django-task"] = DemoAction(
        "django-task",
        "Count pages (django.tasks)",
        "A Django @task function run by Dramatiq: progress, Cancel and Retry as for the "
        "actors; its result is read with get_result().",
        _count_pages,
    )
    ACTIONS["django-task-fails"] = DemoAction(
        "django-task-fails",
        "Import prices (django.tasks)",
        f"A @task whose feed is down for {FEED_DOWN_SECONDS} seconds: it fails at once "
        "(the backend does not retry a @task); Retry from its row once the feed is back.",
        _import_prices,
    )
