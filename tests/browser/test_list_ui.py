"""The list people use: accessible (axe, both colour schemes), honest about its connection,
in the user's language, notifying when a task ends in a hidden tab, usable on a phone."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.browser.conftest import INIT_SCRIPT, docs_screenshot, expect, screenshot, wait_open
from tests.browser.test_demo import assert_not_reloaded, mark_no_reload, start, wait_status

# axe-core rules: WCAG 2.0/2.1/2.2 A and AA, and axe's best practices.
AXE_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}


SCHEMES = ("light", "dark")


def axe_in_each_scheme(page: Any, shot: str | None = None, docs: str | None = None) -> None:
    """axe-core finds no violation with the page in the light and in the dark scheme,
    switched in place as the browser's own setting switches it; ``shot`` and ``docs``
    name a screenshot of each (``<name>-<scheme>...``, the scheme put where ``{}`` is)."""
    from axe_playwright_python.sync_playwright import Axe

    for scheme in SCHEMES:
        page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
        results = Axe().run(page, options=AXE_OPTIONS)
        assert results.violations_count == 0, (scheme, results.generate_report())
        if shot:
            screenshot(page, shot.format(scheme))
        if docs:
            docs_screenshot(page, docs.format(scheme))


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _context(browser: Any, **options: Any) -> Any:
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
    context.add_init_script(INIT_SCRIPT)
    return context


@pytest.mark.parametrize("width", [1280, 390])
def test_the_demo_has_no_accessibility_violations(browser, demo, width):
    phone = {"is_mobile": True, "has_touch": True} if width < 600 else {}
    context = _context(
        browser,
        reduced_motion="reduce",
        viewport={"width": width, "height": 900},
        **phone,
    )
    try:
        page = context.new_page()
        _login(page, demo)
        wait_open(page)
        # Only this test's rows (earlier tests leave theirs): the page the docs show.
        dismiss_all = page.locator("button:has-text('Dismiss finished')")
        if dismiss_all.is_visible():
            dismiss_all.click()
            expect(page.locator("li.taskstate-task.taskstate-complete")).to_have_count(0)
        done = start(page, "Quick ping")
        running = start(page, "Build a report")
        # A failed group: its error summary sits right under the toggle of its steps.
        pipeline = start(page, "Pipeline with a failing step")
        # Failing, retried a few seconds, then failed: axe sees it in one of those states
        # first, failed at the end (tests/browser/test_demo.py follows it through them).
        failing = start(page, "Flaky import")
        # The report, while it runs (a few seconds): the ended ones keep their state.
        expect(page.locator(f"#{running} [role=progressbar]")).to_have_attribute(
            "aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=40_000
        )
        # Each bar is named after its task.
        name = page.evaluate(
            """id => { const bar = document.querySelector(`#${id} [role=progressbar]`);
                       return document.getElementById(bar.getAttribute('aria-labelledby'))
                              .textContent.trim(); }""",
            running,
        )
        assert name == "Build a report"
        wait_status(page, done, "done")
        wait_status(page, pipeline, "failed")
        axe_in_each_scheme(page)
        wait_status(page, failing, "failed")
        page.click(f"#{pipeline} .taskstate-children-toggle")
        expect(page.locator(f"#{pipeline} li.taskstate-child")).to_have_count(3)
        page.click(f"#{failing} summary")
        page.keyboard.press("Tab")  # a visible focus ring in the list, checked by axe too
        axe_in_each_scheme(page, shot=f"axe-{{}}-{width}")
        # The docs' screenshot: the same rows without the focus ring, checked again.
        page.mouse.move(0, 0)
        page.evaluate("document.activeElement?.blur()")
        axe_in_each_scheme(page, docs=f"list-demo-{{}}-{width}")
        # Leave no task running: it would end during the next test, on that test's page.
        wait_status(page, running, "done")
    finally:
        context.close()


def test_keyboard_focus_is_visible_and_follows_the_rows(new_page):
    page = new_page("demo")
    row = start(page, "Quick ping")
    wait_status(page, row, "done")
    dismiss = page.locator(f"#{row} button:has-text('Dismiss')")
    # The row may still be swapped for a later copy of itself (a resync, a late event):
    # a button swapped out has lost focus and has no style. Focus the one in the page.
    deadline = time.monotonic() + 10
    while True:
        dismiss.focus()
        outline = dismiss.evaluate(
            "el => el.isConnected && document.activeElement === el"
            " ? getComputedStyle(el).outlineStyle + ' ' + getComputedStyle(el).outlineWidth"
            " : ''"
        )
        if outline or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert outline.startswith("solid") and not outline.endswith(" 0px"), outline
    # Tab order is the order of the page: from "Dismiss finished" into the rows, top down.
    # A swap between the focus and the key press loses the focus too: then try again.
    deadline = time.monotonic() + 10
    while True:
        page.focus("button:has-text('Dismiss finished')")
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.closest('li.taskstate-task')?.id")
        first_with_button = page.evaluate(
            "document.querySelector('li.taskstate-task:has(button, a[href], summary)').id"
        )
        if focused == first_with_button or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert focused == first_with_button


FOCUS_STATE = """row => {
    const active = document.activeElement;
    return {
        status: document.getElementById(row)?.dataset.status ?? null,
        row: active.closest('li.taskstate-task')?.id ?? null,
        form: active.closest('form')?.className ?? null,
        description: active.matches('.taskstate-description'),
    };
}"""
FOCUS_CANCEL = """row => {
    const button = document.querySelector('#' + row + ' form.taskstate-cancel button');
    if (button) button.focus();
    return Boolean(button) && document.activeElement === button;
}"""


def test_a_row_swapped_for_its_next_state_keeps_the_keyboard_focus(new_page):
    page = new_page("demo")
    row = start(page, "Flaky import")  # running, retrying, running, ... failed: swaps
    deadline = time.monotonic() + 30
    while not page.evaluate(FOCUS_CANCEL, row):
        assert time.monotonic() < deadline, "no row of the import showed its Cancel button"
        if page.evaluate(FOCUS_STATE, row)["status"] == "failed":
            row = start(page, "Flaky import")  # it moved on too fast: once more
        time.sleep(0.02)
    status = page.evaluate(FOCUS_STATE, row)["status"]
    # Each later state arrives as a new copy of the row: the focus moves into it, on
    # Cancel while the row has one, else on its description, never on another action.
    expect(page.locator(f"#{row}")).not_to_have_attribute("data-status", status, timeout=40_000)
    now = page.evaluate(FOCUS_STATE, row)
    assert now["row"] == row, now
    if now["status"] in ("running", "retrying"):
        assert now["form"] == "taskstate-cancel", now
    wait_status(page, row, "failed")
    screenshot(page, "focus-after-row-swap")
    now = page.evaluate(FOCUS_STATE, row)
    assert now["row"] == row and now["description"], now  # not on Retry or Dismiss


RECORD_NOTIFICATIONS = """
window.__notifications = [];
const Real = window.Notification;
function Recording(title, options) {
  window.__notifications.push([title, (options || {}).body || '', (options || {}).tag || '']);
  return new Real(title, options);
}
Object.defineProperty(Recording, 'permission', {get: () => Real.permission});
window.__permissionRequests = 0;
Recording.requestPermission = (...args) => {
  window.__permissionRequests += 1;
  return Real.requestPermission(...args);
};
window.Notification = Recording;
let hidden = false;
Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
Object.defineProperty(document, 'visibilityState', {
  configurable: true, get: () => (hidden ? 'hidden' : 'visible')});
