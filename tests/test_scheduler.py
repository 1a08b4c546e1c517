"""The APScheduler job: added once, and it cleans up from the scheduler's own thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from django.utils import timezone

from taskstate.models import Status, Task
from taskstate.scheduler import JOB_ID, add_cleanup_job


@pytest.fixture
def scheduler() -> Iterator[BackgroundScheduler]:
    """A real background scheduler, always shut down (waiting for a running job)."""
    s = BackgroundScheduler(timezone="UTC")
    try:
        yield s
    finally:
        if s.running:
            s.shutdown(wait=True)


def test_cleanup_job_has_a_fixed_id(scheduler):
    job = add_cleanup_job(scheduler, seconds=60)
    assert job.id == JOB_ID == "taskstate-cleanup"
    assert scheduler.get_job("taskstate-cleanup") is not None


def test_adding_the_cleanup_job_twice_leaves_one_job(scheduler):
    scheduler.start(paused=True)
    add_cleanup_job(scheduler, seconds=60)
    add_cleanup_job(scheduler, seconds=30)

    jobs = scheduler.get_jobs()
    assert [job.id for job in jobs] == ["taskstate-cleanup"]
    # The second call replaced the first: its interval is the one in force.
    assert jobs[0].trigger.interval == timedelta(seconds=30)


def test_cleanup_job_interval_defaults_to_the_setting(scheduler, settings):
    settings.TASKSTATE = {"CLEANUP_INTERVAL": 42}
    job = add_cleanup_job(scheduler)
    assert job.trigger.interval == timedelta(seconds=42)


def test_cleanup_job_passes_extra_options_to_apscheduler(scheduler):
    job = add_cleanup_job(scheduler, seconds=60, name="nightly tidy", max_instances=2)
    assert (job.name, job.max_instances) == ("nightly tidy", 2)


# The job runs in the scheduler's thread, on a connection of its own: it must see
# committed rows.
@pytest.mark.django_db(transaction=True)
def test_scheduled_cleanup_deletes_a_stale_task(scheduler, settings):
    settings.TASKSTATE = {"STALE_ENQUEUED_AFTER": 500}
    stale = Task.objects.create(
        message_id="stale",
        actor_name="export",
        status=Status.ENQUEUED,
        updated_at=timezone.now() - timedelta(seconds=600),
    )
    fresh = Task.objects.create(message_id="fresh", actor_name="export", status=Status.ENQUEUED)

    add_cleanup_job(scheduler, seconds=0.2)
    scheduler.start()

    deadline = time.monotonic() + 10
    while Task.objects.filter(pk=stale.pk).exists():
        assert time.monotonic() < deadline, "the scheduled cleanup did not run within 10 s"
        time.sleep(0.05)
    assert list(Task.objects.all()) == [fresh]
