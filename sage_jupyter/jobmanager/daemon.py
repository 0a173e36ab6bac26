"""The JobManager daemon process: serves `handlers.make_app(manager)` on tornado, with a bounded
number of connections, until SIGTERM or SIGINT, then stops every job, cleans every service and
returns within about 4 s.

Connections are bounded: at most `max_connections` open; idle ones, slow headers and slow
bodies are closed after `idle_timeout`; when the table is full the connection that has waited
longest for a request's headers makes room, and if every one is busy the newcomer gets a 503.
Running out of file descriptors (EMFILE) pauses accepting with back-off and one log line,
instead of tornado's accept loop spinning.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import logging
import os
import signal
import socket
import time
from typing import Any, Callable

from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets

from .handlers import make_app
from .manager import JobManager
from .output import OutputCapture
from .protocol import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, ProtocolError

log = logging.getLogger("sage_jupyter.jobmanager")

HEARTBEAT_CHECK_MS = 500
ACCEPT_BACKOFF_S = (0.1, 2.0)  # first and longest pause after EMFILE
EMFILE_LOG_EVERY_S = 60.0
REFUSAL_DRAIN_S = 1.0  # how long a refused connection may still send before it is closed


class _RequestTracker(httputil.HTTPMessageDelegate):
    """Passes one request through, marking its connection busy once its headers are in."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, on_headers: Callable[[], None]) -> None:
        self._inner = inner
        self._on_headers = on_headers

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self._on_headers()
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        self._inner.finish()

    def on_connection_close(self) -> None:
        self._inner.on_connection_close()


