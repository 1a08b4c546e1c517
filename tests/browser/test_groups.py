"""Groups and pipelines in the demo, in a real browser: one row, opened live; time left."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import expect, screenshot, wait_open
from tests.browser.test_demo import (
    ROWS,
    assert_not_reloaded,
    mark_no_reload,
    row_ids,
    start,
    wait_status,
)

TIME_LEFT = re.compile(r"^(a few seconds left|about \d+ (s|min|h) left)$")


def test_a_batch_of_20_is_one_row_whose_children_follow_it_live_when_opened(new_page):
    page = new_page("demo")
    before = row_ids(page)
    row = start(page, "Batch of 20")
    mark_no_reload(page)
    # One row for the whole batch, not twenty.
    assert row_ids(page) - before == {row}
    expect(page.locator(f"#{row} .taskstate-group-counts")).to_contain_text("of 20 done")

    page.click(f"#{row} summary")
    children = page.locator(f"#{row} li.taskstate-child")
    expect(children).to_have_count(20)
    # Opened once: the list stays open and follows the group as its row is replaced.
    expect(page.locator(f"#{row} li.taskstate-child[data-status=running]").first).to_be_attached(
        timeout=40_000
    )
    screenshot(page, "group-row-open")
    # The group's own estimate (its children each have theirs too, while running).
    own_bar = "#taskstate-progress-" + row.rsplit("-", 1)[1]
    expect(page.locator(f"{own_bar} .taskstate-time-left")).to_have_text(TIME_LEFT, timeout=40_000)
    wait_status(page, row, "done")
    assert page.locator(f"#{row} details").get_attribute("open") is not None
    expect(page.locator(f"#{row} li.taskstate-child[data-status=done]")).to_have_count(
        20, timeout=20_000
    )
    expect(page.locator(f"#{row} .taskstate-group-counts")).to_contain_text("20 of 20 done")
    assert page.get_attribute(f"#{row} [role=progressbar]", "aria-valuenow") == "100"
    # Still one row, and no child row ever reached the list.
    assert len(row_ids(page) - before) == 1
    screenshot(page, "group-row-done")


def test_a_pipeline_with_a_failing_middle_step_fails_naming_it_and_skips_the_rest(new_page):
    page = new_page("demo")
    row = start(page, "Pipeline with a failing step")
    page.click(f"#{row} summary")
    steps = page.locator(f"#{row} li.taskstate-child")
    expect(steps).to_have_count(3)
    # Before it gets there, the last step waits its turn.
    expect(steps.nth(2)).to_have_attribute("data-status", "waiting")
    wait_status(page, row, "failed", timeout=60_000)
    # Failed, the row's error line (the summary of its error detail) names the step.
    error = page.locator(f"#{row} > .taskstate-error-detail > summary")
    expect(error).to_contain_text("Check them failed")
    expect(steps.nth(0)).to_have_attribute("data-status", "done", timeout=20_000)
    expect(steps.nth(1)).to_have_attribute("data-status", "failed")
    expect(steps.nth(2)).to_have_attribute("data-status", "not-run")
    expect(steps.nth(2).locator(".taskstate-badge")).to_have_text("Not run")
    screenshot(page, "pipeline-failed")


# Records every time-left text the row shows, as the page changes (a pushed bar replaces
# the element), so that none is missed between two reads of a loaded machine.
RECORD_TIME_LEFT = """rowId => {
    window.__timeLeftSeen = [];
    const record = () => {
        const text = document.querySelector(`#${rowId} .taskstate-time-left`)?.textContent;
        const seen = window.__timeLeftSeen;
        if (text && seen[seen.length - 1] !== text) seen.push(text);
    };
    record();
    new MutationObserver(record).observe(
        document.body, {childList: true, subtree: true, characterData: true});
}"""


def test_a_running_task_shows_the_time_it_has_left_and_it_never_grows_wildly(new_page: Any):
    page = new_page("demo")
    row = start(page, "Build a report")
    page.evaluate(RECORD_TIME_LEFT, row)
    wait_status(page, row, "done")
    seen: list[str] = page.evaluate("window.__timeLeftSeen")
    assert seen, "no estimate was ever shown"
    # A report of a few seconds is never said to take minutes more.
    assert all(TIME_LEFT.match(t) and "h left" not in t for t in seen), seen
    assert not [t for t in seen if re.match(r"about ([2-9]|\d\d+) min", t)], seen
    assert page.locator(f"{ROWS}#{row} .taskstate-time-left").count() == 0  # done: none


def test_cancel_stops_a_batch_s_unfinished_children_and_retry_sends_only_those(new_page):
    page = new_page("demo")
    row = start(page, "Batch of 20")
    mark_no_reload(page)
    # Cancelled once some children are done and most are not: the done keep their state.
    counts = page.locator(f"#{row} .taskstate-group-counts")
    expect(counts).to_contain_text(re.compile(r"^([1-9]|1[0-5]) of 20 done"), timeout=40_000)
    page.click(f"#{row} button:has-text('Cancel')")
    wait_status(page, row, "cancelled", timeout=30_000)
    assert page.locator(f"#{row} button:has-text('Cancel')").count() == 0
    page.click(f"#{row} summary")
    children = page.locator(f"#{row} li.taskstate-child")
    expect(children).to_have_count(20)
    child = f"#{row} li.taskstate-child"
    done = page.locator(f"{child}[data-status=done]").count()
    cancelled = page.locator(f"{child}[data-status=cancelled]").count()
    assert done >= 1 and cancelled >= 1 and done + cancelled == 20, (done, cancelled)
    screenshot(page, "group-cancelled")

    before = row_ids(page)
    page.click(f"#{row} button:has-text('Retry')")
    expect(page.locator(f"#{row}")).to_have_count(0)  # the old group is dismissed
    others = "".join(f":not(#{i})" for i in sorted(before))
    new = page.locator(f"{ROWS}{others}").filter(
        has=page.locator(".taskstate-description", has_text="Batch of 20")
    )
    expect(new).to_have_count(1, timeout=20_000)
    new_id: Any = new.get_attribute("id")
    assert new_id not in before
    # Only the cancelled children are sent again, as a new group.
    expect(page.locator(f"#{new_id} .taskstate-group-counts")).to_contain_text(
        f"of {cancelled} done"
    )
    wait_status(page, new_id, "done", timeout=60_000)
    expect(page.locator(f"#{new_id} .taskstate-group-counts")).to_contain_text(
        f"{cancelled} of {cancelled} done"
    )
    assert_not_reloaded(page)


@pytest.mark.parametrize("width", [1280, 390])
def test_an_opened_running_group_has_no_accessibility_violations(browser, demo, width):
    """Each running child's bar is named after its child, as a task's bar is."""
    from tests.browser.test_list_ui import _context, _login, axe_in_each_scheme

    context = _context(
        browser,
        reduced_motion="reduce",
        viewport={"width": width, "height": 900},
    )
    try:
        page = context.new_page()
        _login(page, demo)
        wait_open(page)
        row = start(page, "Batch of 20")
        page.click(f"#{row} summary")
        bars = page.locator(f"#{row} li.taskstate-child[data-status=running] [role=progressbar]")
        expect(bars.first).to_be_attached(timeout=40_000)
        names = page.evaluate(
            """id => [...document.querySelectorAll(
                   `#${id} li.taskstate-child[data-status=running] [role=progressbar]`)]
                 .map(bar => document.getElementById(bar.getAttribute('aria-labelledby'))
                      ?.textContent.trim() ?? null)""",
            row,
        )
        assert names and all(re.fullmatch(r"Batch item \d+ of 20", n or "") for n in names), names
        axe_in_each_scheme(page, shot=f"group-open-axe-{{}}-{width}")
        # Leave nothing running into the next test's page.
        wait_status(page, row, "done")
    finally:
        context.close()
