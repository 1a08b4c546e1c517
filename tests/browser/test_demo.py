"""The demo in a real browser: rows appear, move and finish live, per user, and recover."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.browser.conftest import INIT_SCRIPT, expect, screenshot, wait_open

ROWS = "li.taskstate-task"


def row_ids(page: Any) -> set[str]:
    return set(page.eval_on_selector_all(ROWS, "els => els.map(e => e.id)"))


def start(page: Any, label: str) -> str:
    """Click a demo button and return the id of the row it created."""
    before = row_ids(page)
    page.click(f"button:has-text('{label}')")
    page.wait_for_load_state()
    others = "".join(f":not(#{i})" for i in sorted(before))
    created = page.locator(f"{ROWS}{others}").filter(
        has=page.locator(
            ".taskstate-description", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")
        )
    )
    expect(created).to_have_count(1)
    new = [
        i
        for i in row_ids(page) - before
        if page.text_content(f"#{i} .taskstate-description").strip() == label
    ]
    assert len(new) == 1, new
    return new[0]


def status(page: Any, row_id: str) -> str | None:
    return page.get_attribute(f"#{row_id}", "data-status")


def wait_status(page: Any, row_id: str, wanted: str, timeout: float = 40_000) -> None:
    expect(page.locator(f"#{row_id}")).to_have_attribute("data-status", wanted, timeout=timeout)


def mark_no_reload(page: Any) -> None:
    page.evaluate("window.__taskstateNoReload = true")


def assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__taskstateNoReload === true"), "the page was reloaded"


# Records every value the row's progress bar shows, as the page changes (rows are
# swapped whole, so the observer watches the document, not one element).
RECORD_PROGRESS = """rowId => {
    window.__progressSeen = [];
    const record = () => {
        const value = document.querySelector(`#${rowId} [role=progressbar]`)
            ?.getAttribute('aria-valuenow');
        const seen = window.__progressSeen;
        if (value != null && (!seen.length || Number(value) !== seen[seen.length - 1])) {
            seen.push(Number(value));
        }
    };
    record();
    new MutationObserver(record).observe(
        document.body, {childList: true, subtree: true, attributes: true});
}"""


def test_report_row_moves_and_finishes_without_reload(new_page):
    page = new_page("demo")
    row = start(page, "Build a report")
    mark_no_reload(page)
    page.evaluate(RECORD_PROGRESS, row)
    bar = page.locator(f"#{row} [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=40_000)
    screenshot(page, "report-running")
    wait_status(page, row, "done")
    seen: list[int] = page.evaluate("window.__progressSeen")
    assert status(page, row) == "done"
    assert_not_reloaded(page)
    # The bar moved through several values on the way, never backwards, and ended full.
    assert len([v for v in seen if 0 < v < 100]) >= 3, seen
    assert seen == sorted(seen), seen
    assert page.get_attribute(f"#{row} [role=progressbar]", "aria-valuenow") == "100"
    assert page.is_visible(f"#{row} button:has-text('Dismiss')")
    screenshot(page, "report-done")


def test_failing_task_shows_retrying_then_failed(new_page):
    page = new_page("demo")
    row = start(page, "Flaky import")
    mark_no_reload(page)
    wait_status(page, row, "retrying")
    assert "retrying" in page.text_content(f"#{row} .taskstate-error").lower()
    wait_status(page, row, "failed")
    assert page.text_content(f"#{row} .taskstate-badge").strip() == "Failed"
    expect(page.locator(f"#{row} .taskstate-meta")).to_contain_text("failed after 3 attempts")
    # At 1280 px, Retry and Dismiss sit on the row's first line, beside its name.
    page.set_viewport_size({"width": 1280, "height": 900})
    name = page.locator(f"#{row} .taskstate-description").bounding_box()
    for label in ("Retry", "Dismiss"):
        button = page.locator(f"#{row} button:has-text('{label}')").bounding_box()
        assert button["y"] < name["y"] + name["height"], (label, button, name)
        assert button["y"] + button["height"] > name["y"], (label, button, name)
    # The error's detail opens from its summary; the traceback is for staff only.
    detail = page.locator(f"#{row} .taskstate-error-message")
    expect(detail).to_be_hidden()
    page.click(f"#{row} .taskstate-error-detail summary")
    # Opened: the whole message once, then its type.
    expect(detail).to_have_text("demo.tasks.FeedUnavailable")
    expect(page.locator(f"#{row} .taskstate-error-detail")).to_have_text(
        re.compile(r"^\W*The supplier feed answered 503 Service Unavailable\s+demo\.tasks")
    )
    expect(page.locator(f"#{row} .taskstate-traceback")).to_have_count(0)
    assert_not_reloaded(page)


def test_dismissed_row_leaves_every_tab_and_stays_gone(new_page, demo):
    page = new_page("demo")
    row = start(page, "Quick ping")
    wait_status(page, row, "done")
    other_tab = page.context.new_page()
    other_tab.goto(f"{demo}/")
    other_tab.wait_for_selector(f"#{row}")
    # The second tab's stream must be open to hear about the dismissal.
    wait_open(other_tab)
    page.click(f"#{row} button:has-text('Dismiss')")
    expect(page.locator(f"#{row}")).to_have_count(0)
    expect(other_tab.locator(f"#{row}")).to_have_count(0)
    page.reload()
    page.wait_for_selector("#taskstate-rows", state="attached")
    assert page.query_selector(f"#{row}") is None


def test_another_user_never_sees_my_task(new_page, demo):
    stranger = new_page("admin")
    mark_no_reload(stranger)
    inserted: list[str] = []
    stranger.expose_function("taskstateInserted", lambda i: inserted.append(i))
    stranger.evaluate(
        """() => new MutationObserver(ms => ms.forEach(m => m.addedNodes.forEach(
               n => n.id && window.taskstateInserted(n.id)))).observe(
               document.body, {childList: true, subtree: true})"""
    )
    mine = new_page("demo")
    row = start(mine, "Quick ping")
    wait_status(mine, row, "done")
    time.sleep(1)
    assert row not in inserted
    assert stranger.query_selector(f"#{row}") is None
    stranger.reload()
    assert stranger.query_selector(f"#{row}") is None


def test_dropped_stream_resyncs_from_the_server(new_page, demo):
    from urllib.parse import urlsplit

    from tests.support.tcp_proxy import CuttableProxy

    proxy = CuttableProxy(urlsplit(demo).port)
    try:
        # This page reaches the server through a connection the test can cut.
        page = new_page("demo", base_url=f"http://127.0.0.1:{proxy.port}")
        # A stream cut while it connects is a different case; wait until it is open.
        wait_open(page)
        mark_no_reload(page)
        proxy.cut()
        # While it is cut off, the same user starts a task elsewhere and it finishes.
        elsewhere = new_page("demo")
        row = start(elsewhere, "Quick ping")
        wait_status(elsewhere, row, "done")
        assert page.query_selector(f"#{row}") is None
        proxy.open()
        # hx-sse reconnects by itself; the list re-reads its rows from the server.
        wait_status(page, row, "done", timeout=30_000)
        assert_not_reloaded(page)
        screenshot(page, "after-reconnect")
    finally:
        proxy.close()


def test_list_works_without_javascript(new_page, demo):
    page = new_page("demo", javascript=False)
    page.click("button:has-text('Quick ping')")
    page.wait_for_url(f"{demo}/")
    deadline = time.monotonic() + 30
    row = None
    while time.monotonic() < deadline:
        done = page.query_selector_all(
            f"{ROWS}[data-status=done]:has(.taskstate-description:text-is('Quick ping'))"
        )
        if done:
            row = done[0].get_attribute("id")
            break
        time.sleep(0.5)
        page.reload()
    assert row is not None
    assert re.fullmatch(r"taskstate-task-\d+", row)
    page.click(f"#{row} button:has-text('Dismiss')")
    page.wait_for_url(f"{demo}/")
    assert page.query_selector(f"#{row}") is None


def test_failed_first_stream_connection_is_tried_again(browser, demo):
    context = browser.new_context()
    try:
        refused: list[str] = []

        def refuse_first(route: Any) -> None:
            if not refused:
                refused.append(route.request.url)
                route.abort("connectionrefused")
            else:
                route.continue_()

        context.route("**/taskstate/events/**", refuse_first)
        context.add_init_script(INIT_SCRIPT)
        page = context.new_page()
        page.goto(f"{demo}/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(f"{demo}/")
        wait_open(page, timeout=20_000)
        assert len(refused) == 1
    finally:
        context.close()


CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', e => window.__cspViolations.push(
  e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.mark.django6
def test_strict_csp_page_goes_live_without_violations(new_page, demo):
    page = new_page(None)
    page.context.add_init_script(CSP_WATCH)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{demo}/accounts/login/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(f"{demo}/")
    response = page.reload()
    header = response.headers["content-security-policy"]
    assert "unsafe-inline" not in header and "unsafe-eval" not in header, header
    nonce = re.search(r"'nonce-([^']+)'", header).group(1)
    nonces = page.eval_on_selector_all("script[src]", "els => els.map(e => e.nonce)")
    assert nonces and set(nonces) == {nonce}
    wait_open(page)
    row = start(page, "Build a report")
    wait_status(page, row, "done")
    assert page.evaluate("window.__cspViolations") == []
    assert not [line for line in console if "Content Security Policy" in line], console
