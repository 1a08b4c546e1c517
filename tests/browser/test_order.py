"""The page never goes backwards: a row or bar older than the one shown is refused."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import wait_open
from tests.browser.test_demo import start, wait_status

# The same path as a message of the task stream: htmx.swap with the stream element as
# source (hx-sse hands each unnamed message to htmx.swap the same way).
INJECT = """async ([html]) => {
  const stream = document.querySelector('[data-taskstate-stream]');
  await htmx.swap({sourceElement: stream, target: stream, swap: 'none swapEmpty:false',
                   text: html});
}"""


def older_copy(page: Any, row_id: str, order: int, status: str, percent: int) -> str:
    """The row ``row_id`` as an earlier state would have rendered it, plus its bar."""
    return page.evaluate(
        """([id, order, status, percent]) => {
          const row = document.getElementById(id).cloneNode(true);
          row.dataset.status = status;
          row.dataset.taskstateOrder = String(order);
          row.className = 'taskstate-task taskstate-status-' + status;
          row.querySelector('.taskstate-badge').textContent = 'OLD ' + status;
          const bar = row.querySelector('.taskstate-progress');
          bar.dataset.taskstateOrder = String(order);
          bar.querySelector('progress').setAttribute('aria-valuenow', String(percent));
          const oob = bar.cloneNode(true);
          oob.setAttribute('hx-swap-oob', 'true');
          return '<hx-upsert hx-target="#taskstate-rows" sort="desc">' + row.outerHTML
                 + '</hx-upsert>' + oob.outerHTML;
        }""",
        [row_id, order, status, percent],
    )


def test_an_older_row_or_bar_arriving_after_the_final_one_leaves_the_row_final(new_page):
    page = new_page("demo")
    wait_open(page)
    row = start(page, "Quick ping")
    wait_status(page, row, "done")
    final = page.get_attribute(f"#{row}", "data-taskstate-order")
    assert final is not None and int(final) > 15

    # Out of order: the sender's "enqueued" and a "running" row with a bar at 40 %.
    for order, status in ((1, "enqueued"), (15, "running")):
        page.evaluate(INJECT, [older_copy(page, row, order, status, 40)])
    # A newer state still lands (the control: the same path does swap).
    newer = older_copy(page, row, int(final) + 1, "done", 100).replace("OLD done", "NEWER")

    assert page.get_attribute(f"#{row}", "data-status") == "done"
    assert page.get_attribute(f"#{row}", "data-taskstate-order") == final
    assert "OLD" not in page.text_content(f"#{row}")
    assert page.get_attribute(f"#{row} progress", "aria-valuenow") == "100"
    page.evaluate(INJECT, [newer])
    assert "NEWER" in page.text_content(f"#{row} .taskstate-badge")


# The list's resync: its response replaces the rows (hx-get on #taskstate-rows, innerHTML).
RESYNC = """async ([html]) => {
  const rows = document.getElementById('taskstate-rows');
  await htmx.swap({sourceElement: rows, target: rows, swap: 'innerHTML', text: html});
}"""


# The live stream closed: replaced, through htmx (which closes the connection of an
# element it swaps out), by an element of the same kind that connects nowhere, for INJECT
# to use. Resolves true once hx-sse reports the connection closed.
DETACH = """() => new Promise(resolve => {
  const stream = document.querySelector('[data-taskstate-stream]');
  stream.addEventListener('htmx:sse:close', () => resolve(true), {once: true});
  setTimeout(() => resolve(false), 10000);
  const inert = stream.cloneNode(false);
  inert.removeAttribute('hx-sse:connect');
  htmx.swap({target: stream, swap: 'outerHTML', text: inert.outerHTML});
})"""


def detach_stream(page: Any) -> None:
    """Close the page's task stream, then wait until no request of the page is open: no
    event and no resync can reach the list afterwards."""
    assert page.evaluate(DETACH), "the task stream did not close"
    page.wait_for_load_state("networkidle")


def test_a_resync_read_before_a_dismissal_does_not_bring_the_row_back(new_page):
    """The list re-reads its rows when its stream opens. If another tab dismisses a row
    while that read is on its way, the removal event arrives first and the response, read
    before the dismissal, would put the row back (seen once in CI: a second tab kept a
    dismissed row)."""
    page = new_page("demo")
    wait_open(page)
    row = start(page, "Quick ping")
    wait_status(page, row, "done")
    as_read = page.evaluate("id => document.getElementById(id).outerHTML", row)
    other = as_read.replace(f'id="{row}"', 'id="taskstate-task-999999"')
    # The test plays the stream and the resync itself: a real resync landing in between
    # (a stream-reset, a reconnection) would replace the rows it injects.
    detach_stream(page)

    # The other tab's dismissal, as the stream delivers it.
    page.evaluate(INJECT, [f'<hx-partial hx-target="#{row}" hx-swap="delete"></hx-partial>'])
    expect(page.locator(f"#{row}")).to_have_count(0)
    # Then the resync's response, read before the dismissal; another row in it lands.
    page.evaluate(RESYNC, [as_read + other])
    expect(page.locator("#taskstate-task-999999")).to_have_count(1)
    assert page.locator(f"#{row}").count() == 0


# Makes the shown row a running attempt (order key 15) whose bar, written at ``updated``,
# shows ``percent``, as the page has it after a progress event.
SHOW_RUNNING = """([id, updated, percent]) => {
  const row = document.getElementById(id);
  row.dataset.taskstateOrder = '15';
  const bar = row.querySelector('.taskstate-progress');
  bar.dataset.taskstateOrder = '15';
  bar.dataset.taskstateUpdated = String(updated);
  row.dataset.status = 'running';
  row.querySelector('progress').setAttribute('aria-valuenow', String(percent));
}"""


def running_copy(page: Any, row_id: str, updated: int, percent: int) -> str:
    """The row ``row_id`` as a read of the database at ``updated`` renders it: running
    (order key 15), its bar at ``percent``."""
    return page.evaluate(
        """([id, updated, percent]) => {
          const row = document.getElementById(id).cloneNode(true);
          row.dataset.taskstateOrder = '15';
          const bar = row.querySelector('.taskstate-progress');
          bar.dataset.taskstateOrder = '15';
          bar.dataset.taskstateUpdated = String(updated);
          row.querySelector('progress').setAttribute('aria-valuenow', String(percent));
          return row.outerHTML;
        }""",
        [row_id, updated, percent],
    )


def test_a_resync_read_before_a_progress_event_does_not_move_the_bar_back(new_page):
    """Every progress report of an attempt shares its order key. The stream-open resync,
    read before a progress write and answered after its event, carries the same key and an
    older bar: the bar keeps the newer value (a task's bar also carries when its row was
    written); the row itself, at the same key, lands."""
    page = new_page("demo")
    wait_open(page)
    row = start(page, "Quick ping")
    wait_status(page, row, "done")
    detach_stream(page)
    written = 1_800_000_000_000_000  # microseconds since the epoch
    page.evaluate(SHOW_RUNNING, [row, written, 60])

    page.evaluate(RESYNC, [running_copy(page, row, written - 1, 8).replace("Quick ping", "READ")])
    assert page.get_attribute(f"#{row} progress", "aria-valuenow") == "60"
    assert "READ" in page.text_content(f"#{row}")
    # A later write of the same attempt lands (the control: the same path does swap).
    page.evaluate(RESYNC, [running_copy(page, row, written + 1, 70)])
    assert page.get_attribute(f"#{row} progress", "aria-valuenow") == "70"
