"""How a Stop click reaches this kernel while another of its cells runs.

ipykernel >= 7 can handle comm messages on subshells (threads beside the busy main shell),
and JupyterLab sends them there. But ipykernel routes a comm's incoming messages to the
(sub)shell of the last message the kernel sent on that comm: a widget displayed from a cell
answers from the main shell, so a click on its own button waits for the running cell. The
labextension therefore takes clicks on buttons with `STOP_CLASS` and sends
``{"action": "stop", "job_id": ...}`` over a "sage_jupyter" comm that it opened, which stays
on its subshell (see sidebar.py). Where that path is missing, the widget says that Stop
waits (`hint`).
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

STOP_CLASS = "sage-stop"  # the labextension intercepts clicks on buttons with this DOM class
JOB_CLASS_PREFIX = "sage-stop-job-"  # + the job id, URI-encoded (a DOM class has no spaces)

NO_SUBSHELLS = "While another cell runs, Stop waits for it: this kernel has no subshells (ipykernel < 7)."
NO_FRONTEND_PATH = ("While another cell runs, Stop waits for it: no sage-jupyter extension "
                    "talks to this kernel over a subshell here.")


def job_class(job_id: str) -> str:
    """The DOM class naming the job a Stop button stops."""
    return JOB_CLASS_PREFIX + urllib.parse.quote(job_id, safe="")


class FrontendPath:
    """Whether the latest message of a frontend on a "sage_jupyter" comm came on a subshell,
    i.e. whether Stop requests sent that way are handled while the main shell is busy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._on_subshell = False

    def note(self, msg: dict[str, Any]) -> None:
        """Called with every message a frontend sent on the comm (its open included)."""
        header = msg.get("header") or {}
        with self._lock:
            self._on_subshell = bool(header.get("subshell_id"))

    @property
    def on_subshell(self) -> bool:
        with self._lock:
            return self._on_subshell

    def reset(self) -> None:
        with self._lock:
            self._on_subshell = False


FRONTEND = FrontendPath()
_subshells: dict[int, bool] = {}  # id(kernel) -> whether it reports "kernel subshells"


def kernel_has_subshells() -> bool | None:
    """Whether this kernel handles messages on subshells; None outside a kernel."""
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return None
    known = _subshells.get(id(kernel))
    if known is None:
        try:
            features = kernel.kernel_info.get("supported_features", [])
        except Exception:  # noqa: BLE001 - an older or foreign kernel: treat as without
            features = []
        known = _subshells[id(kernel)] = "kernel subshells" in features
    return known


def hint() -> str:
    """The widget's line beside Stop: empty when a click is handled while a cell runs."""
    subshells = kernel_has_subshells()
    if subshells is None:  # a terminal IPython: no other cell runs beside
        return ""
    if not subshells:
        return NO_SUBSHELLS
    return "" if FRONTEND.on_subshell else NO_FRONTEND_PATH
