"""The documentation: the README as a landing page, the tutorial the browser test follows,
the settings reference written from taskstate/core/conf.py, and the MkDocs site built strict."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskstate.core.conf import DEFAULTS
from tests.support.quickstart import TUTORIAL, commands, quickstart_blocks

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"


def _settings_reference():
    spec = importlib.util.spec_from_file_location(
        "settings_reference", ROOT / "scripts" / "settings_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_reference_has_a_section_for_every_key_of_conf():
    page = SETTINGS_PAGE.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## `([A-Z0-9_]+)`$", page, flags=re.M))
    assert sections == set(DEFAULTS)
    for key, default in DEFAULTS.items():
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        assert f"## `{key}`\n\nDefault: `{shown}`." in page


def test_settings_reference_is_what_conf_py_says_now():
    """Edit taskstate/core/conf.py, then run ``python scripts/settings_reference.py``."""
    assert SETTINGS_PAGE.read_text(encoding="utf-8") == _settings_reference().render()


def test_readme_is_a_landing_page_that_keeps_ci_commands_at_its_top():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150
    top = "\n".join(lines[:12])
    for marker in ("<!-- demo-command -->", "<!-- test-command -->"):
        assert marker in top
        command = lines[lines.index(marker) + 1]
        assert command.startswith("`python3 -m venv .venv && ") and command.endswith("`")


def test_readme_links_point_at_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert "docs/tutorial.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []


def test_tutorial_holds_every_quickstart_block_and_installs_before_startproject():
    blocks = quickstart_blocks()
    assert set(blocks) == {"install", "settings", "urls", "tasks", "views", "template", "run"}
    (install,) = commands(blocks["install"])
    assert install[:2] == ["pip", "install"]
    text = TUTORIAL.read_text(encoding="utf-8")
    assert text.index("<!-- quickstart:install -->") < text.index("django-admin startproject")


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="the docs group is not installed (pip install --group docs)",
)
def test_site_builds_strict_with_every_link_and_anchor_found(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "reference" / "settings" / "index.html").exists()


def _units(page: str) -> dict[str, dict[str, str]]:
    """The systemd units of docs/how-to/deploy.md by file name: each ``Key=value``."""
    units = {}
    pattern = r"`/etc/systemd/system/(mysite-[a-z]+)\.service`:\n\n```ini\n(.*?)```"
    for name, body in re.findall(pattern, page, flags=re.S):
        joined = body.replace("\\\n", " ")
        units[name] = dict(
            line.split("=", 1) for line in joined.splitlines() if "=" in line and line[0] != "#"
        )
    return units


def test_deploy_units_stop_each_process_gracefully_with_commands_that_exist():
    from tests.test_compose import _manage

    page = (ROOT / "docs" / "how-to" / "deploy.md").read_text(encoding="utf-8")
    units = _units(page)
    assert set(units) == {"mysite-web", "mysite-worker", "mysite-scheduler"}
    assert all(unit["KillMode"] == "mixed" for unit in units.values())

    def seconds(unit: str) -> int:
        return int(units[unit]["TimeoutStopSec"])

    def option(command: list[str], name: str) -> str:
        return command[command.index(name) + 1]

    web = units["mysite-web"]["ExecStart"].split()
    assert web[0].endswith("/.venv/bin/uvicorn")
    helptext = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(flag in helptext for flag in web if flag.startswith("--"))
    assert seconds("mysite-web") > int(option(web, "--timeout-graceful-shutdown"))

    worker = units["mysite-worker"]["ExecStart"].split()
    assert worker[1:3] == ["manage.py", "rundramatiq"]
    rundramatiq = _manage("rundramatiq", "--help")
    assert all(flag in rundramatiq for flag in worker if flag.startswith("--"))
    # systemd's SIGKILL comes after Dramatiq's own shutdown limit (milliseconds).
    assert seconds("mysite-worker") * 1000 > int(option(worker, "--worker-shutdown-timeout"))

    scheduler = units["mysite-scheduler"]["ExecStart"].split()
    assert scheduler[1:] == ["manage.py", "taskstate_scheduler"]
    assert "taskstate_scheduler" in _manage("help", "--commands").split()
    # gunicorn with uvicorn's workers, and daphne, are shown too.
    assert "-k uvicorn_worker.UvicornWorker" in page and "--graceful-timeout" in page
    assert "daphne -b 127.0.0.1 -p 8000" in page


def test_the_readme_example_declares_its_actor_as_the_tutorial_does():
    """Both actors return a value: both say store_results=True (no Dramatiq warning)."""
    tutorial = quickstart_blocks()["tasks"]
    (decorator,) = re.findall(r"^@dramatiq\.actor\(.*\)$", tutorial, flags=re.M)
    assert "store_results=True" in decorator
    readme = README.read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(decorator)}(\s+#.*)?$", readme, flags=re.M)
