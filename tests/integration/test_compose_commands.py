"""The commands of example_project/compose.yaml, run as its containers run them.

No Docker here: each service's command runs as a local process in ``example_project/``
(the image's working directory) with the environment the compose file gives it, its
PostgreSQL and Redis addresses pointed at the test's own database and Redis. The
``migrate`` run exits 0, the user the how-to creates is created, the web process serves
the login page and static files, the worker and the scheduler start; each then stops on
one ``SIGTERM`` to its main process, as ``docker compose stop`` sends it, within the
service's grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.processes import Process, child_env, free_port
from tests.test_compose import EXAMPLE, compose, service_command

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("TASKSTATE_TEST_DEMO_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def database() -> Iterator[str]:
    import psycopg

    name = f"taskstate_compose_{os.getpid()}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _here(command: list[str]) -> list[str]:
    """A container's command line for this machine: its Python, uvicorn as a module."""
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    if command[0] == "uvicorn":
        return [sys.executable, "-m", "uvicorn", *command[1:]]
    raise AssertionError(f"unexpected command {command}")


def _grace_seconds(service: dict) -> float:
    grace = service.get("stop_grace_period", "10s")  # Docker's default
    assert grace.endswith("s")
    return float(grace[:-1])


def test_each_service_command_runs_and_stops_on_one_sigterm(database: str) -> None:
    services = compose()["services"]
    environment = dict(services["web"]["environment"])
    # The compose file's own services, here: the test's database and Redis.
    url = urlsplit(environment["DATABASE_URL"])
    assert url.hostname == "postgres"
    environment["DATABASE_URL"] = urlunsplit(
        url._replace(netloc="postgres@127.0.0.1:5432", path=f"/{database}")
    )
    assert urlsplit(environment["REDIS_URL"]).hostname == "redis"
    environment["REDIS_URL"] = REDIS_URL
    env = child_env(**environment)
    for name in ("DJANGO_SETTINGS_MODULE", "TASKSTATE_TEST_SERVICES", "TASKSTATE_TEST_DB_NAME"):
        env.pop(name, None)

    done = subprocess.run(
        _here(service_command("migrate")), cwd=EXAMPLE, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The how-to's next step: `docker compose run --rm web python manage.py createsuperuser`.
    done = subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput"],
        cwd=EXAMPLE,
        env={
            **env,
            "DJANGO_SUPERUSER_USERNAME": "ada",
            "DJANGO_SUPERUSER_EMAIL": "ada@example.com",
            "DJANGO_SUPERUSER_PASSWORD": "ada-password",
        },
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    port = free_port()
    web_command = [
        "--host=127.0.0.1" if word == "--host=0.0.0.0" else word for word in service_command("web")
    ]
    web_command = [f"--port={port}" if w == "--port=8000" else w for w in web_command]
    started = {
        "web": Process("web", _here(web_command), env, cwd=EXAMPLE),
        "worker": Process("worker", _here(service_command("worker")), env, cwd=EXAMPLE),
        "scheduler": Process("scheduler", _here(service_command("scheduler")), env, cwd=EXAMPLE),
    }
    try:
        started["worker"].wait_for_output("is ready for action", timeout=60)
        started["scheduler"].wait_for_output("taskstate cleanup every", timeout=60)
        started["web"].wait_listening(port, timeout=60)
        import httpx

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            home = client.get("/")
            assert home.status_code == 302 and home.headers["location"].startswith(
                "/accounts/login/"
            )
            assert client.get("/accounts/login/").status_code == 200
            assert client.get("/static/taskstate/vendor/htmx.min.js").status_code == 200

        # `docker compose stop`: SIGTERM to each container's main process only.
        for process in started.values():
            process.proc.send_signal(signal.SIGTERM)
        for name, process in started.items():
            try:
                code = process.proc.wait(timeout=_grace_seconds(services[name]))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{name} outlived its grace period:\n{process.output()}"
                ) from None
            # uvicorn, once shut down, re-raises the signal to exit by it.
            assert code in (0, -signal.SIGTERM), f"{name} exited {code}:\n{process.output()}"
        assert "Finished server process" in started["web"].output()
        assert "Worker has been shut down." in started["worker"].output()
    finally:
        for process in started.values():
            process.stop()
    assert "Traceback" not in "".join(p.output() for p in started.values())
