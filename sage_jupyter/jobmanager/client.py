"""Client side of the JobManager protocol: a small HTTP client and `RemoteJobHandle`.

Standard library only (http.client with keep-alive connections, one per thread). Every
request has a timeout; long waits are repeated bounded long-polls, so a daemon that dies
gives a `JobManagerConnectionError` naming its address instead of a hang.
"""

from __future__ import annotations

import atexit
import dataclasses
import http.client
import json
import logging
import sys
import threading
import time
import urllib.parse
import weakref
from typing import Any, Callable

from ..runtime.errors import PipelineError
from ..runtime.job import CleanupReport, ErrorInfo, JobState, JobStatus, StatusListener, status_from_dict
from ..runtime.threads import spawn
from .protocol import API_PREFIX, DEFAULT_PORT, auth_header

log = logging.getLogger("sage_jupyter.jobmanager.client")

DEFAULT_TIMEOUT_S = 10.0  # for one request, on top of any long-poll wait it asks for
LONG_POLL_S = 5.0  # the longest single wait; wait() repeats them
STALE_AFTER_S = 20.0  # reconnect rather than reuse a connection idle this long
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
        self._conns: "weakref.WeakSet[_Connection]" = weakref.WeakSet()
        self._lock = threading.Lock()

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

    def submit(self, envelope: bytes) -> dict[str, Any]:
        # A fresh connection and no retry: a submission must never run twice.
        return self.request("POST", "/jobs", body=envelope, fresh=True, retry=False)

    def list_jobs(self) -> list[dict[str, Any]]:
        return self.request("GET", "/jobs")["jobs"]

    def job(self, job_id: str, wait: float = 0.0, after: int = -1, until: str = "change") -> dict[str, Any]:
        query: dict[str, Any] = {"wait": f"{wait:.3f}", "after": after, "until": until} if wait > 0 else {}
        return self.request("GET", f"/jobs/{_quote(job_id)}", query, wait=wait)

    def stop(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{_quote(job_id)}/stop", body=b"")

    def heartbeat(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{_quote(job_id)}/heartbeat", body=b"")

    def output(self, job_id: str, since: int = 0, wait: float = 0.0) -> dict[str, Any]:
        query: dict[str, Any] = {"since": since}
        if wait > 0:
            query["wait"] = f"{wait:.3f}"
        return self.request("GET", f"/jobs/{_quote(job_id)}/output", query, wait=wait)

    def handle(self, job_id: str, output: OutputSink | None = None) -> "RemoteJobHandle":
        """A handle on a job already on the daemon (submitted by another client, say)."""
        reply = self.job(job_id)
        return RemoteJobHandle(self, job_id, reply["status"]["name"], reply=reply, output=output)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    def __repr__(self) -> str:
        return f"<JobManagerClient {self.address}>"


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def default_output(stream: str, text: str) -> None:
    """Forward a remote job's text to this process's stdout or stderr."""
    (sys.stderr if stream == "stderr" else sys.stdout).write(text)


# ---- the handle ---------------------------------------------------------------------

_cancel_at_exit: "weakref.WeakSet[RemoteJobHandle]" = weakref.WeakSet()
_exit_hooked = False


def _cancel_at_exit_of_this_process(handle: "RemoteJobHandle") -> None:
    global _exit_hooked
    _cancel_at_exit.add(handle)
    if not _exit_hooked:
        atexit.register(_stop_cancellable_jobs)
        _exit_hooked = True


def _stop_cancellable_jobs() -> None:
    """Interpreter exit: a `cancel_on_disconnect` job goes now, not a heartbeat timeout later."""
    for handle in list(_cancel_at_exit):
        if handle._final is None:
            try:
                handle._client.request("POST", f"/jobs/{_quote(handle.job_id)}/stop", body=b"", retry=False,
                                       timeout=1.0)
            except (JobManagerError, JobManagerConnectionError):
                pass


class RemoteJobHandle:
    """A job running on a JobManager, with the interface of a local `JobHandle` (plus
    `output()`), so views written for local jobs show remote ones too.

    Every call goes over the wire; a terminal snapshot never changes and is cached.
    `subscribe` polls the status at a modest rate on one daemon thread per handle. It is
    deliberately not a `JobHandle` subclass: views tell polled handles from local ones
    by that, and poll these more gently.
    """

    POLL_INTERVAL_S = 0.25  # at most 4 status requests per second for subscribers

    def __init__(self, client: JobManagerClient, job_id: str, name: str, *, reply: dict[str, Any] | None = None,
                 cancel_on_disconnect: bool = False, heartbeat_interval: float = 1.0,
                 output: OutputSink | None = None) -> None:
        self._client = client
        self._job_id = job_id
        self._name = name
        self._final: JobStatus | None = None
        self._lock = threading.Lock()
        self._listeners: list[StatusListener] = []
        self._poller: threading.Thread | None = None
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._poll_version = -1
        self._heartbeat_interval = heartbeat_interval
        self._sink: OutputSink | None = None
        self._sink_generation = 0
        self._follower: threading.Thread | None = None
        self._output_done = threading.Event()
        self._output_done.set()
        if reply is not None:
            self._parse(reply)
        if cancel_on_disconnect:
            self._start(self._send_heartbeats, "heartbeat")
            _cancel_at_exit_of_this_process(self)
        if output is not None:
            self.forward_output(output)

    def _start(self, target: Callable[[], None], role: str) -> threading.Thread:
        # Named "sage..." so leak checks see them; they end with the job or at close().
        def run() -> None:
            try:
                target()
            finally:
                self._client.release()

        thread = spawn(run, f"sage-remote:{self._job_id}:{role}", start=False)
        self._threads.append(thread)
        thread.start()
        return thread

    # ---- identity -----------------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def location(self) -> str:
        return self._client.address

    # ---- state --------------------------------------------------------------------

    def _parse(self, reply: dict[str, Any]) -> JobStatus:
        status = dataclasses.replace(status_from_dict(reply["status"]), location=self._client.address)
        if status.state.terminal:
            self._final = status
        return status

    def status(self) -> JobStatus:
        if self._final is not None:
            return self._final
        return self._parse(self._client.job(self._job_id))

    @property
    def state(self) -> JobState:
        return self.status().state

    @property
    def done(self) -> bool:
        return self.status().state.terminal

    @property
    def cleanup_report(self) -> CleanupReport | None:
        return self.status().cleanup_report

    @property
    def error(self) -> ErrorInfo | None:
        return self.status().error

    def _wait(self, until: str, timeout: float | None) -> JobStatus:
        """Repeated bounded long-polls until the daemon says `until` holds."""
        if self._final is not None:
            return self._final
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - time.monotonic())
            if left <= 0:
                state = self.state
                raise TimeoutError(f"job {self._name!r} on {self.location} did not end within "
                                   f"{timeout:g} s (state {state.value})")
            reply = self._client.job(self._job_id, wait=left, until=until)
            status = self._parse(reply)
            if status.state.terminal or (until == "settled" and reply.get("settled")):
                return status

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job ended and its services were cleaned on the JobManager.

        Raises `PipelineError` naming the remote stage if it failed, `TimeoutError` if
        `timeout` passed, `JobManagerConnectionError` if the daemon went away. A job
        without autostop returns once its tasks ended (its services stay up until stop).
        """
        status = self._wait("settled", timeout)
        if status.state.terminal:
            self._output_done.wait(2.0)  # let the forwarded output catch up first
        if status.state is JobState.FAILED and status.error is not None:
            raise PipelineError(status.error, self._name)
        return status.state

    def stop(self, wait: bool = True, timeout: float | None = None) -> JobState:
        """Ask the JobManager to stop the job; with `wait`, until it was cleaned up."""
        if self._final is not None:
            return self._final.state
        status = self._parse(self._client.stop(self._job_id))
        if not wait:
            return status.state
        try:
            status = self._wait("terminal", timeout)
        except TimeoutError:
            return self.state
        self._output_done.wait(2.0)  # the forwarded output is complete too
        return status.state

    def output(self, stream: str | None = None) -> str:
        """Everything the job's stages and services printed (and logged) so far on the
        JobManager; `stream` "stdout" or "stderr" picks one."""
        reply = self._client.output(self._job_id)
        return "".join(text for _, s, text in reply["chunks"] if stream is None or s == stream)

    # ---- observing ----------------------------------------------------------------

    def subscribe(self, listener: StatusListener) -> Callable[[], None]:
        """Call `listener(snapshot)` now and when the job's status changes (polled over
        the wire from a daemon thread, at most 4 times a second); returns an unsubscribe
        function."""
        reply = self._client.job(self._job_id)
        listener(self._parse(reply))
        with self._lock:
            self._listeners.append(listener)
            if self._poller is None and self._final is None:
                self._poll_version = reply["version"]
                self._poller = self._start(self._poll, "status")

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _poll(self) -> None:
        version, failures = self._poll_version, 0
        while not self._closed.is_set():
            with self._lock:
                listeners = list(self._listeners)
                if not listeners:
                    self._poller = None
                    return
            t0 = time.monotonic()
            try:
                reply = self._client.job(self._job_id, wait=1.0, after=version, until="change")
                failures = 0
            except (JobManagerError, JobManagerConnectionError) as exc:
                failures += 1
                log.warning("status of %s: %s", self._job_id, exc)
                if failures >= 3 or isinstance(exc, JobManagerError):
                    break
                self._closed.wait(0.5 * failures)
                continue
            status = self._parse(reply)
            if reply["version"] != version or status.state.terminal:
                version = reply["version"]
                for fn in listeners:
                    try:
                        fn(status)
                    except Exception:  # a view's bug must not stop the others
                        log.exception("status listener failed")
            if status.state.terminal:
                break
            self._closed.wait(max(0.0, self.POLL_INTERVAL_S - (time.monotonic() - t0)))
        with self._lock:
            self._poller = None

    def _send_heartbeats(self) -> None:
        failures = 0
        while not self._closed.wait(self._heartbeat_interval) and self._final is None:
            try:
                reply = self._client.heartbeat(self._job_id)
                failures = 0
            except (JobManagerError, JobManagerConnectionError) as exc:
                failures += 1
                if failures >= 3 or isinstance(exc, JobManagerError):
                    return
                continue
            if JobState(reply["state"]).terminal:
                return

    def forward_output(self, sink: OutputSink) -> None:
        """Send the job's output, from its beginning, to `sink(stream, text)` as it comes
        (e.g. a notebook widget's output area). Calling it again moves the forwarding to
        the new sink, which also gets everything from the beginning."""
        with self._lock:
            self._sink = sink
            self._sink_generation += 1
            if self._follower is not None:
                return  # the running follower picks up the new sink
            self._output_done.clear()
            self._follower = self._start(self._follow_output, "output")

    def _follow_output(self) -> None:
        generation, since, failures = -1, 0, 0
        sink: OutputSink | None = None
        try:
            while not self._closed.is_set():
                with self._lock:
                    if self._sink_generation != generation:
                        generation, since, sink = self._sink_generation, 0, self._sink
                try:
                    reply = self._client.output(self._job_id, since=since, wait=1.0)
                    failures = 0
                except (JobManagerError, JobManagerConnectionError):
                    failures += 1
                    if failures >= 3:
                        return
                    self._closed.wait(0.5 * failures)
                    continue
                for _, stream, text in reply["chunks"]:
                    try:
                        sink(stream, text)  # type: ignore[misc]
                    except Exception:  # a broken sink must not stop the job's output
                        log.exception("output sink failed")
                since = reply["next"]
                if reply["done"]:
                    with self._lock:
                        if self._sink_generation == generation:
                            return
                    # the sink changed as the job ended: the new one gets everything too
        finally:
            with self._lock:
                self._follower = None
            self._output_done.set()

    def close(self) -> None:
        """Stop this handle's background threads (the remote job is not touched)."""
        self._closed.set()
        _cancel_at_exit.discard(self)
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me:
                thread.join(DEFAULT_TIMEOUT_S + 1.0)

    def __repr__(self) -> str:
        state = self._final.state.value if self._final is not None else "?"
        return f"<RemoteJobHandle {self._name!r} id={self._job_id} on {self.location} state={state}>"
