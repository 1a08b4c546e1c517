"""Bounded payloads: the list shows at most LIST_MAX_ROWS rows, events carry what is stored."""

from __future__ import annotations

import re
import time

import pytest
from django.template import Context, Template
from django.urls import reverse

from taskstate.core.models import Status, Task
from taskstate.web.channels import user_channel
from tests.testapp import tasks as actors

HTMX = {"HTTP_HX_REQUEST": "true"}


def _make_tasks(user, count: int) -> None:
    Task.objects.bulk_create(
        [
            Task(
                message_id=f"bulk-{user.pk}-{i}",
                actor_name="export",
                status=Status.DONE,
                user=user,
                description=f"export number {i} with a description of some length",
                progress=100,
                progress_message="all rows written to the file",
            )
            for i in range(count)
        ],
        batch_size=2_000,
    )


def _row_ids(body: str) -> list[str]:
    return re.findall(r'id="taskstate-task-(\d+)"', body)


@pytest.mark.django_db
def test_resync_of_20000_unseen_tasks_is_bounded_in_bytes_and_queries(client, user, count_queries):
    _make_tasks(user, 20_000)
    client.force_login(user)
    count_queries.statements = []
    response = client.get(reverse("taskstate:list"), **HTMX)
    body = response.content.decode()
    selects = count_queries.starting("SELECT")
    print(
        f"FIGURE resync of 20,000 unseen tasks: {len(response.content):,} bytes, "
        f"{len(selects)} SELECTs on taskstate_task"
    )
    assert response.status_code == 200
    assert len(_row_ids(body)) == 50
    assert "and 19950 more" in body.replace("\u00a0", " ").replace(",", "")
    assert len(response.content) < 100_000
    # The rows in one query, how many more in one count; nothing per row.
    assert len(selects) == 2, selects


@pytest.mark.django_db
def test_full_list_and_template_tag_show_at_most_list_max_rows(client, rf, user, settings):
    settings.TASKSTATE = {"LIST_MAX_ROWS": 7}
    _make_tasks(user, 10)
    client.force_login(user)
    body = client.get(reverse("taskstate:list")).content.decode()
    assert len(_row_ids(body)) == 7
    assert "and 3 more" in body
    newest = Task.objects.for_user(user).for_display()[:7]
    assert _row_ids(body) == [str(t.pk) for t in newest]

    request = rf.get("/")
    request.user = user
    html = Template("{% load taskstate %}{% taskstate_list %}").render(
        Context({"request": request, "csrf_token": "tok"})
    )
    assert len(_row_ids(html)) == 7
    assert "and 3 more" in html


@pytest.mark.django_db
def test_a_list_that_fits_says_nothing_more_and_costs_one_query(client, user, count_queries):
    _make_tasks(user, 50)
    client.force_login(user)
    count_queries.statements = []
    body = client.get(reverse("taskstate:list"), **HTMX).content.decode()
    assert len(_row_ids(body)) == 50
    assert "more" not in body
    assert len(count_queries.starting("SELECT")) == 1


@pytest.mark.django_db(transaction=True)
def test_a_5_mb_progress_message_is_pushed_as_stored(run_all, user, capture_events, settings):
    settings.TASKSTATE = {"PROGRESS_INTERVAL": 0}
    capture = capture_events(user_channel(user.pk))
    actors.RELEASE.clear()
    actors.REPORT.clear()
    message = actors.reports_huge_progress.send(5_000_000, for_state={"user_pk": user.pk})
    events: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 20
    try:
        # The report after the running row (else the writer merges them: no bar event).
        while not Task.objects.filter(message_id=message.message_id, status="running"):
            assert time.monotonic() < deadline, "never running"
            time.sleep(0.01)
        actors.REPORT.set()
        while not any('hx-swap-oob="true"' in data for _, _, data in events):
            assert time.monotonic() < deadline, "no progress event"
            events += capture.events(wait=0.1)
    finally:
        actors.REPORT.set()
        actors.RELEASE.set()
    run_all()
    stored = Task.objects.get(message_id=message.message_id).progress_message
    assert len(stored) == 255
    bar = next(data for _, _, data in events if 'hx-swap-oob="true"' in data)
    print(f"FIGURE progress event for a 5 MB progress message: {len(bar):,} characters")
    assert len(bar) < 2_000
    assert f">{stored}<" in bar
