"""The example page without htmx: a plain script on the JSON endpoints, live in Chromium."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import expect, screenshot

ROWS = "#json-rows > li"

# Records every status each row showed, in order (rows are replaced whole on each event).
RECORD_STATUSES = """() => {
    window.__statuses = {};
    const record = () => document.querySelectorAll('#json-rows > li').forEach(row => {
        const seen = (window.__statuses[row.id] ??= []);
        if (seen[seen.length - 1] !== row.dataset.status) seen.push(row.dataset.status);
    });
    new MutationObserver(record).observe(
        document.getElementById('json-rows'), {childList: true, subtree: true, attributes: true});
}"""


def open_json_page(new_page: Any, demo: str, username: str = "demo") -> Any:
    page = new_page(username)
    page.goto(f"{demo}/json/")
    # The stream opened and the list was read from the server.
    expect(page.locator("#json-tasks")).to_have_attribute("data-live", "true")
    return page


def start(page: Any, label: str) -> str:
    """Press a start button; the id of the row that arrives for it."""
    before = set(page.eval_on_selector_all(ROWS, "rows => rows.map(r => r.id)"))
    page.click(f"button:has-text('{label}')")
    others = "".join(f":not(#{i})" for i in sorted(before))
    row = page.locator(f"{ROWS}{others}").filter(
        has=page.locator(".taskstate-description", has_text=re.compile(rf"^{re.escape(label)}$"))
    )
    expect(row).to_have_count(1)
    return str(row.get_attribute("id"))


def wait_status(page: Any, row: str, status: str) -> None:
    expect(page.locator(f"#{row}")).to_have_attribute("data-status", status, timeout=40_000)


def test_a_task_goes_from_queued_to_done_live_without_htmx(new_page, demo):
    page = open_json_page(new_page, demo)
    assert page.evaluate("typeof window.htmx") == "undefined"
    page.evaluate(RECORD_STATUSES)
    row = start(page, "Build a report")
    bar = page.locator(f"#{row} [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=40_000)
    screenshot(page, "json-page-running")
    wait_status(page, row, "done")
    statuses = page.evaluate("id => window.__statuses[id]", row)
    # A worker quick to start it may have it running before the page first shows it.
    assert statuses in (["enqueued", "running", "done"], ["running", "done"]), statuses
    expect(page.locator(f"#{row} a:has-text('Open')")).to_have_attribute(
        "href", re.compile(r"^/reports/\d+\.csv$")
    )
    screenshot(page, "json-page-done")
    # Dismissed here, the row leaves this page and the user's other pages.
    other_tab = open_json_page(new_page, demo)
    expect(other_tab.locator(f"#{row}")).to_be_visible()
    page.click(f"#{row} button:has-text('Dismiss')")
    expect(page.locator(f"#{row}")).to_have_count(0)
    expect(other_tab.locator(f"#{row}")).to_have_count(0)


def test_cancel_and_retry_from_the_json_page(new_page, demo):
    page = open_json_page(new_page, demo)
    report = start(page, "Build a report")
    wait_status(page, report, "running")
    page.click(f"#{report} button:has-text('Cancel')")
    wait_status(page, report, "cancelled")
    expect(page.locator(f"#{report} button:has-text('Cancel')")).to_have_count(0)
    flaky = start(page, "Flaky import")
    wait_status(page, flaky, "failed")
    expect(page.locator(f"#{flaky} .taskstate-error")).to_contain_text("503")
    before = set(page.eval_on_selector_all(ROWS, "rows => rows.map(r => r.id)"))
    page.click(f"#{flaky} button:has-text('Retry')")
    expect(page.locator(f"#{flaky}")).to_have_count(0)
    others = "".join(f":not(#{i})" for i in sorted(before))
    retried = page.locator(f"{ROWS}{others}").filter(has_text="Flaky import")
    expect(retried).to_have_count(1)
    expect(retried).to_have_attribute("data-status", "done", timeout=40_000)


def test_another_users_task_never_reaches_my_json_page(new_page, demo):
    mine = open_json_page(new_page, demo, "demo")
    theirs = open_json_page(new_page, demo, "admin")
    their_row = start(theirs, "Quick ping")
    wait_status(theirs, their_row, "done")
    my_row = start(mine, "Quick ping")
    wait_status(mine, my_row, "done")
    assert mine.locator(f"#{their_row}").count() == 0
    assert theirs.locator(f"#{my_row}").count() == 0


def test_the_json_page_has_no_accessibility_violations(browser, demo):
    from tests.browser.test_list_ui import axe_in_each_scheme

    context = browser.new_context(viewport={"width": 1280, "height": 900}, reduced_motion="reduce")
    try:
        page = context.new_page()
        page.goto(f"{demo}/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(f"{demo}/")
        page.goto(f"{demo}/json/")
        expect(page.locator("#json-tasks")).to_have_attribute("data-live", "true")
        done = start(page, "Quick ping")
        running = start(page, "Build a report")
        # Failing, retried a few seconds, then failed: axe sees it in one of those states
        # (its brief retrying one is for tests/browser/test_demo.py to follow).
        failing = start(page, "Flaky import")
        wait_status(page, done, "done")
        expect(page.locator(f"#{running} [role=progressbar]")).to_have_attribute(
            "aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=40_000
        )
        axe_in_each_scheme(page, shot="json-page-axe-{}")
        wait_status(page, running, "done")  # leave nothing running for the next test
        wait_status(page, failing, "failed")
    finally:
        context.close()


def test_a_dropped_json_stream_resyncs_from_the_server(new_page, demo):
    from urllib.parse import urlsplit

    from tests.support.tcp_proxy import CuttableProxy

    proxy = CuttableProxy(urlsplit(demo).port)
    try:
        # This page reaches the server through a connection the test can cut.
        via_proxy = f"http://127.0.0.1:{proxy.port}"
        page = open_json_page(lambda user: new_page(user, base_url=via_proxy), via_proxy)
        dismissed = start(page, "Quick ping")
        wait_status(page, dismissed, "done")
        page.evaluate("window.__notReloaded = true")
        proxy.cut()
        expect(page.locator("[data-json-connection]")).to_have_text("Reconnecting…")
        # While it is cut off, the same user finishes a task and dismisses another
        # elsewhere: both events are lost to this page.
        elsewhere = open_json_page(new_page, demo)
        row = start(elsewhere, "Quick ping")
        wait_status(elsewhere, row, "done")
        elsewhere.click(f"#{dismissed} button:has-text('Dismiss')")
        expect(elsewhere.locator(f"#{dismissed}")).to_have_count(0)
        assert page.locator(f"#{row}").count() == 0
        proxy.open()
        # EventSource reconnects by itself; on stream-open the page reads the list.
        wait_status(page, row, "done")
        expect(page.locator(f"#{dismissed}")).to_have_count(0)
        expect(page.locator("[data-json-connection]")).to_have_text("")
        assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"
    finally:
        proxy.close()
