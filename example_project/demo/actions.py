"""The buttons of the demo page: what each one is called, says and sends."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from demo import tasks

BATCH_SIZE = 20
#: Seconds the flaky import's feed stays down: longer than Dramatiq's two retries take.
FEED_DOWN_SECONDS = 10


def _for_state(user_pk: Any, description: str, **more: Any) -> dict[str, Any]:
    return {"user_pk": user_pk, "description": description, **more}


def _build_report(user_pk: Any) -> None:
    # retryable: a cancelled report can be started again from its row.
    tasks.build_report.send(for_state=_for_state(user_pk, "Build a report", retryable=True))


def _flaky_import(user_pk: Any) -> None:
    tasks.flaky_import.send(
        time.time() + FEED_DOWN_SECONDS,
        for_state=_for_state(user_pk, "Flaky import", retryable=True),
    )


def _quick_ping(user_pk: Any) -> None:
    tasks.quick_ping.send(for_state=_for_state(user_pk, "Quick ping"))


def _batch(user_pk: Any) -> None:
    for number in range(1, BATCH_SIZE + 1):
        description = f"Batch item {number} of {BATCH_SIZE}"
        tasks.batch_item.send(random.randint(10, 30), for_state=_for_state(user_pk, description))


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
            f"Its feed is down for {FEED_DOWN_SECONDS} seconds: retried twice with a short "
            "back-off, then failed. Retry from its row once the feed is back.",
            _flaky_import,
        ),
        DemoAction("ping", "Quick ping", "Done in well under a second.", _quick_ping),
        DemoAction(
            "batch",
            f"Batch of {BATCH_SIZE}",
            f"{BATCH_SIZE} short tasks at once, each counting its items with track().",
            _batch,
        ),
    )
}
