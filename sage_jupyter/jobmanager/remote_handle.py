"""`RemoteJobHandle`: a job on a JobManager with the interface of a local `JobHandle`.

One poller thread per handle follows the job: each of its long-polls brings the status and,
when someone forwards the output, the next page of output too, so subscribers and the output
sink are fed by the same requests. A heartbeat thread runs only for `cancel_on_disconnect`.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import time
import weakref
from typing import Any, Callable

from ..runtime.errors import PipelineError
from ..runtime.peek import check_peek_args
from ..runtime.job import CleanupReport, ErrorInfo, JobState, JobStatus, StatusListener, status_from_dict
from ..runtime.threads import spawn
from .transport import (
    DEFAULT_TIMEOUT_S,
    LONG_POLL_S,
    JobManagerClient,
    JobManagerConnectionError,
    JobManagerError,
    OutputSink,
    quote,
)

log = logging.getLogger("sage_jupyter.jobmanager.client")

POLL_WAIT_S = 1.0  # one long-poll of the poller
FRESH_FOR_S = 0.5  # status() answers from the poller's last snapshot while this recent (counts move meanwhile)

_cancel_at_exit: weakref.WeakSet[RemoteJobHandle] = weakref.WeakSet()
_exit_hooked = False


def _cancel_at_exit_of_this_process(handle: RemoteJobHandle) -> None:
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
                handle._client.request("POST", f"/jobs/{quote(handle.job_id)}/stop", body=b"", retry=False,
                                       timeout=1.0)
            except (JobManagerError, JobManagerConnectionError):
                pass


class RemoteJobHandle:
    """A job running on a JobManager, with the interface of a local `JobHandle` (plus
    `output()` and `forward_output()`), so views written for local jobs show remote ones too.

    A terminal snapshot never changes and is cached. It is deliberately not a `JobHandle`
    subclass: views tell polled handles from local ones by that, and poll these more gently.
    """

    POLL_INTERVAL_S = 0.25  # at most 4 polls per second, unless output pages are waiting

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
        self._polled: tuple[float, JobStatus] | None = None  # (when, snapshot) from the poller
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._version = -1
        self._heartbeat_interval = heartbeat_interval
        self._sink: OutputSink | None = None
        self._sink_generation = 0
        self._output_done = threading.Event()
        self._output_done.set()
        if reply is not None:
            self._parse(reply)
            self._version = int(reply.get("version", -1))
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
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
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
        """The job's snapshot: cached once terminal, the poller's latest while it is fresh,
        else asked over the wire."""
        if self._final is not None:
            return self._final
        polled = self._polled
        if polled is not None and self._poller is not None and time.monotonic() - polled[0] < FRESH_FOR_S:
            return polled[1]
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
                state = self._parse(self._client.job(self._job_id)).state
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
            return self._parse(self._client.job(self._job_id)).state
        self._output_done.wait(2.0)  # the forwarded output is complete too
        return status.state

    def output(self, stream: str | None = None) -> str:
        """Everything the job's stages and services printed (and logged) on the JobManager
        and that it still keeps; `stream` "stdout" or "stderr" picks one. Read page by page."""
        parts: list[str] = []
        since = 0
        while True:
            reply = self._client.output(self._job_id, since=since)
            parts.extend(text for _, s, text in reply["chunks"] if stream is None or s == stream)
            since = reply["next"]
            if not reply.get("more"):
                return "".join(parts)

    def peek(self, stage: str | None = None, n: int = 5) -> dict[str, list[str]]:
        """The newest records of each stage on the JobManager, as `JobHandle.peek` (same
        errors: `KeyError` for an unknown stage, `ValueError` for a bad `n`)."""
        labels = [s.name for s in self.status().stages]
        check_peek_args(stage, n, labels)
        try:
            peeked: dict[str, list[str]] = self._client.peek(self._job_id, stage, n)["peek"]
        except JobManagerError as exc:
            if exc.code == "unknown_stage":
                raise KeyError(exc.message) from None
            raise
        return peeked

    # ---- observing: one poller for status and output --------------------------------

    def subscribe(self, listener: StatusListener) -> Callable[[], None]:
        """Call `listener(snapshot)` now and when the job's status changes (polled over
        the wire from a daemon thread, at most 4 times a second); returns an unsubscribe
        function."""
        listener(self.status() if self._final is not None else self._parse(self._client.job(self._job_id)))
        with self._lock:
            self._listeners.append(listener)
        self._ensure_poller()

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def forward_output(self, sink: OutputSink) -> None:
        """Send the job's output, from its beginning, to `sink(stream, text)` as it comes
        (e.g. a notebook widget's output area). Calling it again moves the forwarding to
        the new sink, which also gets everything from the beginning."""
        with self._lock:
            self._sink = sink
            self._sink_generation += 1
            self._output_done.clear()
        self._ensure_poller()

    def _ensure_poller(self) -> None:
        with self._lock:
            if self._poller is None and not self._closed.is_set():
                self._poller = self._start(self._poll, "poll")

    def _poll(self) -> None:
        generation, since, failures = -1, 0, 0
        sink: OutputSink | None = None
        notified_terminal = False
        try:
            while not self._closed.is_set():
                with self._lock:
                    listeners = list(self._listeners)
                    if self._sink_generation != generation:  # a new sink gets everything from the start
                        generation, since, sink = self._sink_generation, 0, self._sink
                    output_wanted = sink is not None and not self._output_done.is_set()
                    if not listeners and not output_wanted:
                        self._poller = None  # under the lock: a new subscriber starts a new poller
                        return
                t0 = time.monotonic()
                try:
                    reply = self._client.job(self._job_id, wait=POLL_WAIT_S, after=self._version, until="change",
                                             output_since=since if output_wanted else None)
                    failures = 0
                except (JobManagerError, JobManagerConnectionError) as exc:
                    failures += 1
                    log.warning("polling %s: %s", self._job_id, exc)
                    if failures >= 3 or isinstance(exc, JobManagerError):
                        return
                    self._closed.wait(0.5 * failures)
                    continue
                status = self._parse(reply)
                self._polled = (time.monotonic(), status)
                if int(reply["version"]) != self._version or (status.state.terminal and not notified_terminal):
                    self._version = int(reply["version"])
                    notified_terminal = status.state.terminal
                    for fn in listeners:
                        try:
                            fn(status)
                        except Exception:
                            log.exception("status listener failed")
                more = False
                page = reply.get("output") if output_wanted else None
                if page is not None and sink is not None:
                    since, more = self._deliver(page, sink), bool(page.get("more"))
                    if page.get("done"):
                        with self._lock:
                            if self._sink_generation == generation:
                                self._output_done.set()
                if status.state.terminal and not more:
                    with self._lock:
                        if self._output_done.is_set():  # else a new sink came as the job ended
                            self._poller = None
                            return
                if not more:
                    self._closed.wait(max(0.0, self.POLL_INTERVAL_S - (time.monotonic() - t0)))
        finally:
            with self._lock:
                if self._poller is threading.current_thread():
                    self._poller = None
                self._polled = None
            self._output_done.set()

    @staticmethod
    def _deliver(page: dict[str, Any], sink: OutputSink) -> int:
        """Hand one page to the sink; returns the seq to ask for next."""
        if page.get("missed"):
            sink("stderr", f"[sage_jupyter: {page['missed']} chunk(s) of this job's output were dropped by the "
                           "JobManager before they were read]\n")
        for _, stream, text in page["chunks"]:
            try:
                sink(stream, text)
            except Exception:
                log.exception("output sink failed")
        return int(page["next"])

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
