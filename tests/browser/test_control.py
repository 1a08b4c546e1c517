"""Owner control in a real browser: Cancel stops a report mid-way, Retry reruns an import."""

from __future__ import annotations

import re
import time
from typing import Any

from tests.browser.conftest import DEMO_FEED_DOWN_SECONDS, expect, screenshot
from tests.browser.test_demo import assert_not_reloaded, mark_no_reload, start, wait_status


def test_cancel_stops_a_running_report_mid_way(new_page):
    page = new_page("demo")
    row = start(page, "Build a report")
    mark_no_reload(page)
    bar = page.locator(f"#{row} [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=40_000)

    page.click(f"#{row} button:has-text('Cancel')")

    wait_status(page, row, "cancelled", timeout=20_000)
    assert page.text_content(f"#{row} .taskstate-badge").strip() == "Cancelled"
    assert int(page.get_attribute(f"#{row} [role=progressbar]", "aria-valuenow") or 0) < 100
    assert page.locator(f"#{row} button:has-text('Cancel')").count() == 0
    # A cancelled report was sent retryable: its row offers Retry and Dismiss.
    expect(page.locator(f"#{row} button:has-text('Retry')")).to_have_count(1)
    assert_not_reloaded(page)
    screenshot(page, "report-cancelled")


def test_retry_sends_a_failed_import_again_and_it_goes_through(new_page):
    page = new_page("demo")
    clicked = time.monotonic()
    row = start(page, "Flaky import")
    mark_no_reload(page)
    wait_status(page, row, "failed")
    retry = page.locator(f"#{row} button:has-text('Retry')")
    expect(retry).to_have_count(1)
    screenshot(page, "import-failed")
    # The demo's feed is down for a fixed time from the click: wait until it is back.
    page.wait_for_timeout(max(0.0, clicked + DEMO_FEED_DOWN_SECONDS + 1 - time.monotonic()) * 1000)

    before = set(page.eval_on_selector_all("li.taskstate-task", "els => els.map(e => e.id)"))
    retry.click()

    expect(page.locator(f"#{row}")).to_have_count(0)  # the old row is dismissed
    new = page.locator("li.taskstate-task").filter(
        has=page.locator(".taskstate-description", has_text="Flaky import")
    )
    expect(new).to_have_count(1, timeout=20_000)
    new_id: Any = new.get_attribute("id")
    assert new_id not in before
    wait_status(page, new_id, "done")
    assert_not_reloaded(page)