window.__setHidden = value => { hidden = value; document.dispatchEvent(new Event('visibilitychange')); };
"""


def test_a_task_ending_in_a_hidden_tab_notifies_and_counts_in_the_title(browser, demo):
    context = _context(browser, permissions=["notifications"])
    context.add_init_script(RECORD_NOTIFICATIONS)
    try:
        page = context.new_page()
        _login(page, demo)
        # The demo user's tasks from earlier tests would end, and be announced, here too.
        active = page.locator("li.taskstate-task:not(.taskstate-complete)")
        expect(active).to_have_count(0, timeout=40_000)
        # No prompt on page load: the user opts in with the list's button.
        button = page.locator("[data-taskstate-notify-button]")
        expect(button).to_be_visible()
        expect(button).to_have_attribute("aria-pressed", "false")
        assert page.evaluate("window.__permissionRequests") == 0
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")
        assert page.evaluate("window.__permissionRequests") == 1
        # A group notifies as one task: its children, shown live, never on their own.
        batch = start(page, "Batch of 20")
        # Started last, so it is still running when the tab is hidden (about 6 s), however
        # loaded the machine; its start reloads the page.
        row = start(page, "Build a report")
        page.click(f"#{batch} summary")
        expect(page.locator(f"#{batch} li.taskstate-child")).to_have_count(20)
        wait_open(page)
        mark_no_reload(page)
        title = page.title()
        # The group may end before the tab is hidden on a quick machine: then it notifies not.
        batch_ran_on = page.locator(f"#{batch}.taskstate-complete").count() == 0
        page.evaluate("window.__setHidden(true)")
        wait_status(page, batch, "done")
        wait_status(page, row, "done")
        expect(page).to_have_title(re.compile(r"^\(\d+\) " + re.escape(title) + "$"))
        page.wait_for_function(
            "id => window.__notifications.some(n => n[2] === id)", arg=row, timeout=10_000
        )
        notes = page.evaluate("window.__notifications")
        # One notification per task that ended while hidden (others of the user's may end too).
        assert [n[:2] for n in notes if n[2] == row] == [["Build a report", "Done"]], notes
        expected = [["Batch of 20", "Done"]] if batch_ran_on else []
        assert [n[:2] for n in notes if n[2] == batch] == expected, notes
        assert not [n for n in notes if n[0].startswith("Batch item")], notes
        # Announced once in the live region.
        announced = page.locator("[data-taskstate-announcer]").text_content()
        assert announced.count("Build a report: Done") == 1
        page.evaluate("window.__setHidden(false)")
        expect(page).to_have_title(title)
        assert_not_reloaded(page)
    finally:
        context.close()


def test_a_dropped_stream_says_reconnecting_until_the_resync(new_page, demo):
    from urllib.parse import urlsplit

    from tests.support.tcp_proxy import CuttableProxy

    proxy = CuttableProxy(urlsplit(demo).port)
    try:
        page = new_page("demo", base_url=f"http://127.0.0.1:{proxy.port}")
        wait_open(page)
        mark_no_reload(page)
        indicator = page.locator("[data-taskstate-connection]")
        expect(indicator).to_have_text("")
        proxy.cut()
        expect(indicator).to_have_text("Reconnecting…")
        expect(page.locator("#taskstate-rows")).to_have_attribute("data-taskstate-stale", "")
        screenshot(page, "reconnecting")
        proxy.open()
        expect(indicator).to_have_text("", timeout=30_000)
        expect(page.locator("#taskstate-rows")).not_to_have_attribute("data-taskstate-stale", "")
        assert_not_reloaded(page)
    finally:
        proxy.close()


def test_rows_pushed_over_the_stream_read_in_the_users_language(browser, demo):
    context = _context(browser, locale="fr-FR")
    try:
        page = context.new_page()
        _login(page, demo)
        expect(page.locator("#taskstate-heading")).to_have_text("Vos tâches")
        wait_open(page)
        row = start(page, "Build a report")
        mark_no_reload(page)
        # Running, then done: both rows came over the stream, rendered by the worker.
        wait_status(page, row, "running")
        expect(page.locator(f"#{row} .taskstate-status-text")).to_have_text("En cours")
        wait_status(page, row, "done")
        expect(page.locator(f"#{row} .taskstate-status-text")).to_have_text("Terminée")
        expect(page.locator(f"#{row} .taskstate-meta")).to_contain_text("a duré")
        link = page.locator(f"#{row} a.taskstate-open")
        expect(link).to_have_text("Ouvrir")
        assert re.fullmatch(r"/reports/\d+\.csv", link.get_attribute("href"))
        expect(page.locator(f"#{row} button.taskstate-button")).to_have_text("Masquer")
        assert_not_reloaded(page)
    finally:
        context.close()


def test_on_a_phone_a_started_task_is_in_sight_and_the_top_bar_is_one_line(browser, demo):
    context = _context(
        browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        page = context.new_page()
        _login(page, demo)
        row = start(page, "Build a report")
        # Whole, on screen (retried: a pushed update replaces the row's element meanwhile).
        expect(page.locator(f"#{row}")).to_be_in_viewport(ratio=1)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        heights = page.evaluate(
            """() => ['.demo-brand', '.demo-user', '.demo-logout'].map(
                 s => document.querySelector(s).getBoundingClientRect().height)"""
        )
        line = page.evaluate("parseFloat(getComputedStyle(document.body).lineHeight)")
        assert all(h <= line * 1.5 for h in heights), (heights, line)
        screenshot(page, "mobile")
    finally:
        context.close()


def test_a_finished_row_is_one_line_and_times_read_in_the_browsers_zone(browser, demo):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    # A zone half an hour off UTC, so that the server's zone cannot pass for it.
    zone = "Asia/Kolkata"
    context = _context(browser, timezone_id=zone, locale="en-US", reduced_motion="reduce")
    try:
        page = context.new_page()
        _login(page, demo)
        wait_open(page)
        done = start(page, "Quick ping")
        wait_status(page, done, "done")
        # One line: the bar hidden, and status, description, time and Dismiss side by side.
        expect(page.locator(f"#{done} .taskstate-progress")).to_be_hidden()
        expect(page.locator(f"#{done} .taskstate-meta")).to_contain_text("took under 1 s")
        # Measured in one go from one element: a pushed update can replace the row between
        # two reads, and the replaced element measures as nothing.
        tops, height, line = page.wait_for_function(
            """id => {
                 const row = document.getElementById(id);
                 if (!row) return null;
                 const tops = [...row.querySelectorAll(".taskstate-task-head > *")]
                   .map(e => e.getBoundingClientRect())
                   .map(r => [Math.round(r.top), Math.round(r.bottom)]);
                 const line = parseFloat(getComputedStyle(document.body).lineHeight);
                 return [tops, row.getBoundingClientRect().height, line];
               }""",
            arg=done,
        ).json_value()
        assert len(tops) == 4, tops
        assert max(t for t, _ in tops) < min(b for _, b in tops), tops
        assert height < 2 * line, (height, line)
        # The time: relative in the text, the date and time in the browser's zone on hover.
        time = page.locator(f"#{done} time[datetime]")
        expect(time).to_have_attribute("title", re.compile(r"GMT\+5:30"))
        # Both attributes read in one go from the same element: a pushed update can replace
        # the row between two reads, and the new element gets its title a moment later.
        stamp, title = page.wait_for_function(
            """id => {
                 const t = document.querySelector(`#${id} time[datetime]`);
                 return t && t.title ? [t.getAttribute("datetime"), t.title] : null;
               }""",
            arg=done,
        ).json_value()
        when = datetime.fromisoformat(stamp).astimezone(ZoneInfo(zone))
        assert f"{when:%I:%M:%S}".lstrip("0") in title, (stamp, title)
        expect(time).to_have_text(re.compile(r"^(now|\d+ seconds? ago)$"))
        # A running row's pulse stops for people who ask for reduced motion.
        running = start(page, "Build a report")
        wait_status(page, running, "running")
        # Retrying assertions: progress replaces the row, and a style read from the row
        # being replaced comes back empty (seen once in CI).
        icon = page.locator(f"#{running} .taskstate-icon")
        expect(icon).to_have_css("animation-name", "none")
        page.emulate_media(reduced_motion="no-preference")
        expect(icon).to_have_css("animation-name", "taskstate-pulse")
        # Leave no task running: it would end during the next test, on that test's page.
        wait_status(page, running, "done")
    finally:
        context.close()
