"""Start and stop the real processes the integration and browser tests talk to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process in its own process group; its output is kept for failures."""

    def __init__(
        self, name: str, args: Sequence[str], env: dict[str, str], cwd: Path = REPO
    ) -> None:
        self.name = name
        self.lines: list[str] = []
        self._ready = threading.Condition()
        self.proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._ready:
                self.lines.append(line.rstrip("\n"))
                self._ready.notify_all()

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self._ready:
            while not any(text in line for line in self.lines):
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}):\n{self.output()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name} never printed {text!r}:\n{self.output()}")
                self._ready.wait(remaining)

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    def forget_output(self) -> None:
        """Drop what it printed so far: a process shared between tests shows each test
        only its own lines."""
        with self._ready:
            self.lines.clear()

    def wait_listening(self, port: int, timeout: float = 60) -> None:
        """Wait until this process accepts connections on ``port`` (a banner printed
        before the server binds is no proof that it listens)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} never listened on {port}:\n{self.output()}"
                    ) from None
                time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_worker(env: dict[str, str], threads: int = 4) -> Process:
    """``manage.py rundramatiq`` for the test settings, once it is ready for work."""
    worker = Process(
        "rundramatiq",
        [
            sys.executable,
            "-m",
            "django",
            "rundramatiq",
            "--settings",
            env["DJANGO_SETTINGS_MODULE"],
            "--processes",
            "1",
            "--threads",
            str(threads),
        ],
        env,
    )
    worker.wait_for_output("is ready for action", timeout=60)
    return worker


def start_uvicorn(app: str, env: dict[str, str], port: int, app_dir: Path = REPO) -> Process:
    server = Process(
        "uvicorn",
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--app-dir",
            str(app_dir),
            "--log-level",
            "info",
            "--timeout-graceful-shutdown",
            "2",
        ],
        env,
    )
    server.wait_for_output("Uvicorn running on", timeout=60)
    return server


class Shared:
    """One child process for a module's tests, started when a test first needs it and
    again when a test stopped it. Each test sees only the output printed since it got
    the process."""

    def __init__(self, start: Callable[[], Process]) -> None:
        self._start = start
        self.process: Process | None = None

    def get(self) -> Process:
        if self.process is not None and self.process.proc.poll() is not None:
            self.process.stop()  # joins its output reader
            self.process = None
        if self.process is None:
            self.process = self._start()
        self.process.forget_output()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def stop_unless_idle(self, broker: dramatiq.Broker, wait: float = 5.0) -> None:
        """At the end of a test, stop this worker if it still holds a message ``wait``
        seconds on: the message goes back to Redis, where the ``broker`` fixture empties
        it, and cannot run into the next test."""
        deadline = time.monotonic() + wait
        while holds_messages(broker):
            if time.monotonic() > deadline:
                self.stop()
                return
            time.sleep(0.05)


def holds_messages(broker: dramatiq.Broker) -> bool:
    """Whether a queue of the test's Redis database still has a message, or a worker
    holds one unacked (running, or delayed until its ETA). An ack set can outlive a
    worker that was killed, naming messages long gone: only a message whose body is
    still stored counts."""
    if not isinstance(broker, RedisBroker):
        return False
    client, prefix = broker.client, f"{broker.namespace}:"
    for key in client.scan_iter(match=f"{prefix}*"):
        name = key.decode()[len(prefix) :]
        kind = client.type(key)
        # A queue is a list named after it ("default", "default.DQ"); other lists under
        # the namespace are not messages (dramatiq-abort's "aborts:..." events).
        if kind == b"list" and ":" not in name and client.llen(key):
            return True
        if kind == b"set" and name.startswith("__acks__."):
            queue = name.split(".", 2)[2]  # __acks__.<worker id>.<queue>
            held = client.smembers(key)
            if held and any(client.hmget(f"{prefix}{queue}.msgs", list(held))):
                return True
    return False


def passes_in_forked_child(check: Callable[[], bool]) -> bool:
    """Whether ``check()`` returns True in a child forked from this process (which then
    exits at once, running none of the parent's cleanup)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os.write(write_end, bytes([code]))
            os._exit(code)
    os.close(write_end)
    try:
        answer = os.read(read_end, 1)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_end)
    return answer == b"\x00" and os.waitstatus_to_exitcode(status) == 0
