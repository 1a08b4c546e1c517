"""Run Pushpin (Debian's ``pushpin`` package) as a child process of the tests.

Each instance gets a temporary directory of its own: ``pushpin.conf``, ``routes``, the
runtime directory for its ZeroMQ ``ipc://`` sockets and pid files, and its logs. Every
socket that the packaged configuration puts on a fixed TCP port (5560-5563) or under a
shared runtime directory (``/var/run/pushpin``, ``/var/run/zurl``) is moved into that
directory, and the two TCP ports that remain (client HTTP, publish control) are free
loopback ports. Two instances, or a system Pushpin, therefore never collide.

The runner starts condure (client connections), zurl (requests to the backends),
pushpin-proxy and pushpin-handler. Debian's package leaves zurl to the separate ``zurl``
system service; here the runner starts a private one instead.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.processes import Process, child_env, free_port

PUSHPIN = "pushpin"

#: The ``iss`` claim of the Grip-Sig token Pushpin adds to every proxied request.
SIG_ISS = "pushpin"

_CONF = """\
[global]
include={{libdir}}/internal.conf
rundir={rundir}
ipc_prefix=pushpin-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{http_port}
logdir={logdir}
log_level=2
client_buffer_size=8192
client_maxconn=1000
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
debug=true
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
sig_iss={sig_iss}
sig_key={sig_key}
updates_check=off
# internal.conf (Debian) points these at the zurl system service; use our own zurl.
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out

[handler]
push_in_spec=ipc://{{rundir}}/{{ipc_prefix}}push-in
push_in_sub_specs=ipc://{{rundir}}/{{ipc_prefix}}push-in-sub
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={publish_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=ipc://{{rundir}}/{{ipc_prefix}}command
message_rate=2500
message_hwm=25000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""


def routes_line(backend_ports: Sequence[int]) -> str:
    """One route for every host and path: the backends, tried in order.

    Targets are separated by spaces (a comma starts a target's options). Pushpin does
    not spread requests over them: it uses the first one it can connect to and falls back
    to the next when a connection fails.
    """
    return "* " + " ".join(f"127.0.0.1:{port}" for port in backend_ports) + "\n"


class PushpinProcess(Process):
    """The Pushpin runner and its services; stopping it also removes its directory."""

    def __init__(self, directory: Path, sig_key: str, **kwargs) -> None:
        self.directory = directory
        self.sig_key = sig_key
        super().__init__(**kwargs)

    def stop(self, timeout: float = 15) -> None:
        try:
            super().stop(timeout)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_pushpin(
    backend_ports: Sequence[int], timeout: float = 30
) -> tuple[PushpinProcess, str, str]:
    """Start Pushpin in front of ``backend_ports`` and wait until it takes connections.

    Returns the process, the URL clients connect to, and the ``GRIP_URL`` for Django:
    the publish (control) endpoint, with the issuer and key that Pushpin signs proxied
    requests with, so that django_grip trusts only requests that really came through it.
    """
    if shutil.which(PUSHPIN) is None:
        raise RuntimeError("pushpin is not installed (Debian: apt-get install pushpin)")
    # ipc:// paths must fit in a unix socket address (108 bytes): keep the directory short.
    directory = Path(tempfile.mkdtemp(prefix="pushpin-"))
    rundir, logdir = directory / "run", directory / "log"
    rundir.mkdir()
    logdir.mkdir()
    http_port, publish_port = free_port(), free_port()
    sig_key = secrets.token_urlsafe(24)
    conf = directory / "pushpin.conf"
    conf.write_text(
        _CONF.format(
            rundir=rundir,
            logdir=logdir,
            http_port=http_port,
            publish_port=publish_port,
            sig_iss=SIG_ISS,
            sig_key=sig_key,
        )
    )
    (directory / "routes").write_text(routes_line(backend_ports))
    try:
        proc = PushpinProcess(
            directory,
            sig_key,
            name="pushpin",
            args=[PUSHPIN, "--config", str(conf), "--merge-output"],
            env=child_env(),
            cwd=directory,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        for service in ("zurl", "proxy", "handler"):
            proc.wait_for_output(f"[{service}] started", timeout=timeout)
        deadline = time.monotonic() + timeout
        while not (_accepts(http_port) and _accepts(publish_port)):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pushpin is not listening:\n{proc.output()}")
            time.sleep(0.05)
    except BaseException:
        proc.stop()
        raise
    # ``key``, not ``verify-key``: django_grip 3.5 reads ``entry["key"]`` whenever it
    # checks a Grip-Sig, so a verify-key alone fails every proxied request (KeyError).
    # The key is then also sent as a bearer token when publishing; Pushpin ignores it.
    grip_url = f"http://127.0.0.1:{publish_port}?key={sig_key}&verify-iss={SIG_ISS}"
    return proc, f"http://127.0.0.1:{http_port}", grip_url


def grip_last(grip_channel: str) -> str:
    """The ``Grip-Last`` header Pushpin sends when it refreshes a hold whose
    ``Grip-Channel`` header was ``grip_channel``: each channel given a prev-id, with it
    as last-id (as long as nothing was published there; observed with Pushpin 1.36)."""
    parts = []
    for channel in grip_channel.split(","):
        name, *params = [p.strip() for p in channel.split(";")]
        for param in params:
            if param.startswith("prev-id="):
                parts.append(f"{name}; last-id={param[len('prev-id=') :]}")
    return ", ".join(parts)
