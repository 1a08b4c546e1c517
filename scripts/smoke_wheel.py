"""Smoke test of an installed dramatiq-taskstate, run by .ci/run with a clean venv's python.

The example project, started from outside the checkout so that ``taskstate`` comes from
the installed wheel: ``manage.py check``, then ``manage.py demo`` serving a logged-in
page whose task list template renders and whose static files (htmx, the stylesheet) load.

    VENV/bin/python scripts/smoke_wheel.py
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANAGE = REPO / "example_project" / "manage.py"


def main() -> None:
    import taskstate

    installed = Path(taskstate.__file__).resolve()
    if REPO in installed.parents:
        sys.exit(f"taskstate comes from the checkout ({installed}), not from the wheel")
    print(f"taskstate {taskstate.__version__} from {installed.parent}")

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "demo_site.settings",
            "DEMO_SQLITE_PATH": str(Path(tmp) / "demo.sqlite3"),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("PYTHONPATH", None)
        subprocess.run([sys.executable, str(MANAGE), "check"], cwd=tmp, env=env, check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo = subprocess.Popen(
            [sys.executable, str(MANAGE), "demo", "--port", str(port)],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert demo.stdout is not None
            for line in demo.stdout:
                print("  demo:", line.rstrip())
                if "taskstate demo: http://" in line:
                    break
            else:
                sys.exit("the demo exited before serving")
            check_pages(f"http://127.0.0.1:{port}")
        finally:
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait(30)
    print("wheel smoke test passed")


def check_pages(base: str) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    # The banner comes just before uvicorn listens.
    deadline = time.monotonic() + 30
    while True:
        try:
            login = opener.open(f"{base}/accounts/login/", timeout=30).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login)
    assert token, "no CSRF token on the login page"
    form = urllib.parse.urlencode(
        {"username": "demo", "password": "demo", "csrfmiddlewaretoken": token.group(1)}
    ).encode()
    page = (
        opener.open(
            urllib.request.Request(f"{base}/accounts/login/", data=form, headers={"Referer": base}),
            timeout=30,
        )
        .read()
        .decode()
    )
    # The package's templates: the task list, and the script tags with static URLs.
    assert 'id="taskstate-list"' in page, "the task list template did not render"
    statics = re.findall(r'(?:src|href)="(/static/taskstate/[^"]+)"', page)
    assert len(statics) >= 5, statics
    for path in statics:
        started = time.monotonic()
        with opener.open(base + path, timeout=30) as response:
            body = response.read()
            assert response.status == 200, path
            assert body, path
        print(f"  {path}: {len(body)} bytes in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    main()
