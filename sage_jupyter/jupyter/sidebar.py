"""The comm target "sage_jupyter" that the JupyterLab sidebar talks to.

The kernel PUSHES the job list over every open sidebar comm: once when the comm opens,
then whenever a job changed (throttled to at most `MAX_PUSHES_PER_S` a second, and only
when the list differs from the last one sent). Pushes are plain comm messages, without
busy/idle status, so the sidebar never makes a busy kernel look idle. The frontend sends
only user actions and a "list" when it (re)connects:

    {"action": "list"} | {"action": "stop", "job_id": ID} | {"action": "stop_all"}
    | {"action": "clear_finished"} | {"action": "kill_orphans", "names"?: [NAME, ...]}

and each is answered with the list ``{"jobs": [...], "orphans": [...], "pid", "palette"}``
(plus "error" when it failed). A job entry carries what the sidebar shows, already worked
out (`job_entry`), so the frontend computes nothing; "orphans" are the Ray actors of dead
kernels found by the last look (orphan_actors.py). The labextension also sends a job
widget's Stop click here ("stop"), because a comm it opened is handled on a subshell while
another cell runs (busy_stop.py).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
from typing import Any

from ..runtime.job import JobStatus
from . import busy_stop, templates
from .jobs import JOBS, TrackedJob, adopt_plain_jobs
from .orphan_actors import ORPHANS, NoRay
from .palette import palette_css

TARGET = "sage_jupyter"
MAX_PUSHES_PER_S = 10
RUNNING_REFRESH_S = 1.0  # a running job's elapsed time moves even when nothing else does
log = logging.getLogger("sage_jupyter.jupyter")


def _error(err: Any) -> dict[str, str] | None:
    return None if err is None else {"where": err.where, "type": err.type, "message": err.message,
                                     "text": f"{err.where}: {err.type}: {err.message}"}


def job_entry(job: TrackedJob, snapshot: JobStatus) -> dict[str, Any]:
    """One job as the sidebar shows it."""
    return {
        "job_id": snapshot.job_id, "name": job.name, "job_name": snapshot.name,
        "state": snapshot.state.value, "terminal": snapshot.state.terminal,
        "backend": snapshot.backend, "location": snapshot.location, "cell_id": job.cell_id,
        "elapsed_s": round(snapshot.elapsed_s, 1), "elapsed": templates.duration(snapshot.elapsed_s),
        "records_in": snapshot.records_in, "records_out": snapshot.records_out,
        "records": f"records in -> out: {snapshot.records_out:,} -> {snapshot.records_in:,}",
        "error": _error(snapshot.error), "nodes": templates.job_nodes(snapshot),
        "services": [{"name": s.name, "kind": templates.service_kind(s), "state": s.state.value,
                      "calls": s.calls, "error": _error(s.error)} for s in snapshot.services],
        # what the row shows, worked out here so the frontend computes nothing
        "stopping": snapshot.state.value == "STOPPING",
        "where": snapshot.backend if snapshot.location == "local" else f"{snapshot.backend} @ {snapshot.location}",
    }


def jobs_payload() -> dict[str, Any]:
    """The kernel's jobs in KernelJobs order, from each job's latest pushed snapshot."""
    jobs = [job_entry(job, job.widget.snapshot) for job in JOBS.all()]
    return {"jobs": jobs, "orphans": ORPHANS.entries(), "pid": os.getpid(), "palette": palette_css()}


def _listed(payload: dict[str, Any]) -> str:
    """What a push compares: the jobs and the orphans shown."""
    return json.dumps([payload["jobs"], payload["orphans"]], sort_keys=True)


def _kill_orphans(data: dict[str, Any]) -> dict[str, Any]:
    names = data.get("names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return {"error": "kill_orphans: 'names' must be a list of actor names", **jobs_payload()}
    try:
        ORPHANS.kill(names)
    except NoRay as exc:
        return {"error": f"kill_orphans: {exc}", **jobs_payload()}
    return jobs_payload()


def _adopt_plain_jobs() -> None:
    """List plain-API jobs, but only from the main thread: on a subshell this handler runs
    while a `%%sage_pipeline` cell may be between its submit and listing its job, and would
    list that job a second time. After each cell the main thread adopts them anyway."""
    if threading.current_thread() is threading.main_thread():
        adopt_plain_jobs()


def _find(data: dict[str, Any]) -> TrackedJob | None:
    key = data.get("job_id") or data.get("name")
    return JOBS.find(str(key)) if key else None


def _stop(job: TrackedJob) -> None:
    job.handle.stop(wait=False)  # the handle, not another view: the widget sees it in its snapshot


def handle_message(data: Any) -> dict[str, Any]:
    """Answer one action of the sidebar protocol."""
    if not isinstance(data, dict):
        return {"error": "expected a JSON object with an 'action'", **jobs_payload()}
    action = data.get("action")
    if action == "list":
        _adopt_plain_jobs()
        try:  # a (re)connected sidebar sees the orphans of now, if this kernel has a Ray
            ORPHANS.look()
        except NoRay:
            pass
        return jobs_payload()
    if action == "stop":
        job = _find(data)
        if job is None:
            return {"error": f"no job {data.get('job_id') or data.get('name')!r} in this kernel", **jobs_payload()}
        _stop(job)
        return jobs_payload()
    if action == "stop_all":
        for job in JOBS.all():
            if not job.widget.snapshot.state.terminal:
                _stop(job)
        return jobs_payload()
    if action == "clear_finished":
        JOBS.clear_finished()
        return jobs_payload()
    if action == "kill_orphans":
        return _kill_orphans(data)
    return {"error": f"unknown action {action!r}; use 'list', 'stop', 'stop_all', 'clear_finished' or "
            "'kill_orphans'", **jobs_payload()}


class SidebarFeed:
    """Pushes the job list to every open sidebar comm when it changed.

    One daemon thread, started by the first comm and ended when the last one closes (or
    at unload); `wake()` is cheap and safe from any thread (widgets call it per update).
    """

    def __init__(self) -> None:
        self._comms: list[Any] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[int, str] = {}  # id(comm) -> the job list it was sent last
        # id(comm) -> the context of the frontend's last message on it. ipykernel routes a
        # comm's incoming messages to the (sub)shell of the last message sent on it, taken from
        # the sender's context: a push sent from this thread would carry the busy main shell's
        # parent and make a Stop wait for the running cell. Sent in this context, it keeps the
        # subshell the frontend chose.
        self._contexts: dict[int, contextvars.Context] = {}

    def add(self, comm: Any) -> None:
        self.note_sender(comm)
        with self._lock:
            self._comms.append(comm)
            if self._thread is None or not self._thread.is_alive():
                self._closed.clear()
                self._thread = threading.Thread(target=self._run, name="sidebar-feed", daemon=True)
                self._thread.start()

    def remove(self, comm: Any) -> None:
        with self._lock:
            if comm in self._comms:
                self._comms.remove(comm)
            self._last.pop(id(comm), None)
            self._contexts.pop(id(comm), None)
            if not self._comms:
                self._closed.set()
                self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def note_sender(self, comm: Any) -> None:
        """Called in the handler of the frontend's message: later pushes go out in its context."""
        context = contextvars.copy_context()
        with self._lock:
            self._contexts[id(comm)] = context

    def close(self, timeout: float = 1.0) -> None:
        with self._lock:
            self._comms.clear()
            thread = self._thread
        self._closed.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def send(self, comm: Any, payload: dict[str, Any]) -> None:
        """Send a reply, remembering it so the next push skips an equal list."""
        comm.send(payload)
        with self._lock:
            self._last[id(comm)] = _listed(payload)

    def _run(self) -> None:
        while not self._closed.is_set():
            running = any(not j.widget.snapshot.state.terminal for j in JOBS.all())
            self._wake.wait(RUNNING_REFRESH_S if running else None)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self._push()
            except Exception:  # e.g. a comm gone at kernel shutdown
                log.debug("sidebar push failed", exc_info=True)
            self._closed.wait(1.0 / MAX_PUSHES_PER_S)  # the throttle

    def _push(self) -> None:
        payload = jobs_payload()
        text = _listed(payload)
        with self._lock:
            comms = [(c, self._contexts.get(id(c))) for c in self._comms if self._last.get(id(c)) != text]
            for comm, _ in comms:
                self._last[id(comm)] = text
        for comm, context in comms:
            if context is None:
                comm.send(payload)
            else:  # a copy: one Context cannot be entered by two threads at once
                context.copy().run(comm.send, payload)


FEED = SidebarFeed()
JOBS.on_change(FEED.wake)
ORPHANS.on_change(FEED.wake)


def open_comm(comm: Any, open_msg: dict[str, Any]) -> None:
    """Comm target callback: answer actions, push the list now and on every change."""

    def on_msg(msg: dict[str, Any]) -> None:
        FEED.note_sender(comm)
        busy_stop.FRONTEND.note(msg)
        try:
            reply = handle_message(msg["content"]["data"])
        except Exception as exc:  # the sidebar gets the reason, the kernel lives on
            log.exception("sidebar message failed")
            reply = {"error": f"{type(exc).__name__}: {exc}", **jobs_payload()}
        FEED.send(comm, reply)

    comm.on_msg(on_msg)
    comm.on_close(lambda _msg: FEED.remove(comm))
    busy_stop.FRONTEND.note(open_msg)
    _adopt_plain_jobs()
    FEED.add(comm)
    FEED.send(comm, jobs_payload())


def comm_manager(shell: Any) -> Any:
    """The kernel's comm manager, or None in a shell without a kernel (terminal IPython)."""
    kernel = getattr(shell, "kernel", None)
    return getattr(kernel, "comm_manager", None)
