"""The client's transport to a JobManager: `JobManagerClient` (one JSON request per call,
one keep-alive connection per thread) and its errors.

Standard library only (http.client with keep-alive connections, one per thread). Every
request has a timeout; long waits are repeated bounded long-polls, so a daemon that dies
gives a `JobManagerConnectionError` naming its address instead of a hang.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse
import weakref
from typing import TYPE_CHECKING, Any, Callable

from .protocol import API_PREFIX, DEFAULT_PORT, auth_header

if TYPE_CHECKING:
    from .remote_handle import RemoteJobHandle

DEFAULT_TIMEOUT_S = 10.0  # for one request, on top of any long-poll wait it asks for
LONG_POLL_S = 5.0  # the longest single wait; wait() repeats them
STALE_AFTER_S = 15.0  # reconnect rather than reuse a connection idle this long (the daemon closes at 20 s)
OutputSink = Callable[[str, str], None]


class JobManagerError(RuntimeError):
    """The JobManager refused a request: `status` (HTTP), `code` (a stable word), `message`."""

    def __init__(self, address: str, status: int, code: str, message: str) -> None:
        super().__init__(f"JobManager at {address}: {message} [{status} {code}]")
        self.address = address
        self.status = status
        self.code = code
        self.message = message


class JobManagerConnectionError(ConnectionError):
    """The JobManager could not be reached, or the connection broke, or it did not answer."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"JobManager at {address}: {message}")
        self.address = address


class _Connection(http.client.HTTPConnection):
    """A keep-alive connection that closes itself when dropped, e.g. with the
    thread-local storage of a thread that ended."""

    last_used = 0.0

    def __del__(self) -> None:
        self.close()


class JobManagerClient:
    """Talks to one JobManager. Thread-safe: each thread uses its own keep-alive connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.host = host
        self.port = port
        self.timeout = float(timeout)
        self._headers = auth_header(token)
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._max_body_bytes: int | None = None  # announced by the daemon's /info, asked once

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ---- transport --------------------------------------------------------------------

    def _connection(self, fresh: bool) -> tuple[_Connection, bool]:
        """(connection, reused) for this thread."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and (fresh or time.monotonic() - conn.last_used > STALE_AFTER_S):
            conn.close()
            conn = None
        if conn is None:
            conn = _Connection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
            return conn, False
        return conn, conn.sock is not None

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: bytes | None = None,
                wait: float = 0.0, fresh: bool = False, retry: bool = True,
                timeout: float | None = None) -> dict[str, Any]:
        """One JSON request; raises JobManagerError (refused) or JobManagerConnectionError.
        It may take `timeout` (default: the client's) plus the long-poll `wait` it asks for."""
        url = API_PREFIX + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        timeout = (self.timeout if timeout is None else timeout) + wait
        for attempt in (0, 1):
            conn, reused = self._connection(fresh or attempt > 0)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except TimeoutError:
                conn.close()
                raise JobManagerConnectionError(
                    self.address, f"no answer to {method} {url} within {timeout:g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A keep-alive connection the server closed while idle: try once on a new one.
                if reused and retry and attempt == 0:
                    continue
                raise JobManagerConnectionError(self.address, self._describe(exc, method, url)) from None
            conn.last_used = time.monotonic()
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
            return self._decode(resp.status, data)
        raise AssertionError("unreachable")  # the loop either returns or raises

    def _describe(self, exc: BaseException, method: str, url: str) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is sage-jobmanager running there?)"
        if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
            return f"the connection was lost during {method} {url} (did the daemon stop?): {exc}"
        return f"{method} {url} failed: {type(exc).__name__}: {exc}"

    def _decode(self, status: int, data: bytes) -> dict[str, Any]:
        try:
            reply = json.loads(data) if data else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise JobManagerError(self.address, status, "bad_response",
                                  f"non-JSON reply: {data[:200]!r}") from None
        if status >= 400:
            err = reply.get("error") if isinstance(reply, dict) else None
            if isinstance(err, dict):
                raise JobManagerError(self.address, status, str(err.get("code")), str(err.get("message")))
            raise JobManagerError(self.address, status, "http_error", f"HTTP {status}: {data[:200]!r}")
        if not isinstance(reply, dict):
            raise JobManagerError(self.address, status, "bad_response", f"reply is not an object: {data[:200]!r}")
        return reply

    def release(self) -> None:
        """Close the calling thread's connection (background threads do, as they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Close every connection this client opened (from any thread)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()

    # ---- endpoints --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self.request("GET", "/info")

    def max_body_bytes(self) -> int:
        """The largest request body the daemon accepts (from its /info, asked once)."""
        if self._max_body_bytes is None:
            self._max_body_bytes = int(self.info()["max_body_bytes"])
        return self._max_body_bytes

    def submit(self, envelope: bytes) -> dict[str, Any]:
        # Checked here: a daemon refuses an oversized body before reading it, and the client,
        # still sending, would see only a broken connection instead of the 413.
        limit = self.max_body_bytes()
        if len(envelope) > limit:
            raise JobManagerError(self.address, 413, "too_large",
                                  f"the submission is {len(envelope):,} bytes, over this JobManager's limit of "
                                  f"{limit:,} bytes (sage-jobmanager --max-body-mb): pass large data through a "
                                  "source that reads it on the JobManager, not inside the pipeline's functions")
        # A fresh connection and no retry: a submission must never run twice.
        return self.request("POST", "/jobs", body=envelope, fresh=True, retry=False)

    def list_jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.request("GET", "/jobs")["jobs"]
        return jobs

    def job(self, job_id: str, wait: float = 0.0, after: int = -1, until: str = "change",
            output_since: int | None = None) -> dict[str, Any]:
        """The job's status reply; with `output_since`, also a page of its output from there
        (under "output"), and a long-poll that returns on new output as well."""
        query: dict[str, Any] = {"wait": f"{wait:.3f}", "after": after, "until": until} if wait > 0 else {}
        if output_since is not None:
            query["output_since"] = output_since
        return self.request("GET", f"/jobs/{quote(job_id)}", query, wait=wait)

    def stop(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{quote(job_id)}/stop", body=b"")

    def heartbeat(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{quote(job_id)}/heartbeat", body=b"")

    def peek(self, job_id: str, stage: str | None = None, n: int = 5) -> dict[str, Any]:
        query: dict[str, Any] = {"n": n} if stage is None else {"n": n, "stage": stage}
        return self.request("GET", f"/jobs/{quote(job_id)}/peek", query)

    def output(self, job_id: str, since: int = 0, wait: float = 0.0) -> dict[str, Any]:
        query: dict[str, Any] = {"since": since}
        if wait > 0:
            query["wait"] = f"{wait:.3f}"
        return self.request("GET", f"/jobs/{quote(job_id)}/output", query, wait=wait)

    def handle(self, job_id: str, output: OutputSink | None = None) -> RemoteJobHandle:
        """A handle on a job already on the daemon (submitted by another client, say)."""
        from .remote_handle import RemoteJobHandle

        reply = self.job(job_id)
        return RemoteJobHandle(self, job_id, reply["status"]["name"], reply=reply, output=output)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    def __repr__(self) -> str:
        return f"<JobManagerClient {self.address}>"


def quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def default_output(stream: str, text: str) -> None:
    """Forward a remote job's text to this process's stdout or stderr."""
    (sys.stderr if stream == "stderr" else sys.stdout).write(text)


