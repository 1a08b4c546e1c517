"""Owner control in a real browser: Cancel stops a report mid-way, Retry reruns an import."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import expect, screenshot
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
    row = start(page, "Flaky import")
    mark_no_reload(page)
    wait_status(page, row, "failed")
    retry = page.locator(f"#{row} button:has-text('Retry')")
    expect(retry).to_have_count(1)
    screenshot(page, "import-failed")

    before = page.eval_on_selector_all("li.taskstate-task", "els => els.map(e => e.id)")
    retry.click()

    expect(page.locator(f"#{row}")).to_have_count(0)  # the old row is dismissed
    # Its retry is a new row (the demo's feed is back for an import sent from its row);
    # failed imports of earlier tests may still be listed.
    new_id: Any = page.wait_for_function(
        """before => [...document.querySelectorAll('li.taskstate-task')].find(
             e => !before.includes(e.id)
                  && e.querySelector('.taskstate-description').textContent.trim()
                     === 'Flaky import')?.id""",
        arg=before,
        timeout=20_000,
    ).json_value()
    wait_status(page, new_id, "done")
    assert_not_reloaded(page)
