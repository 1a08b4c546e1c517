"""A page never ends on an older state than the database's, under a burst of quick tasks.

The sender's ``enqueued`` row and the worker's ``running``/``done`` rows are published by
different processes, so they can reach a page in any order: a page that kept the last row
it got could show "Queued" for a finished task. Every row carries its order key, and the page
keeps the row with the highest key (``taskstate.js``); a ``stream-reset`` makes it re-read
its rows from the database. This test plays that page against a real worker process, a
real uvicorn stream and 1,000 tasks sent as fast as the sender can.
"""

from __future__ import annotations

import re
import time

from taskstate.core.models import Task
from taskstate.core.states import Status
from tests.testapp import tasks as actors

ROW = re.compile(
    r'<li id="taskstate-task-(\d+)"[^>]*data-status="(\w+)"[^>]*data-taskstate-order="(\d+)"'
)
TASKS = 1_000


def test_every_page_ends_on_each_tasks_final_state(server, worker_process, streams, user):
    _, base = server
    stream = streams(f"{base}/taskstate/events/", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")

    for i in range(TASKS):
        actors.noop.send(for_state={"user_pk": user.pk, "description": f"burst {i}"})

    deadline = time.monotonic() + 240
    while Task.objects.filter(user=user).exclude(status=Status.DONE).exists():
        assert time.monotonic() < deadline, "the worker did not finish the burst"
        time.sleep(0.5)
    assert Task.objects.filter(user=user, status=Status.DONE).count() == TASKS
    pks = set(Task.objects.filter(user=user).values_list("pk", flat=True))

    finished_at = {
        pk: at.timestamp()
        for pk, at in Task.objects.filter(user=user).values_list("pk", "finished_at")
    }

    def page() -> tuple[dict[int, tuple[int, str]], dict[int, str], bool]:
        """What the page shows, frame by frame: the highest-order row of each task
        (taskstate.js's rule); on a ``stream-reset`` it re-reads the database, which by then
        holds every task finished before the reset arrived. Also the last row that merely
        arrived of each task, and whether any reset came."""
        shown: dict[int, tuple[int, str]] = {}
        arrived: dict[int, str] = {}
        reset = False
        for frame in list(stream.frames):
            if frame.event == "stream-reset":
                reset = True
                for pk, at in finished_at.items():
                    if at <= frame.at:
                        shown[pk] = (1_000_000, "done")
                continue
            for match in ROW.finditer(frame.data):
                pk, status, order = int(match[1]), match[2], int(match[3])
                arrived[pk] = status
                if pk not in shown or order >= shown[pk][0]:
                    shown[pk] = (order, status)
        return shown, arrived, reset

    deadline = time.monotonic() + 60
    while True:
        shown, arrived, any_reset = page()
        wrong = {pk for pk in pks if shown.get(pk, (0, ""))[1] != "done"}
        if not wrong or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    overtaken = sum(1 for pk in pks if arrived.get(pk) not in (None, "done"))
    print(
        f"\n{TASKS} tasks: rows whose last arrival was older than done: {overtaken}; "
        f"stream-reset received: {any_reset}"
    )
    assert not wrong, f"{len(wrong)} tasks would stay on an older state, e.g. {sorted(wrong)[:5]}"
