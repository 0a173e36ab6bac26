"""The comm target "sage_jupyter" that the JupyterLab sidebar talks to.

Protocol (JSON over one comm per sidebar): the frontend sends
``{"action": "list"}``, ``{"action": "stop", "name": NAME}`` (or ``"job_id"``) or
``{"action": "stop_all"}``; the kernel answers every message, and the comm's opening,
with ``{"jobs": [JobStatus.to_dict() + {"display_name"}...]}`` or ``{"error": "..."}``.
Stops do not wait: the sidebar sees the job go STOPPING, then STOPPED, on its next list.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .jobs import JOBS, TrackedJob, adopt_plain_jobs
from .templates import job_nodes

TARGET = "sage_jupyter"
log = logging.getLogger("sage_jupyter.jupyter")


def jobs_payload() -> dict[str, Any]:
    jobs = []
    for job in JOBS.all():
        try:
            snapshot = job.status()
        except Exception:  # noqa: BLE001 - an unreachable remote job: its last known state
            snapshot = job.widget.snapshot
        entry = snapshot.to_dict()
        entry["display_name"] = job.name
        entry["nodes"] = job_nodes(snapshot)  # derived here, so the sidebar computes nothing
        jobs.append(entry)
    return {"jobs": jobs, "pid": os.getpid()}


def _find(data: dict[str, Any]) -> TrackedJob | None:
    key = data.get("name") or data.get("job_id")
    return JOBS.find(str(key)) if key else None


def handle_message(data: Any) -> dict[str, Any]:
    """Answer one message of the sidebar protocol."""
    if not isinstance(data, dict):
        return {"error": "expected a JSON object with an 'action'"}
    adopt_plain_jobs()
    action = data.get("action")
    if action == "list":
        return jobs_payload()
    if action == "stop":
        job = _find(data)
        if job is None:
            return {"error": f"no job {data.get('name') or data.get('job_id')!r} in this kernel", **jobs_payload()}
        job.widget.request_stop()
        return jobs_payload()
    if action == "stop_all":
        for job in JOBS.all():
            if not job.widget.snapshot.state.terminal:
                job.widget.request_stop()
        return jobs_payload()
    return {"error": f"unknown action {action!r}; use 'list', 'stop' or 'stop_all'"}


def open_comm(comm: Any, open_msg: dict[str, Any]) -> None:
    """Comm target callback: answer every message on this comm."""

    def on_msg(msg: dict[str, Any]) -> None:
        try:
            reply = handle_message(msg["content"]["data"])
        except Exception as exc:  # the sidebar gets the reason, the kernel lives on
            log.exception("sidebar message failed")
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        comm.send(reply)

    comm.on_msg(on_msg)
    comm.send(jobs_payload())


def comm_manager(shell: Any) -> Any:
    """The kernel's comm manager, or None in a shell without a kernel (terminal IPython)."""
    kernel = getattr(shell, "kernel", None)
    return getattr(kernel, "comm_manager", None)