class BoundedHTTPServer(HTTPServer):
    """An HTTPServer that keeps at most `max_connections` open and accepts with back-off."""

    max_connections = DEFAULT_MAX_CONNECTIONS

    def initialize(self, *args: Any, max_connections: int = DEFAULT_MAX_CONNECTIONS, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self._open: set[IOStream] = set()
        self._waiting: collections.OrderedDict[IOStream, float] = collections.OrderedDict()  # no request yet
        self._listening: list[socket.socket] = []
        self._backoff = ACCEPT_BACKOFF_S[0]
        self._emfile_logged_at = -EMFILE_LOG_EVERY_S
        self.refused = 0

    # ---- accepting ----------------------------------------------------------------

    def listen_on(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.setblocking(False)
            self._listening.append(sock)
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(128):  # then let the loop serve the connections it has
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                self._pause_accepting(sock)
                return
            self._backoff = ACCEPT_BACKOFF_S[0]
            conn.setblocking(False)
            self.handle_stream(IOStream(conn, max_buffer_size=self.max_buffer_size,
                                        read_chunk_size=self.read_chunk_size), address)

    def _pause_accepting(self, sock: socket.socket) -> None:
        """Out of file descriptors: stop watching the socket for a while (the backlog waits)."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        self._evict_one()  # frees a descriptor for the next accept
        now = time.monotonic()
        if now - self._emfile_logged_at >= EMFILE_LOG_EVERY_S:
            self._emfile_logged_at = now
            log.error("out of file descriptors (EMFILE) with %d connections open: pausing accept, with back-off "
                      "up to %.1f s; raise the open-file limit or lower --max-connections (%d). Not repeated "
                      "for %.0f s", len(self._open), ACCEPT_BACKOFF_S[1], self.max_connections, EMFILE_LOG_EVERY_S)
        delay, self._backoff = self._backoff, min(self._backoff * 2, ACCEPT_BACKOFF_S[1])
        loop.call_later(delay, self._resume_accepting, sock)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if sock in self._listening:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listening.clear()
        super().stop()

    # ---- the connection table -----------------------------------------------------

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if len(self._open) >= self.max_connections and not self._evict_one():
            self.refused += 1
            asyncio.ensure_future(_refuse(stream, self.max_connections))
            return
        self._open.add(stream)
        self._waiting[stream] = time.monotonic()
        super().handle_stream(stream, address)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a request (idle or trickling headers)."""
        if not self._waiting:
            return False
        stream, _ = self._waiting.popitem(last=False)
        self._open.discard(stream)
        stream.close()
        return True

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        stream = _stream_of(server_conn)
        if stream in self._open:  # waiting for its next request's headers
            self._waiting[stream] = time.monotonic()
            self._waiting.move_to_end(stream)

        def busy() -> None:  # its headers are in: no longer a candidate to make room
            self._waiting.pop(stream, None)

        return _RequestTracker(super().start_request(server_conn, request_conn), busy)

    def on_close(self, server_conn: object) -> None:
        stream = _stream_of(server_conn)
        self._open.discard(stream)
        self._waiting.pop(stream, None)
        super().on_close(server_conn)


def _stream_of(server_conn: object) -> IOStream:
    assert isinstance(server_conn, HTTP1ServerConnection)  # what HTTPServer hands its delegate
    return server_conn.stream


async def _refuse(stream: IOStream, limit: int) -> None:
    """A 503 in JSON on a connection the table has no room for, then close it."""
    err = ProtocolError(503, "too_many_connections", f"the JobManager already serves {limit} busy connections "
                        "(--max-connections); retry in a moment")
    body = json.dumps(err.to_dict()).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
    try:
        await stream.write(head + body)
        sock = stream.socket
        if sock is not None:
            sock.shutdown(socket.SHUT_WR)  # the client reads the 503, then EOF
        # Closing with unread request bytes would reset the connection before the client read the reply.
        await asyncio.wait_for(stream.read_until_close(), REFUSAL_DRAIN_S)
    except Exception:  # noqa: BLE001 - the client went away or kept sending: it is closed either way
        pass
    finally:
        stream.close()


async def serve(manager: JobManager, host: str, port: int, announce: Callable[[str, int], None] | None = None,
                max_connections: int = DEFAULT_MAX_CONNECTIONS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
                ) -> None:
    """Serve until SIGTERM/SIGINT, then stop every job and return."""
    aio = asyncio.get_running_loop()
    manager.attach_loop(aio)
    manager.max_connections = max_connections
    shutdown = asyncio.Event()
    sockets = bind_sockets(port, address=host)
    # Tornado's own body limit is off (ours is checked by the handlers, as chunks arrive), so
    # every refusal is our JSON 413 and not tornado's bare 400.
    server = BoundedHTTPServer(make_app(manager), max_body_size=2**62, body_timeout=idle_timeout,
                               idle_connection_timeout=idle_timeout, decompress_request=False,
                               max_connections=max_connections)
    server.listen_on(sockets)
    bound = sockets[0].getsockname()[1]
    for sig in (signal.SIGTERM, signal.SIGINT):
        aio.add_signal_handler(sig, request_shutdown, manager, shutdown, sig)
    watchdog = PeriodicCallback(manager.check_heartbeats, HEARTBEAT_CHECK_MS)
    watchdog.start()
    capture = OutputCapture()
    capture.install()
    try:
        if announce is not None:
            announce(host, bound)
        await shutdown.wait()
        t0 = time.monotonic()
        server.stop()
        watchdog.stop()
        await asyncio.wrap_future(manager.pool.submit(manager.stop_all_jobs))
        manager.notify_everyone()  # answer pending long-polls with the final states
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(server.close_all_connections(), 0.5)
        except asyncio.TimeoutError:
            log.info("some connections did not close in time")
        log.info("shut down in %.2f s", time.monotonic() - t0)
    finally:
        capture.uninstall()
        manager.pool.shutdown(0.5)
        manager.history.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            aio.remove_signal_handler(sig)


def request_shutdown(manager: JobManager, shutdown: asyncio.Event, sig: int | None = None) -> None:
    if manager.closing:  # a second signal: the operator wants out now
        log.warning("second signal: exiting at once")
        os._exit(1)
    name = signal.Signals(sig).name if sig else "request"
    log.info("%s: stopping %d job(s) and shutting down", name, manager.live_count())
    manager.closing = True
    shutdown.set()
