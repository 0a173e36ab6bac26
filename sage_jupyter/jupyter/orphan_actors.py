"""Ray actors left behind by kernels that died, as `%load_ext`, `%sage_orphans` and the
sidebar show them (the rule is `runtime.ray.orphans.find_orphans`).

Looking needs this kernel connected to Ray: it is when Ray is initialised here; else, when
`RAY_ADDRESS` is set, it attaches to that cluster (as a `backend="ray"` job would), after
checking that the address answers, so a stale address costs a moment, not Ray's connect
timeout. Without either, nothing is imported, started or connected.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from .jobs import KernelTable

log = logging.getLogger("sage_jupyter.jupyter")
PROBE_TIMEOUT = 1.0  # s for the address of RAY_ADDRESS to accept a connection


@dataclass(frozen=True)
class Orphan:
    """One actor whose kernel is gone, from its name `sage:<host>:<pid>:<job>:<role>`."""

    name: str
    host: str
    pid: int
    job: str
    role: str

    @classmethod
    def from_name(cls, name: str) -> "Orphan":
        parts = name.split(":", 4) + ["", "", "", "", ""]
        pid = int(parts[2]) if parts[2].isdigit() else 0
        return cls(name, parts[1], pid, parts[3], parts[4])

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "pid": self.pid, "job": self.job, "role": self.role}


class NoRay(Exception):
    """There is no Ray to look at (the message says why)."""


def _answers(address: str) -> bool:
    """Whether `host:port` (also after `ray://`) accepts a TCP connection; True for other forms
    (e.g. "auto"), which Ray resolves itself."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def connected_ray(connect: bool) -> ModuleType:
    """The `ray` module of a Ray this kernel is connected to; with `connect`, attach to
    RAY_ADDRESS first when it is set. Raises `NoRay` otherwise."""
    ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return ray
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        raise NoRay("Ray is not initialised in this kernel and RAY_ADDRESS is not set")
    if not connect:
        raise NoRay("this kernel is not connected to Ray yet")
    if not _answers(address):
        raise NoRay(f"nothing answers at RAY_ADDRESS={address!r}")
    from ..runtime.ray.cluster import ensure_ray

    return ensure_ray()  # RAY_ADDRESS is set: attaches, never starts a Ray


class OrphanList:
    """The orphans found by the last look (thread-safe; listeners told of every change)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: list[Orphan] = []
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _set(self, found: list[Orphan]) -> None:
        with self._lock:
            changed = found != self._found
            self._found = found
        if changed:
            for listener in list(self._listeners):
                listener()

    def look(self, connect: bool = False) -> list[Orphan]:
        """Look again; raises `NoRay` when there is no Ray to look at."""
        connected_ray(connect)
        from ..runtime.ray.orphans import find_orphans

        found = [Orphan.from_name(name) for name in find_orphans()]
        self._set(found)
        return found

    def kill(self, names: list[str] | None = None) -> list[str]:
        """Kill the orphans (only those in `names`, when given) found by looking again now;
        return the names killed."""
        from ..runtime.ray.orphans import kill_named

        targets = [o.name for o in self.look() if names is None or o.name in names]
        killed = kill_named(targets)
        try:
            self.look()
        except NoRay:
            self._set([])
        return killed

    def found(self) -> list[Orphan]:
        with self._lock:
            return list(self._found)

    def entries(self) -> list[dict[str, Any]]:
        return [o.entry() for o in self.found()]

    def clear(self) -> None:
        self._set([])


ORPHANS = OrphanList()


def notice(found: list[Orphan]) -> str:
    """The one line `%load_ext` prints when it found orphans."""
    pids = ", ".join(str(p) for p in sorted({o.pid for o in found}))
    count = f"{len(found)} Ray actor{'s' if len(found) != 1 else ''}"
    return (f"sage_jupyter: {count} left by dead kernels (pid {pids}): %sage_orphans lists them, "
            "%sage_orphans --kill (or Kill in the SAGE jobs sidebar) ends them")


def look_at_load() -> str | None:
    """At `%load_ext`: look when Ray is there (never starting one); the notice, if any."""
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        return None  # the common case costs nothing
    try:
        found = ORPHANS.look(connect=True)
    except NoRay as exc:
        log.debug("no orphan check at load: %s", exc)
        return None
    except Exception:  # a Ray problem must not fail %load_ext
        log.warning("looking for orphaned Ray actors failed", exc_info=True)
        return None
    return notice(found) if found else None


def orphan_rows(found: list[Orphan]) -> list[dict[str, str]]:
    return [{"actor": o.name, "kernel pid": str(o.pid), "job": o.job, "role": o.role} for o in found]


class OrphanTable(KernelTable):
    """`%sage_orphans`: Ray actors left by kernels that died."""

    columns = ("actor", "kernel pid", "job", "role")
    empty = "No Ray actors left by dead kernels."
