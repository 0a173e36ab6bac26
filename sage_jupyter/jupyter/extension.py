"""Loading and unloading the IPython extension (`%load_ext sage_jupyter`).

Load registers the magics, installs the thread-aware stdout/stderr proxy, registers the
sidebar's comm target and a post-execute hook that saves each ended job's final state
in its cell's display data; when Ray is there, it prints a line about actors left by dead
kernels. Unload stops every job of this kernel and undoes all of it.
Nothing here starts a thread; kernel shutdown is covered by the runtime's `atexit` hook.
"""

from __future__ import annotations

import logging
from typing import Any

from ..runtime import output as routing
from . import busy_stop, sidebar
from .jobs import JOBS, SERVICES, adopt_plain_jobs, stop_jobs
from .magics import SageMagics
from .orphan_actors import ORPHANS, look_at_load

log = logging.getLogger("sage_jupyter.jupyter")
UNLOAD_TIMEOUT = 10.0

_MAGIC_NAMES = {"cell": ("sage_pipeline", "sage_service"),
                "line": ("sage_status", "sage_stop", "sage_services", "sage_orphans")}
_loaded: dict[int, dict[str, Any]] = {}  # id(shell) -> what load() registered


def publish_final_states() -> None:
    """post_execute: put the final state of jobs that ended into their cells' display
    data, once each, from the main thread (so frontends attach it to a live request).
    Jobs the cell submitted with the plain API are listed now, with the cell's id."""
    from IPython import get_ipython

    from .magics import current_cell_id

    adopt_plain_jobs(current_cell_id(get_ipython()))
    for job in JOBS.all():
        try:
            job.widget.publish_final_once()
        except Exception:  # a display problem must not fail the user's cell
            log.debug("final display update failed", exc_info=True)


def load(shell: Any) -> None:
    if id(shell) in _loaded:
        return
    magics = SageMagics(shell)
    shell.register_magics(magics)
    routing.install()
    shell.events.register("post_execute", publish_final_states)
    manager = sidebar.comm_manager(shell)
    if manager is not None:
        manager.register_target(sidebar.TARGET, sidebar.open_comm)
    _loaded[id(shell)] = {"magics": magics, "comm_manager": manager}
    line = look_at_load()
    if line:
        print(line)


def unload(shell: Any) -> None:
    state = _loaded.pop(id(shell), None)
    if state is None:
        return
    adopt_plain_jobs()  # "every job": also those submitted without the magics
    jobs = JOBS.all()
    left = stop_jobs([j for j in jobs if not j.widget.snapshot.state.terminal], UNLOAD_TIMEOUT)
    if left:
        log.warning("jobs still ending after unload: %s", ", ".join(left))
    for job in jobs:
        job.widget.close()
    JOBS.clear()
    SERVICES.clear()
    ORPHANS.clear()
    busy_stop.FRONTEND.reset()
    sidebar.FEED.close()
    routing.uninstall()
    try:
        shell.events.unregister("post_execute", publish_final_states)
    except ValueError:
        pass
    manager = state["comm_manager"]
    if manager is not None and sidebar.TARGET in getattr(manager, "targets", {}):
        manager.unregister_target(sidebar.TARGET, sidebar.open_comm)
    registry = shell.magics_manager
    for kind, names in _MAGIC_NAMES.items():
        for name in names:
            registry.magics[kind].pop(name, None)
    registry.registry.pop(type(state["magics"]).__name__, None)
