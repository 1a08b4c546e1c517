"""Groups and pipelines through a separate ``rundramatiq`` process on Redis, PostgreSQL
underneath: the parent row follows its children written in another process, and what the
user's channel carries is the group's row, never a child's."""

from __future__ import annotations

import dramatiq

import taskstate
from taskstate.core.models import Status, Task
from taskstate.web.channels import user_channel
from tests.integration.test_worker_process import wait_for
from tests.testapp import tasks as actors


def _ended(pk: int, timeout: float = 60.0) -> Task:
    return wait_for(
        lambda: Task.objects.filter(pk=pk, status__in=["done", "failed"]).first(),
        timeout,
        f"group {pk} to end",
    )


def test_a_group_run_by_a_worker_process_ends_done_with_combined_counts(
    worker_process, user, capture_events
):
    capture = capture_events(user_channel(user.pk))
    batch = dramatiq.group(actors.paced.message(3, 0.05) for _ in range(30))
    tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk, "description": "30"})
    tracked.run()

    group = _ended(tracked.task.pk)
    assert group.status == Status.DONE
    assert (group.children_total, group.children_done, group.progress) == (30, 30, 100)
    children = Task.objects.filter(parent=group)
    assert set(children.values_list("status", flat=True)) == {"done"}
    assert set(children.values_list("attempts", flat=True)) == {1}
    # The page got the group's row (from the worker's refresh), never a child's.
    events = capture.events(wait=2.0)
    child_ids = {f'id="taskstate-task-{pk}"' for pk in children.values_list("pk", flat=True)}
    assert any("30 of 30 done" in data for _, _, data in events)
    assert not [data for _, _, data in events if any(i in data for i in child_ids)]
    # Throttled per group: far fewer events than the 90+ child transitions.
    assert len(events) < 45, len(events)


def test_a_pipeline_with_a_failing_middle_step_in_a_worker_process(worker_process, user):
    chain = dramatiq.pipeline(
        [
            actors.add_one.message(1, for_state={"description": "first"}),
            actors.step_fails.message(for_state={"description": "middle"}),
            actors.add_one.message(for_state={"description": "last"}),
        ]
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk}).run()

    group = _ended(tracked.task.pk)
    assert group.status == Status.FAILED
    assert group.error_message.startswith("middle failed: step refused 2")
    first, middle, last = Task.objects.filter(parent=group).order_by("position")
    assert (first.status, first.result, middle.status) == ("done", 2, "failed")
    assert last.is_not_run


def test_a_pipeline_passes_each_result_on_in_a_worker_process(worker_process, user):
    chain = dramatiq.pipeline(
        [actors.add_one.message(10)] + [actors.add_one.message() for _ in "ab"]
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk}).run()
    group = _ended(tracked.task.pk)
    assert group.status == Status.DONE
    steps = Task.objects.filter(parent=group).order_by("position")
    assert [s.result for s in steps] == [11, 12, 13]
