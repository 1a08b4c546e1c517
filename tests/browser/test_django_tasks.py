"""Django's ``@task`` functions in a real browser (Django >= 6): the demo enqueues them
from a view inside ``owned_by()``; their rows go live with progress, Cancel and Retry."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.browser.conftest import DEMO_FEED_DOWN_SECONDS, expect, screenshot, wait_open
from tests.browser.test_demo import assert_not_reloaded, mark_no_reload, start, wait_status

pytestmark = pytest.mark.django6

COUNT_PAGES = "Count pages (django.tasks)"
IMPORT_PRICES = "Import prices (django.tasks)"
PROGRESS_MOVING = re.compile(r"^[1-9][0-9]?$")


def test_a_task_from_a_view_goes_live_with_progress_and_cancel_stops_it(new_page, demo):
    page = new_page("demo")
    # A second tab, already open: the row reaches it through its stream alone.
    watcher = page.context.new_page()
    watcher.goto(f"{demo}/")
    wait_open(watcher)
    mark_no_reload(watcher)

    row = start(page, COUNT_PAGES)
    mark_no_reload(page)
    expect(watcher.locator(f"#{row}")).to_have_count(1)
    for tab in (page, watcher):
        expect(tab.locator(f"#{row} [role=progressbar]")).to_have_attribute(
            "aria-valuenow", PROGRESS_MOVING, timeout=40_000
        )
    screenshot(page, "django-task-running")

    page.click(f"#{row} button:has-text('Cancel')")

    for tab in (page, watcher):
        wait_status(tab, row, "cancelled", timeout=20_000)
        assert tab.text_content(f"#{row} .taskstate-badge").strip() == "Cancelled"
        assert int(tab.get_attribute(f"#{row} [role=progressbar]", "aria-valuenow") or 0) < 100
        expect(tab.locator(f"#{row} button:has-text('Cancel')")).to_have_count(0)
        # Every @task message is kept for a retry: the cancelled row offers Retry.
        expect(tab.locator(f"#{row} button:has-text('Retry')")).to_have_count(1)
        assert_not_reloaded(tab)
    screenshot(page, "django-task-cancelled")


def _retry(page: Any, row: str) -> str:
    """Click the row's Retry; return the id of the row the retry made."""
    page.click(f"#{row} button:has-text('Retry')")
    expect(page.locator(f"#{row}")).to_have_count(0)  # the retried row is dismissed
    new = page.locator("li.taskstate-task").filter(
        has=page.locator(".taskstate-description", has_text=IMPORT_PRICES)
    )
    expect(new).to_have_count(1, timeout=20_000)
    new_id: str = new.get_attribute("id") or ""
    assert new_id and new_id != row
    return new_id


def test_a_failed_task_offers_retry_and_the_retry_runs(new_page):
    page = new_page("demo")
    clicked = time.monotonic()
    row = start(page, IMPORT_PRICES)
    mark_no_reload(page)
    # No Dramatiq retries for a @task (MAX_RETRIES 0): it fails on its first attempt.
    wait_status(page, row, "failed")
    assert page.text_content(f"#{row} .taskstate-badge").strip() == "Failed"
    page.click(f"#{row} .taskstate-error-detail summary")
    # Opened: the whole message once, then its type.
    expect(page.locator(f"#{row} .taskstate-error-message")).to_have_text(
        "demo.tasks.FeedUnavailable"
    )
    expect(page.locator(f"#{row} .taskstate-error-summary")).to_have_text(
        "The supplier feed answered 503 Service Unavailable"
    )
    screenshot(page, "django-task-failed")

    # Retried while the feed is still down: the retry runs, and fails the same way.
    again = _retry(page, row)
    wait_status(page, again, "failed")

    # The demo's feed is down for a fixed time from the click: wait until it is back.
    page.wait_for_timeout(max(0.0, clicked + DEMO_FEED_DOWN_SECONDS + 1 - time.monotonic()) * 1000)
    last = _retry(page, again)
    wait_status(page, last, "done")
    assert page.get_attribute(f"#{last} [role=progressbar]", "aria-valuenow") == "100"
    assert_not_reloaded(page)
    screenshot(page, "django-task-retried")
