"""The Docker Compose how-to (docs/how-to/docker-compose.md) and the files it shows
(example_project/compose.yaml, example_project/Dockerfile).

Checked without Docker: the page shows the files as they are; every command a service
runs is a command of the demo site, or uvicorn, with options they accept; every variable
the services set is one the demo's settings read, pointing at the compose file's own
PostgreSQL and Redis; the Dockerfile copies what exists and installs extras the package
has. ``docker compose config`` (or ``docker-compose config``) validates the file where
either is installed. tests/integration/test_compose_commands.py runs the same commands
against local services.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import child_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
COMPOSE = EXAMPLE / "compose.yaml"
DOCKERFILE = EXAMPLE / "Dockerfile"
PAGE = ROOT / "docs" / "how-to" / "docker-compose.md"
APP_SERVICES = ("migrate", "web", "worker", "scheduler")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def service_command(name: str) -> list[str]:
    command = compose()["services"][name]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _demo_settings() -> Any:
    spec = importlib.util.spec_from_file_location(
        "compose_demo_settings", EXAMPLE / "demo_site" / "settings.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _manage(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=child_env(DJANGO_SETTINGS_MODULE="demo_site.settings"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def test_the_page_shows_the_files_as_they_are():
    page = PAGE.read_text(encoding="utf-8")
    blocks = dict(re.findall(r"```(yaml|dockerfile)\n(.*?)```", page, flags=re.S))
    assert blocks["yaml"] == COMPOSE.read_text(encoding="utf-8")
    assert blocks["dockerfile"] == DOCKERFILE.read_text(encoding="utf-8")


def test_it_runs_web_worker_scheduler_postgresql_and_redis():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    for name in APP_SERVICES:
        assert services[name]["build"]["dockerfile"] == "example_project/Dockerfile"
    assert service_command("web")[0] == "uvicorn"
    assert service_command("worker")[:3] == ["python", "manage.py", "rundramatiq"]
    assert service_command("scheduler") == ["python", "manage.py", "taskstate_scheduler"]
    assert service_command("migrate")[:3] == ["python", "manage.py", "migrate"]
    # Nothing starts before the schema is there and the broker answers.
    for name in ("web", "worker", "scheduler"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["redis"] == {"condition": "service_healthy"}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_its_manage_commands_exist_with_the_options_they_are_given():
    known = set(_manage("help", "--commands").split())
    for name in ("migrate", "worker", "scheduler"):
        command = service_command(name)
        assert command[:2] == ["python", "manage.py"], name
        assert command[2] in known, (name, command[2])
        helptext = _manage(command[2], "--help")
        for flag in _flags(command[3:]):
            assert flag in helptext, (name, flag)


def test_the_web_command_serves_the_demo_asgi_application_with_options_uvicorn_has():
    command = service_command("web")
    module, attribute = command[1].split(":")
    assert (EXAMPLE / (module.replace(".", "/") + ".py")).exists()
    assert f"\n{attribute} = " in (EXAMPLE / (module.replace(".", "/") + ".py")).read_text()
    helptext = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in _flags(command[2:]):
        assert flag in helptext, flag
    assert "--host=0.0.0.0" in command and "--port=8000" in command
    assert compose()["services"]["web"]["ports"] == ["127.0.0.1:8000:8000"]


def test_the_worker_stops_within_the_grace_period():
    worker = compose()["services"]["worker"]
    (timeout,) = [w for w in worker["command"] if w.startswith("--worker-shutdown-timeout=")]
    milliseconds = int(timeout.split("=")[1])
    grace = worker["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) * 1000 > milliseconds


def test_every_variable_it_sets_is_read_by_the_demo_settings_and_names_its_services():
    services = compose()["services"]
    source = (EXAMPLE / "demo_site" / "settings.py").read_text(encoding="utf-8")
    environments = [services[name]["environment"] for name in APP_SERVICES]
    assert all(env == environments[0] for env in environments)
    environment = environments[0]
    for name in environment:
        assert re.search(rf"(os\.environ\.get|_env_flag)\(\s*\"{name}\"", source), name

    settings = _demo_settings()
    database = settings.database_from_url(environment["DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert database["HOST"] == "postgres" and database["PORT"] in ("", "5432")
    assert (database["NAME"], database["USER"], database["PASSWORD"]) == (
        postgres["POSTGRES_DB"],
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    redis = settings.redis_connection_from_url(environment["REDIS_URL"])
    assert redis["host"] == "redis" and redis["port"] == 6379
    assert environment["DJANGO_DEBUG"].lower() in {"1", "true", "yes", "on"}


def test_the_dockerfile_copies_what_exists_and_installs_extras_the_package_has():
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    (install,) = [line for line in lines if "pip install" in line]
    extras = re.search(r"'\.\[([a-z,]+)\]'", install)
    assert extras is not None
    known = importlib.metadata.metadata("dramatiq-taskstate").get_all("Provides-Extra") or []
    assert set(extras.group(1).split(",")) <= set(known)
    assert "WORKDIR /app/example_project" in lines
    # The build context keeps what the Dockerfile copies.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for kept in ("pyproject.toml", "README.md", "LICENSE", "taskstate/", "example_project/"):
        assert f"!{kept}" in ignore, kept


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        found = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if found.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        missing = "neither `docker compose` nor `docker-compose` is installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing} (.ci/run installs Debian's docker-compose)")
        pytest.skip(missing)
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
