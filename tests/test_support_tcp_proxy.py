"""The cuttable TCP proxy the browser tests drop streams with (tests/support/tcp_proxy.py)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import CuttableProxy


class _Echo(socketserver.BaseRequestHandler):
    server: _EchoServer

    def handle(self) -> None:
        with self.server.changed:
            self.server.accepted += 1
            self.server.changed.notify_all()
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.accepted = 0
        self.changed = threading.Condition()

    def wait_accepted(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.accepted >= count, timeout=10)


@pytest.fixture
def echo_server() -> Iterator[_EchoServer]:
    """A loopback echo server that counts the connections it accepted."""
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def upstream(echo_server: _EchoServer) -> int:
    return int(echo_server.server_address[1])


@pytest.fixture
def proxy(upstream: int) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(upstream)
    yield proxy
    proxy.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def echo(conn: socket.socket, payload: bytes) -> bytes:
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def dropped(conn: socket.socket) -> bool:
    """The peer ended the connection: a read sees EOF or a reset, not a timeout."""
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_proxy_forwards_both_ways(proxy):
    with connect(proxy.port) as conn:
        assert echo(conn, b"hello through the proxy") == b"hello through the proxy"


def test_cut_with_open_connections_drops_them_and_refuses_new_ones(proxy):
    # Python 3.12.1+ Server.wait_closed() waits for every open connection: a cut that
    # waited before dropping them never returned (its call timed out).
    conns = [connect(proxy.port) for _ in range(3)]
    try:
        for conn in conns:
            assert echo(conn, b"ping") == b"ping"
        proxy.cut()
        assert all(dropped(conn) for conn in conns)
        with pytest.raises(ConnectionRefusedError):
            connect(proxy.port).close()
    finally:
        for conn in conns:
            conn.close()


def test_cut_with_a_silent_connection_returns(proxy, echo_server):
    # A connection that never sent a byte is held open by the proxy all the same.
    with connect(proxy.port) as conn:
        assert echo(conn, b"x") == b"x"
        with connect(proxy.port) as silent:
            echo_server.wait_accepted(2)  # the proxy forwards it
            proxy.cut()
            assert dropped(silent)
        assert dropped(conn)


def test_open_after_cut_forwards_again(proxy):
    with connect(proxy.port) as conn:
        assert echo(conn, b"before") == b"before"
        proxy.cut()
        assert dropped(conn)
    proxy.open()
    with connect(proxy.port) as conn:
        assert echo(conn, b"after") == b"after"
    proxy.cut()
    proxy.cut()  # cutting twice is harmless


def test_close_with_open_connections_returns(upstream):
    proxy = CuttableProxy(upstream)
    with connect(proxy.port) as conn:
        assert echo(conn, b"x") == b"x"
        proxy.close()
        assert dropped(conn)
