"""The event stream served by uvicorn, fed by a separate worker through Redis pub/sub."""

from __future__ import annotations

import re

from taskstate.channels import user_channel
from taskstate.models import Task
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


def test_a_worker_renders_nothing_for_a_user_with_no_page_open_and_everything_once_one_is(
    server, worker_process, streams, user, settings
):
    """taskstate.presence across real processes: the uvicorn process marks the stream's
    channel in Redis, the rundramatiq process reads the mark before rendering."""
    import json
    import time

    import redis

    from tests.support.faults import wait_for

    _, base = server
    channel = user_channel(user.pk)
    client = redis.Redis(**settings.EVENTSTREAM_REDIS)
    pubsub = client.pubsub()
    pubsub.subscribe("events_channel")  # what the worker publishes, whoever listens
    published: list[str] = []

    def drain() -> None:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            if message["type"] == "message":
                item = json.loads(message["data"])
                if item["channel"] == channel:
                    published.append(item["data"])

    try:
        unseen = actors.paced.send(2, 0.1, for_state={"user_pk": user.pk, "description": "away"})
        wait_for(
            lambda: Task.objects.filter(message_id=unseen.message_id, status="done").exists(),
            30,
            "the task done",
        )
        time.sleep(1)  # the worker's background sender had time to publish, if it would
        drain()
        rows = [data for data in published if "taskstate-task-" in data]
        # The sender's own enqueued row may be published: the test process runs it and
        # the web process's mark is not set yet. Nothing from the worker.
        assert not [r for r in rows if 'data-status="enqueued"' not in r], rows

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
