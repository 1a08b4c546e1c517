"""The APScheduler job: added once, and it cleans up from the scheduler's own thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from django.utils import timezone

from taskstate.core.models import Status, Task
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


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_the_scheduler_command_cleans_up_on_its_interval_and_stops_cleanly(tmp_path, stop):
    """``manage.py taskstate_scheduler`` as a process: runs the job, and exits 0 on Ctrl+C
    (SIGINT, in a terminal) and on SIGTERM (systemd, supervisord, ``kill``).

    The child starts with SIGINT's default action, as under a terminal: a suite run with
    SIGINT ignored (``nohup``, a background job, a CI script) would hand its children an
    ignored SIGINT, which Python keeps ignoring.
    """
    import signal
    import sqlite3
    import subprocess
    import sys

    from tests.support.processes import child_env

    # A SQLite database of the process's own (the test's database is not visible to it).
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="0",
        TASKSTATE_TEST_DB="",
        TASKSTATE_TEST_SQLITE_DIR=str(tmp_path),
    )
    django = [sys.executable, "-m", "django"]
    subprocess.run([*django, "migrate", "-v0"], env=env, check=True, timeout=120)
    old = (timezone.now() - timedelta(days=400)).isoformat()
    subprocess.run(
        [
            *django,
            "shell",
            "-c",
            "from taskstate.core.models import Task; "
            "Task.objects.create(message_id='stale', actor_name='export', status='done'); "
            f"Task.objects.update(updated_at='{old}', finished_at='{old}')",
        ],
        env=env,
        check=True,
        timeout=120,
    )
    database = tmp_path / "taskstate-tests.sqlite3"

    def rows() -> int:
        with sqlite3.connect(database) as db:
            return int(db.execute("SELECT count(*) FROM taskstate_task").fetchone()[0])

    assert rows() == 1
    scheduler = subprocess.Popen(
        [*django, "taskstate_scheduler", "--interval", "0.2"],
        env={**env, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert scheduler.stdout is not None
        assert scheduler.stdout.readline().strip() == (
            "taskstate cleanup every 0.2 s; Ctrl+C to stop."
        )
        deadline = time.monotonic() + 20
        while rows():
            assert time.monotonic() < deadline, "the scheduled cleanup did not run in 20 s"
            time.sleep(0.1)
        scheduler.send_signal(getattr(signal, stop))
        _out, err = scheduler.communicate(timeout=20)
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait()
    assert scheduler.returncode == 0, err
    assert "Traceback" not in err
