"""Attaching to Ray (or starting a local one), and the facts about its nodes that placement
and the views need: which nodes are alive, what they can host, their addresses."""

from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..extras import require_extra
from .options import demand

_lock = threading.Lock()
_started_here = False  # True when ensure_ray() started Ray (then Ray's own atexit stops it)
_exit_hooked = False
NODES_TTL_S = 1.0  # how long a read of the node table is reused


def ray_module() -> ModuleType:
    """Import Ray, with an install hint when it is missing."""
    return require_extra("ray", "sage_jupyter's Ray support (backend='ray', remote=True services)")


def ensure_ray() -> ModuleType:
    """Attach to a running Ray (initialised by the user, or `RAY_ADDRESS`), else start a
    quiet local one. Returns the `ray` module.

    A Ray we attached to is never shut down by us; one we started lives until process
    exit (Ray's own exit hook), after our hook has stopped this process's jobs.
    """
    global _started_here
    ray = ray_module()
    with _lock:
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                _start_local(ray)
                _started_here = True
        _hook_exit()
    return ray


def _start_local(ray: ModuleType) -> None:
    """Start a new local Ray from a thread that lives as long as the process.

    `address="local"` always starts one (a cluster started by `ray start` is joined through
    `RAY_ADDRESS`), so whether we own it is known. Ray's head processes get SIGKILL when the
    thread that forked them ends (Linux parent-death signal), so a short-lived runtime thread
    must not start them.
    """
    options: dict[str, Any] = {"address": "local", "include_dashboard": False, "log_to_driver": False,
                               "configure_logging": False}
    if threading.current_thread() is threading.main_thread():
        ray.init(**options)
        return
    started = threading.Event()
    failure: list[BaseException] = []

    def own() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)
            return
        finally:
            started.set()
        threading.Event().wait()  # never returns: this thread owns Ray's processes

    threading.Thread(target=own, name="ray-owner", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


def started_ray() -> bool:
    """Whether this process started the Ray it uses (rather than attaching to one)."""
    return _started_here


def _hook_exit() -> None:
    """Stop live jobs before Ray's own exit hook disconnects (atexit runs last-in first)."""
    global _exit_hooked
    if not _exit_hooked:
        from .. import registry

        atexit.register(registry.stop_all_at_exit)
        _exit_hooked = True


# ---- nodes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]


_nodes_cache: tuple[float, list[NodeInfo]] = (0.0, [])


def nodes(fresh: bool = False) -> list[NodeInfo]:
    """Every node Ray knows of, alive or dead (read at most once per `NODES_TTL_S`)."""
    global _nodes_cache
    at, cached = _nodes_cache
    if not fresh and cached and time.monotonic() - at < NODES_TTL_S:
        return cached
    ray = ray_module()
    out = [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", "?"), bool(n.get("Alive")),
                    {k: float(v) for k, v in (n.get("Resources") or {}).items()})
           for n in ray.nodes()]
    _nodes_cache = (time.monotonic(), out)
    return out


def node(node_id: str, fresh: bool = False) -> NodeInfo | None:
    for info in nodes(fresh):
        if info.node_id == node_id:
            return info
    return None


def node_label(node_id: str | None) -> str | None:
    """What views show for a node: its IP address, with the short node id when another node
    shares that address (several nodes on one machine)."""
    if node_id is None:
        return None
    info = node(node_id)
    if info is None:
        return node_id[:8]
    shared = sum(1 for n in nodes() if n.address == info.address) > 1
    return f"{info.address} ({node_id[:8]})" if shared else info.address


def describe_node(node_id: str) -> str:
    """`node 1a2b... (10.0.0.5)`, for error messages."""
    info = node(node_id, fresh=True)
    return f"node {node_id} ({info.address if info else 'address unknown'})"


def node_alive(node_id: str) -> bool:
    info = node(node_id, fresh=True)
    return info is not None and info.alive


def hosting_nodes(remote_args: dict[str, Any] | None) -> list[str]:
    """Ids of the alive nodes whose total resources cover what one actor asks for."""
    wants = demand(remote_args)
    return [n.node_id for n in nodes(fresh=True)
            if n.alive and all(n.resources.get(k, 0.0) >= v for k, v in wants.items())]


def actor_options(remote_args: dict[str, Any] | None, index: int = 0,
                  spread_over: list[str] | None = None) -> dict[str, Any]:
    """`.options()` for one actor: the user's dict, 0 CPUs unless it names `num_cpus`, and,
    unless it names a `scheduling_strategy`, instance `index` pinned to node `index` of
    `spread_over` (alive nodes that can host it), so N instances land on N distinct nodes
    where there are N; instances beyond that are left to Ray's `"SPREAD"`.

    The pin is a hard node affinity: Ray's `"SPREAD"`, and even a soft affinity, put two
    instances on one node in a fair share of trials here. A node that dies before the actor
    is placed fails the job through the placement timeout, naming the stage.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options = dict(remote_args or {})
    options.setdefault("num_cpus", 0)
    if "scheduling_strategy" not in options and spread_over:
        if index < len(spread_over):
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(spread_over[index], soft=False)
        else:
            options["scheduling_strategy"] = "SPREAD"
    return options


def where_am_i() -> tuple[str, str]:
    """(actor id, node id) of the calling actor, from Ray's runtime context."""
    context = ray_module().get_runtime_context()
    return context.get_actor_id() or "", context.get_node_id()
