"""Names of sage_jupyter's actors, the live ones among them, and killing those left behind
by kernels that died (`sage-ray-orphans`, or `python -m sage_jupyter.runtime.ray.orphans`).

Liveness comes from Ray's public API: `ray.util.list_named_actors(all_namespaces=True)`
lists the named actors that are not dead, which is every actor sage_jupyter creates.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

from .cluster import ray_module

# Every actor of sage_jupyter lives in this namespace, so another driver (the orphan
# killer) can look it up by name.
NAMESPACE = "sage_jupyter"
NAME_ROOT = "sage"


# ---- names and the actor table ---------------------------------------------------------


def _clean(part: str) -> str:
    return part.replace(":", "_")


def actor_prefix(job_id: str) -> str:
    """Prefix of the names of every actor of one job of this process."""
    return f"{NAME_ROOT}:{_clean(socket.gethostname())}:{os.getpid()}:{_clean(job_id)}:"


def actor_name(job_id: str, role: str) -> str:
    return actor_prefix(job_id) + role


def parse_name(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that created a sage_jupyter actor, from its name."""
    parts = name.split(":", 3)
    if len(parts) < 4 or parts[0] != NAME_ROOT or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def live_names(prefix: str | None = None) -> set[str]:
    """Names of the live (not dead) sage_jupyter actors, optionally only those starting
    with `prefix`."""
    ray = ray_module()
    start = prefix or f"{NAME_ROOT}:"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(start)}


def sage_actors(prefix: str | None = None) -> list[dict[str, Any]]:
    """Every live sage_jupyter actor (name, state "ALIVE"), optionally only those whose
    name starts with `prefix`. Dead actors are not listed."""
    return [{"name": name, "state": "ALIVE"} for name in sorted(live_names(prefix))]


def wait_dead(names: Iterable[str], timeout: float) -> list[str]:
    """Wait until these actors are gone from the live list; return the names still alive."""
    left = [n for n in names if n]
    deadline = time.monotonic() + timeout
    delay = 0.002
    while left:
        live = live_names()
        left = [n for n in left if n in live]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(0.05, delay * 2)
    return left


def kill_actor(handle: Any, no_restart: bool = True) -> bool:
    """`ray.kill`, never raising; False if Ray refused (the actor is gone already)."""
    ray = ray_module()
    try:
        ray.kill(handle, no_restart=no_restart)
        return True
    except Exception:  # noqa: BLE001 - already gone, or Ray is shutting down
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_orphans() -> list[str]:
    """Names of the live sage_jupyter actors created by a process of this host that no
    longer exists (a dead kernel). Needs this process connected to Ray."""
    host = _clean(socket.gethostname())
    found = []
    for name in sorted(live_names()):
        origin = parse_name(name)
        if origin is not None and origin[0] == host and origin[1] != os.getpid() and not _process_alive(origin[1]):
            found.append(name)
    return found


def kill_named(names: Iterable[str], timeout: float = 5.0) -> list[str]:
    """Kill these sage_jupyter actors (those still alive); return the names killed, once
    they are gone from the live list (or `timeout` passed)."""
    ray = ray_module()
    killed = []
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # died meanwhile
            continue
        if kill_actor(handle):
            killed.append(name)
    wait_dead(killed, timeout)
    return killed


def kill_orphans(prefix: str | None = None) -> list[str]:
    """Kill live sage_jupyter actors left behind; return their names.

    With `prefix`, every live actor whose name starts with it (e.g. `actor_prefix(job_id)`,
    or `"sage:HOST:PID:"` for one kernel). Without, the actors created by a process of this
    host that no longer exists (a dead kernel: `find_orphans`). Attaches to the running cluster
    (`RAY_ADDRESS`, else the local one) if this process is not connected yet.
    """
    ray = ray_module()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False,
                 configure_logging=False)
    return kill_named(find_orphans() if prefix is None else sorted(live_names(prefix)))


# ---- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sage-ray-orphans",
        description="List or kill Ray actors left behind by sage_jupyter kernels that died.",
    )
    parser.add_argument("--address", default=None,
                        help="Ray cluster to attach to (default: RAY_ADDRESS, else the local one)")
    parser.add_argument("--prefix", default=None,
                        help="kill every live actor whose name starts with this (e.g. sage:HOST:PID:)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--kill-orphans", action="store_true", help="kill orphaned actors (default)")
    action.add_argument("--list", action="store_true", help="only list sage_jupyter actors")
    args = parser.parse_args(argv)
    ray = ray_module()
    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        print(f"no Ray cluster to attach to at {address!r}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.list:
            for info in sage_actors(args.prefix):
                print(f"{info['state']:<8} {info['name']}")
            return 0
        killed = kill_orphans(args.prefix)
        for name in killed:
            print(f"killed {name}")
        print(f"{len(killed)} orphaned actor(s) killed")
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
