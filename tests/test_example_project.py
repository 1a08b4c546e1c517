"""The example project's own tests (the testing guide's examples) pass, run as a project
that uses taskstate runs them: pytest in example_project/, with its settings and the
taskstate plugin from the package's entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def test_the_example_projects_tests_pass_with_the_plugin():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL"}
    }
    # The demo's work and back-offs at a fifth of their shown pace (demo/tasks.py).
    env["DEMO_PACE"] = "0.2"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "11 passed" in done.stdout.splitlines()[-1]


def test_every_code_block_of_the_testing_guide_is_one_of_those_tests():
    """docs/testing.md shows the example project's tests and settings: each block is
    taken from them word for word (so the run above exercises it)."""
    import re

    guide = (EXAMPLE.parent / "docs" / "testing.md").read_text()
    sources = "\n".join(
        (EXAMPLE / name).read_text()
        for name in (
            "demo/tests.py",
            "demo/test_unittest.py",
            "demo_site/test_settings.py",
            "pytest.ini",
        )
    )
    blocks = re.findall(r"```(\w+)\n(.*?)```", guide, flags=re.DOTALL)
    assert len(blocks) >= 10
    for language, body in blocks:
        if language == "sh":
            assert body.strip() == "cd example_project && pytest"
        else:
            assert body.strip() in sources, f"not in the example project's tests:\n{body}"


def test_the_readme_states_the_cleanup_interval_the_scheduler_prints():
    """example_project/README.md says how often ``taskstate_scheduler`` cleans up; the
    command prints its interval (the demo's ``TASKSTATE["CLEANUP_INTERVAL"]``)."""
    import re

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from demo_site.settings import TASKSTATE; print(TASKSTATE['CLEANUP_INTERVAL'])",
        ],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seconds = int(done.stdout)
    readme = (EXAMPLE / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "manage.py taskstate_scheduler" in line)
    stated = re.search(r"every (\d+ s|minute|\d+ min)", line)
    assert stated, line
    words = {60: "minute"}
    assert stated.group(1) in (f"{seconds} s", words.get(seconds)), line
