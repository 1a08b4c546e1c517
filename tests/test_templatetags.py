"""The row's words and links: durations, result links, error details, tracebacks."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.template.loader import render_to_string

from taskstate.core.models import Status
from taskstate.core.states import Kind
from taskstate.templatetags.taskstate import taskstate_duration, taskstate_result_url
from taskstate.web.publish import render_row
from tests.support.factories import ago, make_task

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "under 1 s"), (0.4, "under 1 s"), (1, "1 s"), (65, "1 min 5 s"), (3_720, "1 h 2 min")],
)
def test_duration_reads_short_and_says_under_1_s_for_fast_tasks(seconds, text):
    assert taskstate_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    "url",
    ["/reports/12.csv", "reports/12.csv", "https://example.com/r?id=1", "http://example.com/"],
)
def test_a_done_result_with_a_web_url_gets_an_open_link(url):
    task = make_task(result={"url": url}, started_at=ago(3), finished_at=ago(1))
    assert taskstate_result_url(task) == url
    row = render_to_string("taskstate/_task_row.html", {"task": task})
    assert 'class="taskstate-button taskstate-open"' in row and ">Open</a>" in row


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:x",
        "//evil.example/x",
        "\\\\evil.example\\x",
        "https:/x",
        "",
        42,
    ],
)
def test_a_result_url_a_browser_could_run_gets_no_link(url):
    task = make_task(result={"url": url})
    assert taskstate_result_url(task) == ""
    assert "taskstate-open" not in render_to_string("taskstate/_task_row.html", {"task": task})


def test_a_running_task_gets_no_open_link_yet():
    task = make_task(status=Status.RUNNING, result={"url": "/r.csv"})
    assert taskstate_result_url(task) == ""


def test_a_finished_row_is_one_line_with_its_duration_and_time():
    task = make_task(started_at=ago(0.3), finished_at=ago(0.1))
    row = render_to_string("taskstate/_task_row.html", {"task": task})
    assert "took under 1 s" in row
    assert 'class="taskstate-task taskstate-status-done taskstate-complete"' in row
    assert f'datetime="{task.finished_at.isoformat()}"' in row
    # The bar is kept (hidden by the stylesheet) and named after the task.
    assert f'aria-labelledby="taskstate-description-{task.pk}"' in row
    assert f'id="taskstate-description-{task.pk}"' in row


def _failed(user, attempts=3):
    return make_task(
        status=Status.FAILED,
        user=user,
        attempts=attempts,
        error_type="FeedUnavailable",
        error_message="The feed answered 503",
        traceback='Traceback (most recent call last):\n  File "secret_path.py"',
        started_at=ago(10),
        finished_at=ago(1),
    )


def test_a_failed_row_says_how_many_attempts_and_opens_its_error(user):
    row = render_row(_failed(user))
    assert "failed after 3 attempts" in row
    assert "<details" in row and "FeedUnavailable" in row and "The feed answered 503" in row


def test_every_rows_time_sits_on_its_first_line_beside_its_name(user):
    failed = render_row(_failed(user))
    head = failed.split("taskstate-actions")[0]
    assert "failed after 3 attempts" in head and failed.count("taskstate-meta") == 1
    group = _failed(user)
    group.kind, group.children_total, group.children_failed = Kind.PIPELINE, 3, 1
    row = render_row(group)
    assert "failed after 3 attempts" in row.split("taskstate-actions")[0]
    assert row.count("taskstate-meta") == 1
    done = render_row(make_task(user=user, started_at=ago(2), finished_at=ago(1)))
    assert "taskstate-meta" in done.split("taskstate-actions")[0]


def test_the_traceback_is_pushed_to_a_staff_owner_only(user, django_user_model):
    assert "secret_path.py" not in render_row(_failed(user))
    staff = django_user_model.objects.create_user("staffer", password="x", is_staff=True)
    assert "secret_path.py" in render_row(_failed(staff))


def test_the_page_shows_the_traceback_to_staff_only(client, user, django_user_model):
    _failed(user)
    client.force_login(user)
    assert "secret_path.py" not in client.get("/taskstate/list/", HTTP_HX_REQUEST="true").text
    staff = django_user_model.objects.create_user("staffer", password="x", is_staff=True)
    _failed(staff)
    client.force_login(staff)
    assert "secret_path.py" in client.get("/taskstate/list/", HTTP_HX_REQUEST="true").text


def test_a_retrying_row_reads_its_error_as_a_retry_not_a_failure(user):
    task = make_task(
        status=Status.RETRYING, user=user, attempts=1, error_message="Timeout", started_at=ago(2)
    )
    row = render_row(task)
    assert "Attempt 1 failed, retrying: Timeout" in row
    assert "<details" not in row


def test_notifications_can_be_turned_off(client, user, settings):
    client.force_login(user)
    page = client.get("/taskstate/list/").text
    assert "data-taskstate-notify-button" in page
    assert '"pauseOnBackground": false' in page
    settings.TASKSTATE = {"NOTIFY_WHEN_HIDDEN": False}
    page = client.get("/taskstate/list/").text
    assert "data-taskstate-notify" not in page
    assert '"pauseOnBackground": true' in page


@pytest.mark.parametrize("language", ["en", "de"])
def test_ids_and_order_keys_stay_plain_digits_with_thousand_separators(
    user, settings, language, client
):
    # Sites that set USE_THOUSAND_SEPARATOR would write "taskstate-task-1,234" (or "1.234"):
    # the stream's targets (#taskstate-task-1234) and the page's ordering would miss them.
    settings.USE_THOUSAND_SEPARATOR = True
    settings.LANGUAGE_CODE = language
    common = {"user": user, "started_at": ago(5), "language": language}
    running = make_task(
        pk=1_234_567, status=Status.RUNNING, progress=40, state_order=12_345_678, **common
    )
    group = make_task(
        pk=2_345_678,
        status=Status.RUNNING,
        kind=Kind.GROUP,
        children_total=12_000,
        children_done=1_500,
        **common,
    )
    child = make_task(pk=3_456_789, status=Status.RUNNING, parent=group, progress=5, **common)
    pieces = [
        render_row(running),
        render_row(group),
        render_to_string("taskstate/_progress.html", {"task": running, "oob": True}),
        render_to_string("taskstate/_child_row.html", {"task": child}),
    ]
    client.force_login(user)
    pieces.append(client.get("/taskstate/list/", HTTP_HX_REQUEST="true").text)
    for html in pieces:
        numbers = re.findall(r'(?:id|data-taskstate-order|aria-valuenow)="[^"]*\d[^"]*"', html)
        assert numbers and all(re.fullmatch(r'[\w-]+="[a-z-]*\d+"', n) for n in numbers), numbers
    assert 'id="taskstate-task-1234567"' in pieces[0]
    assert 'data-taskstate-order="12345678"' in pieces[0]
    assert 'id="taskstate-children-2345678"' in pieces[1]
    # The counts people read keep the site's format.
    done, total = ("1,500", "12,000") if language == "en" else ("1.500", "12.000")
    assert f"{done} " in pieces[1] and f" {total} " in pieces[1]


def test_no_template_variable_is_missing_where_projects_make_that_loud(user, settings, client):
    # string_if_invalid is how projects (and pytest-django's --fail-on-template-vars) catch
    # a template reading a variable that is not there: rows pushed by a worker have no
    # request, and must not read one.
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "OPTIONS": {**settings.TEMPLATES[0]["OPTIONS"]}}
    ]
    settings.TEMPLATES[0]["OPTIONS"]["string_if_invalid"] = "INVALID(%s)"
    tasks = [
        make_task(user=user, status=status, started_at=ago(5), error_message="x")
        for status in Status.values
    ]
    group = make_task(user=user, status=Status.RUNNING, kind=Kind.GROUP, children_total=2)
    child = make_task(user=user, status=Status.RUNNING, parent=group, started_at=ago(1))
    pieces = [render_row(task) for task in [*tasks, group]]
    pieces.append(render_to_string("taskstate/_progress.html", {"task": child, "oob": True}))
    pieces.append(render_to_string("taskstate/_child_row.html", {"task": child}))
    client.force_login(user)
    pieces.append(client.get("/taskstate/list/", HTTP_HX_REQUEST="true").text)
    pieces.append(client.get(f"/taskstate/children/{group.pk}/").text)
    assert not [m for html in pieces for m in re.findall(r"INVALID\([^)]*\)", html)]


@pytest.mark.django_db
def test_a_tasks_bar_carries_when_its_row_was_written_a_groups_does_not(user):
    """The write time orders the progress reports of one attempt, all written by the one
    worker running it; a group's row is refreshed from any host, whose clocks may differ."""
    task = make_task(user=user, status=Status.RUNNING, started_at=ago(5))
    group = make_task(user=user, status=Status.RUNNING, kind=Kind.GROUP, children_total=2)
    micros = int(task.updated_at.timestamp()) * 1_000_000 + task.updated_at.microsecond
    bar = re.search(r'<div id="taskstate-progress-\d+"[^>]*>', render_row(task))
    assert bar is not None and f'data-taskstate-updated="{micros}"' in bar.group(0)
    assert "data-taskstate-updated" not in render_row(group)
    # The row itself carries only its order key: rows are also written by the web
    # process (a cancel) and the cleanup, on other clocks.
    row = re.search(r"<li [^>]*>", render_row(task))
    assert row is not None and "data-taskstate-updated" not in row.group(0)
