"""The list, seen and events views: who may do what, and what each answers."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from taskstate.core.models import Status, Task
from taskstate.web.channels import user_channel

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def make_task(user, status=Status.DONE, **fields) -> Task:
    n = Task.objects.count() + 1
    return Task.objects.create(
        message_id=f"m-{n}-{status}",
        actor_name="export",
        status=status,
        user=user,
        description=fields.pop("description", f"task {n}"),
        **fields,
    )


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def test_events_refuses_anonymous_users(client):
    response = client.get(reverse("taskstate:events"))
    assert response.status_code == 403


def test_events_streams_for_a_logged_in_user_under_asgi(async_client, user):
    async def open_stream():
        await async_client.aforce_login(user)
        response = await async_client.get(reverse("taskstate:events"))
        await sync_to_async(response.close)()
        return response

    response = async_to_sync(open_stream)()
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response.streaming


def test_events_under_wsgi_answer_an_error_event_and_log_it_once(alice, caplog, monkeypatch):
    # runserver and gunicorn are WSGI: the stream would hang, sending nothing.
    from taskstate.web import views

    monkeypatch.setattr(views, "_cannot_stream_logged", False)  # as in a fresh process
    with caplog.at_level("ERROR", logger="taskstate"):
        responses = [alice.get(reverse("taskstate:events")) for _ in range(3)]
    for response in responses:
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/event-stream")
        assert not response.streaming
        body = response.content.decode()
        assert body.startswith("event: stream-error")
        assert "stream-unavailable" in body
        assert "ASGI" in body
        # Clients other than the page's script wait as long before they ask again.
        assert f"\nretry: {views.CANNOT_STREAM_RETRY_MS}\n\n" in body
    # Every page asks at least once: the log says it once per process.
    lines = [r.getMessage() for r in caplog.records if r.name == "taskstate"]
    assert len(lines) == 1
    assert "needs an ASGI server" in lines[0]


def test_events_rejects_post(alice):
    assert alice.post(reverse("taskstate:events")).status_code == 405


def test_list_shows_only_my_tasks_in_one_query(alice, user, other_user, django_assert_num_queries):
    mine = [make_task(user, description=f"mine {i}") for i in range(5)]
    make_task(other_user, description="theirs")
    # session + user + the tasks
    with django_assert_num_queries(3):
        response = alice.get(reverse("taskstate:list"))
    body = response.content.decode()
    assert all(f'id="taskstate-task-{t.pk}"' in body for t in mine)
    assert "theirs" not in body
    assert 'hx-sse:connect="/taskstate/events/"' in body


def test_list_for_htmx_resync_returns_rows_only(alice, user):
    task = make_task(user)
    body = alice.get(reverse("taskstate:list"), **HTMX).content.decode()
    assert f'id="taskstate-task-{task.pk}"' in body
    assert "hx-sse:connect" not in body
    assert alice.get(reverse("taskstate:list"), **HTMX)["Vary"].count("HX-Request") == 1


def test_list_hides_seen_tasks(alice, user):
    seen = make_task(user, seen=True, seen_at=timezone.now(), description="old news")
    body = alice.get(reverse("taskstate:list")).content.decode()
    assert f"taskstate-task-{seen.pk}" not in body


def test_list_for_anonymous_is_empty(client, user):
    make_task(user)
    response = client.get(reverse("taskstate:list"))
    assert response.status_code == 200
    assert b"taskstate-task" not in response.content


def test_row_escapes_html_everywhere(alice, user):
    make_task(
        user,
        status=Status.FAILED,
        description="<script>alert(1)</script>",
        progress_message="<img src=x onerror=alert(2)>",
        error_message="<svg onload=alert(3)>",
    )
    body = alice.get(reverse("taskstate:list")).content.decode()
    assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)" in body
    assert "<img src=x" not in body and "<svg onload" not in body


def test_row_has_progressbar_status_and_dismiss_for_completed_tasks(alice, user):
    done = make_task(user, status=Status.DONE, progress=100)
    running = make_task(user, status=Status.RUNNING, progress=40, progress_message="Section 4")
    body = alice.get(reverse("taskstate:list")).content.decode()
    assert 'role="progressbar"' in body and 'aria-valuenow="40"' in body
    assert "taskstate-status-running" in body and "Section 4" in body
    assert reverse("taskstate:seen", args=[done.pk]) in body
    assert reverse("taskstate:seen", args=[running.pk]) not in body


def test_dismiss_with_htmx_marks_seen_and_answers_empty_200(alice, user):
    task = make_task(user)
    response = alice.post(reverse("taskstate:seen", args=[task.pk]), **HTMX)
    assert response.status_code == 200 and response.content == b""
    task.refresh_from_db()
    assert task.seen and task.seen_at is not None


def test_dismiss_tells_my_other_tabs_after_commit(
    alice, user, capture_events, django_capture_on_commit_callbacks
):
    task = make_task(user)
    capture = capture_events(user_channel(user.pk))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alice.post(reverse("taskstate:seen", args=[task.pk]), **HTMX)
    assert capture.events(wait=0.1) == []
    for callback in callbacks:
        callback()
    assert [d for _, _, d in capture.events()] == [
        f'<hx-partial hx-target="#taskstate-task-{task.pk}" hx-swap="delete"></hx-partial>'
    ]


def test_dismiss_without_javascript_redirects_back(alice, user):
    task = make_task(user)
    response = alice.post(reverse("taskstate:seen", args=[task.pk]), {"next": "/dashboard/?tab=2"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/?tab=2"


def test_dismiss_never_redirects_off_site(alice, user):
    task = make_task(user)
    response = alice.post(
        reverse("taskstate:seen", args=[task.pk]),
        {"next": "https://evil.example/"},
        HTTP_REFERER="https://evil.example/x",
    )
    assert response["Location"] == reverse("taskstate:list")


def test_dismissing_someone_elses_task_is_404_and_changes_nothing(alice, other_user):
    theirs = make_task(other_user)
    assert alice.post(reverse("taskstate:seen", args=[theirs.pk]), **HTMX).status_code == 404
    theirs.refresh_from_db()
    assert not theirs.seen


def test_running_tasks_cannot_be_dismissed(alice, user):
    running = make_task(user, status=Status.RUNNING)
    assert alice.post(reverse("taskstate:seen", args=[running.pk])).status_code == 404


def test_seen_requires_post_and_login(client, alice, user):
    task = make_task(user)
    assert alice.get(reverse("taskstate:seen", args=[task.pk])).status_code == 405
    response = Client().post(reverse("taskstate:seen", args=[task.pk]))
    assert response.status_code == 302 and "login" in response["Location"]


def test_seen_all_marks_only_my_completed_tasks(alice, user, other_user):
    done = make_task(user)
    failed = make_task(user, status=Status.FAILED)
    running = make_task(user, status=Status.RUNNING)
    theirs = make_task(other_user)
    assert alice.post(reverse("taskstate:seen-all"), **HTMX).status_code == 200
    assert set(Task.objects.filter(seen=True)) == {done, failed}
    running.refresh_from_db()
    theirs.refresh_from_db()
    assert not running.seen and not theirs.seen


def test_posts_need_a_csrf_token(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    task = make_task(user)
    assert client.post(reverse("taskstate:seen", args=[task.pk])).status_code == 403
    assert client.post(reverse("taskstate:seen-all")).status_code == 403
    token_page = client.get(reverse("taskstate:list")).content.decode()
    token = token_page.split('"X-CSRFToken": "')[1].split('"')[0]
    response = client.post(
        reverse("taskstate:seen", args=[task.pk]), HTTP_X_CSRFTOKEN=token, **HTMX
    )
    assert response.status_code == 200


def test_template_tags_render_list_and_scripts(rf, user):
    from django.template import Context, Template

    make_task(user, description="tagged")
    request = rf.get("/")
    request.user = user
    html = Template("{% load taskstate %}{% taskstate_scripts %}{% taskstate_list %}").render(
        Context({"request": request, "csrf_token": "tok"})
    )
    assert "taskstate/vendor/htmx.min.js" in html and "taskstate/vendor/hx-sse.js" in html
    assert "taskstate/taskstate.css" in html
    assert "tagged" in html
    assert "cdn" not in html.lower()
