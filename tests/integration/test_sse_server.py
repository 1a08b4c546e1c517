"""The event stream served by uvicorn, fed by a separate worker through Redis pub/sub."""

from __future__ import annotations

import re

from taskstate.core.models import Task
from taskstate.web.channels import user_channel
from tests.support.sse import assert_each_hears_only_their_own
from tests.testapp import tasks as actors


def test_anonymous_stream_is_forbidden(server, streams):
    _, base = server
    assert streams(f"{base}/taskstate/events/").status == 403


def test_owner_receives_every_change_of_a_task_run_by_the_worker_process(
    server, worker_process, streams, user
):
    _, base = server
    stream = streams(f"{base}/taskstate/events/", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    # Paced, so each state is committed in a batch of its own: the background writer
    # merges a quick task's running into its end (docs/reliability.md).
    message = actors.paced.send(3, 0.1, for_state={"user_pk": user.pk, "description": "via redis"})
    done = stream.wait_for(lambda f: 'data-status="done"' in f.data)
    task = Task.objects.get(message_id=message.message_id)
    assert done.event == "" and f'id="taskstate-task-{task.pk}"' in done.data
    assert "via redis" in done.data
    arrived = [
        m.group(1) for f in stream.frames if (m := re.search(r'data-status="(\w+)"', f.data))
    ]
    # In the order they happened; "enqueued" is missing when the worker beat the sender.
    assert arrived in (["enqueued", "running", "done"], ["running", "done"])


def test_asking_for_another_users_channel_gets_only_your_own(
    server, worker_process, streams, user, other_user
):
    _, base = server
    victim = user_channel(user.pk)
    snoop = streams(f"{base}/taskstate/events/?channel={victim}&channels={victim}", other_user)
    mine = streams(f"{base}/taskstate/events/", user)
    snoop.wait_for(lambda f: f.event == "stream-open")
    mine.wait_for(lambda f: f.event == "stream-open")
    assert_each_hears_only_their_own(mine, snoop, actors.noop.send, user, other_user)


def test_a_worker_renders_for_every_user_and_an_open_page_in_the_web_process_gets_it_live(
    server, worker_process, streams, user, other_user, settings
):
    """With EVENTSTREAM_REDIS the rundramatiq process cannot see the uvicorn process's
    streams: it renders every row (a user with no page open too), and a page open in the
    web process receives the rows live through Redis pub/sub."""
    import json

    import redis

    from tests.support.faults import wait_for

    _, base = server
    theirs = user_channel(other_user.pk)
    client = redis.Redis(**settings.EVENTSTREAM_REDIS)
    pubsub = client.pubsub()
    pubsub.subscribe("events_channel")  # what anyone publishes, whoever listens
    published: list[tuple[str, str]] = []

    def drain_until(channel: str, text: str, timeout: float = 30) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is None or message["type"] != "message":
                continue
            item = json.loads(message["data"])
            published.append((item["channel"], item["data"]))
            if item["channel"] == channel and text in item["data"]:
                return
        raise AssertionError(f"timed out waiting for {text!r} on {channel}")

    try:
        # Nobody has the other user's page open: the worker renders their row anyway.
        away = actors.paced.send(
            2, 0.1, for_state={"user_pk": other_user.pk, "description": "away"}
        )
        wait_for(
            lambda: Task.objects.filter(message_id=away.message_id, status="done").exists(),
            30,
            "done",
        )
        drain_until(theirs, 'data-status="done"')

        stream = streams(f"{base}/taskstate/events/", user)
        stream.wait_for(lambda f: f.event == "stream-open")
        seen = actors.paced.send(2, 0.1, for_state={"user_pk": user.pk, "description": "here"})
        done = stream.wait_for(lambda f: 'data-status="done"' in f.data and "here" in f.data)
        assert done.event == ""
        task = Task.objects.get(message_id=seen.message_id)
        assert f'id="taskstate-task-{task.pk}"' in done.data
    finally:
        pubsub.close()
        client.close()
