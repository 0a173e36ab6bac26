"""The JobManager against connection floods on loopback: a bounded connection table, idle and
slow connections closed, 503 when every connection is busy, and back-off with one log line
when the daemon runs out of file descriptors. Floods are bounded (at most 1,050 sockets,
127.0.0.1 only) and every socket is closed at the end of its test."""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from sage_jupyter.jobmanager import JobManagerClient
from sage_jupyter.jobmanager.launch import start_daemon

FLOOD = 1050  # more than the 1,024 files the daemon may open in the first test


def open_files_limit(soft: int) -> Callable[[], None]:
    """A preexec_fn that lowers the daemon's own open-file limit (as an operator's ulimit would)."""

    def lower() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return lower


@pytest.fixture
def room_for_sockets() -> Iterator[None]:
    """This process opens up to FLOOD sockets: make sure its own soft limit allows them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def idle_connections(port: int, count: int, one_by_one: bool = False) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte: attempted all at once, or `one_by_one`,
    each given up to a second to be established (so they really are, not still in SYN)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if one_by_one:
                s.settimeout(1.0)
            else:
                s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def get(port: int, token: str, path: str = "/api/v1/info", timeout: float = 15.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"token {token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_legitimate_client_is_answered_while_over_1000_idle_connections_are_attempted(room_for_sockets):
    # The daemon's open-file limit as on many hosts: more idle connections than it may hold.
    daemon = start_daemon(preexec_fn=open_files_limit(1024))
    try:
        client = JobManagerClient(port=daemon.port, token=daemon.token, timeout=15.0)
        with idle_connections(daemon.port, FLOOD, one_by_one=True):
            assert client.list_jobs() == []
            assert client.info()["max_connections"] == 256
            held = len([c for c in psutil.Process(daemon.pid).net_connections("tcp")
                        if c.status == psutil.CONN_ESTABLISHED])
            assert held <= 256 + 2, f"the daemon holds {held} connections"
        client.close()
        assert get(daemon.port, daemon.token)[0] == 200
    finally:
        assert daemon.stop() == 0


def busy_request(port: int, token: str) -> socket.socket:
    """A request whose headers are in and whose body never comes: its connection is busy."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: token " + token.encode()
              + b"\r\nContent-Length: 100\r\n\r\n")
    return s


def test_every_connection_busy_means_a_json_503_and_idle_ones_make_room():
    daemon = start_daemon(args=["--max-connections", "4"])
    busy: list[socket.socket] = []
    try:
        with idle_connections(daemon.port, 3):  # waiting for headers: these give way to newcomers
            time.sleep(0.2)
            assert get(daemon.port, daemon.token)[0] == 200
        for _ in range(4):
            busy.append(busy_request(daemon.port, daemon.token))
            time.sleep(0.1)  # its headers are read before the next one comes
        status, reply = get(daemon.port, daemon.token)
        assert status == 503
        assert reply["error"]["code"] == "too_many_connections" and "--max-connections" in reply["error"]["message"]
        for s in busy:
            s.close()
        busy.clear()
        deadline = time.monotonic() + 10
        while (status := get(daemon.port, daemon.token)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)  # the daemon notices the closed connections on its next loop turns
        assert status == 200
    finally:
        for s in busy:
            s.close()
        assert daemon.stop() == 0


def closed_by_peer(s: socket.socket) -> bool:
    """Wait (bounded) until the daemon closes `s`; True if it did."""
    s.settimeout(15)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_idle_connections_slow_headers_and_slow_bodies_are_closed_after_the_idle_timeout():
    daemon = start_daemon(args=["--idle-timeout", "1"])
    try:
        idle = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        slow_headers = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        slow_headers.sendall(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\n")
        slow_body = busy_request(daemon.port, daemon.token)
        slow_body.sendall(b"x" * 10)
        for s in (idle, slow_headers, slow_body):
            with s:
                assert closed_by_peer(s)
        assert get(daemon.port, daemon.token)[0] == 200
    finally:
        assert daemon.stop() == 0


def test_running_out_of_file_descriptors_backs_off_with_one_log_line(tmp_path, room_for_sockets):
    log_file = tmp_path / "daemon.log"
    daemon = start_daemon(args=["--log-file", str(log_file)], preexec_fn=open_files_limit(64))
    try:
        with idle_connections(daemon.port, 300):
            time.sleep(3.0)  # the daemon meets EMFILE again and again while these stay open
        deadline = time.monotonic() + 15
        while True:  # the flood is gone: the daemon serves again once its back-off ends
            try:
                status = get(daemon.port, daemon.token, timeout=5)[0]
            except OSError:
                status = 0
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
    finally:
        assert daemon.stop() == 0
    lines = log_file.read_text().splitlines()
    assert len([ln for ln in lines if "EMFILE" in ln]) == 1, lines[:20]
    assert len(lines) < 10, lines[:20]  # no traceback per failed accept
