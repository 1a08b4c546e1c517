"""``manage.py demo`` on a port that is taken says so first, with a hint, and serves nothing."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.support.processes import REPO, child_env


def test_demo_on_a_taken_port_says_so_and_suggests_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "example_project" / "manage.py"),
                "demo",
                "--port",
                str(port),
            ],
            env=child_env(
                DJANGO_SETTINGS_MODULE="demo_site.settings",
                DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr
    assert f"--port {port + 1}" in done.stderr
    assert "taskstate demo: http://" not in done.stdout
    assert "Created user" not in done.stdout
