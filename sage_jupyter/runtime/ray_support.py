"""Ray plumbing shared by the Ray backend and Ray services: start-up, shipping checks,
actor names, the actor table, orphan cleanup and the capture of `print` inside actors.

Run `python -m sage_jupyter.runtime.ray_support --kill-orphans` to kill the actors of
kernels that died (see `kill_orphans`).
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterable

from .extras import require_extra
from .graph import PipelineGraph, ServiceSpec
from .shipping import local_modules

# Every actor of sage_jupyter lives in this namespace, so another driver (the orphan
# killer) can look it up by name.
NAMESPACE = "sage_jupyter"
NAME_ROOT = "sage"
OUTPUT_LIMIT = 1 << 20  # characters of captured output kept per actor between drains

_lock = threading.Lock()
_started_here = False  # True when ensure_ray() started Ray (then Ray's own atexit stops it)
_exit_hooked = False


def ray_module():
    """Import Ray, with an install hint when it is missing."""
    return require_extra("ray", "sage_jupyter's Ray support (backend='ray', remote=True services)")


def ensure_ray():
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
                # Ray's default may instead join a cluster started by `ray start`.
                node = getattr(ray._private.worker, "_global_node", None)
                _started_here = bool(getattr(node, "head", True))
        _hook_exit()
    return ray


def _start_local(ray) -> None:
    """Start a local Ray from a thread that lives as long as the process.

    Ray's head processes get SIGKILL when the thread that forked them ends (Linux
    parent-death signal), so a short-lived runtime thread must not start them.
    """
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
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
        from . import registry

        atexit.register(registry.stop_all_at_exit)
        _exit_hooked = True


# ---- shipping user code --------------------------------------------------------------


def _pickler():
    try:
        from ray import cloudpickle  # the pickler Ray itself uses for arguments
    except ImportError:  # pragma: no cover - Ray is a test dependency
        import cloudpickle
    return cloudpickle


def dumps(obj: Any) -> bytes:
    return _pickler().dumps(obj)


def loads(data: bytes) -> Any:
    return _pickler().loads(data)


def check_shippable(graph: PipelineGraph, services: Iterable[ServiceSpec]) -> None:
    """Pickle every stage's code and every remote service's class and arguments now, so a
    pipeline that cannot reach Ray fails at submit with the culprit named.

    Called by `submit` whenever the job needs Ray, so it also starts (or attaches to) Ray
    here, on the submitting thread: usually the main thread, where Ray wants to start.
    """
    ensure_ray()
    services = list(services)
    for module in local_modules(graph, services):  # Ray workers may not import these
        try:
            _pickler().register_pickle_by_value(module)
        except ValueError:  # already registered
            pass
    labels = graph.labels()
    for stage in graph.stages:
        for what, obj in (("function", stage.user_object), ("factory", stage.factory),
                          ("key function", stage.key_factory),
                          *(("key function", route.key_factory) for route in stage.inputs)):
            if obj is None:
                continue
            problem = _unpicklable(obj)
            if problem:
                raise TypeError(
                    f"stage {labels[stage.id]!r}: its {what} cannot be sent to Ray actors "
                    f"({problem}). Use functions and classes defined at module level or in a "
                    "notebook cell, and do not capture locks, open files, sockets or threads."
                )
    for spec in services:
        if not spec.remote:
            continue
        problem = _unpicklable((spec.cls, spec.args, spec.kwargs))
        if problem:
            raise TypeError(
                f"service {spec.name!r} ({getattr(spec.cls, '__name__', spec.cls)}): its class or "
                f"constructor arguments cannot be sent to a Ray actor ({problem}). Pass picklable "
                "arguments and open files or connections in setup() instead."
            )


def _unpicklable(obj: Any) -> str | None:
    try:
        dumps(obj)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the answer
        return f"{type(exc).__name__}: {exc}"
    return None


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


def actor_state(actor_id: str) -> str | None:
    """State of one actor in Ray's actor table (`ALIVE`, `DEAD`, ...), None if unknown.

    Reads the GCS table directly: `ray.util.state` needs the dashboard, which we do not
    start.
    """
    from ray._private import state

    info = state.actors(actor_id=actor_id)
    return info.get("State") if info else None


def sage_actors(prefix: str | None = None) -> list[dict[str, Any]]:
    """Every sage_jupyter actor in the table (name, actor_id, state, pid), optionally
    only those whose name starts with `prefix`."""
    from ray._private import state

    out = []
    for actor_id, info in state.actors().items():
        name = info.get("Name") or ""
        if not name.startswith(prefix or f"{NAME_ROOT}:"):
            continue
        out.append({"name": name, "actor_id": actor_id, "state": info.get("State"),
                    "pid": info.get("Pid"), "class": info.get("ActorClassName")})
    return out


def wait_dead(actor_ids: Iterable[str], timeout: float) -> list[str]:
    """Wait until the table shows these actors DEAD; return the ids still not dead."""
    left = [a for a in actor_ids if a]
    deadline = time.monotonic() + timeout
    delay = 0.002
    while left:
        left = [a for a in left if actor_state(a) not in ("DEAD", None)]
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


def kill_orphans(prefix: str | None = None) -> list[str]:
    """Kill live sage_jupyter actors left behind; return their names.

    With `prefix`, every live actor whose name starts with it (e.g. `actor_prefix(job_id)`,
    or `"sage:HOST:PID:"` for one kernel). Without, the actors created by a process of this
    host that no longer exists (a dead kernel). Attaches to the running cluster
    (`RAY_ADDRESS`, else the local one) if this process is not connected yet.
    """
    ray = ray_module()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False,
                 configure_logging=False)
    host = _clean(socket.gethostname())
    killed = []
    for info in sage_actors(prefix):
        if info["state"] == "DEAD":
            continue
        if prefix is None:
            origin = parse_name(info["name"])
            if origin is None or origin[0] != host or origin[1] == os.getpid() or _process_alive(origin[1]):
                continue
        try:
            handle = ray.get_actor(info["name"], namespace=NAMESPACE)
        except ValueError:  # died meanwhile
            continue
        if kill_actor(handle):
            killed.append(info["name"])
    wait_dead([i["actor_id"] for i in sage_actors(prefix) if i["name"] in killed], 5.0)
    return killed


# ---- output of user code inside actors ---------------------------------------------------


class OutputCapture:
    """Collects what an actor process writes to stdout/stderr, to ship it to the driver.

    Installed once per actor process; `drain()` hands over what was written since the last
    drain as (stream, text) chunks, consecutive writes to one stream merged.
    """

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._chunks: list[list[str]] = []
        self._size = 0
        self._limit = limit
        self._dropped = 0
        self.ready = threading.Event()

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._size + len(text) > self._limit:
                self._dropped += len(text)
            else:
                self._size += len(text)
                if self._chunks and self._chunks[-1][0] == stream:
                    self._chunks[-1][1] += text
                else:
                    self._chunks.append([stream, text])
        self.ready.set()

    def drain(self) -> list[tuple[str, str]]:
        with self._lock:
            chunks, self._chunks, self._size = self._chunks, [], 0
            dropped, self._dropped = self._dropped, 0
            self.ready.clear()
        out = [(s, t) for s, t in chunks]
        if dropped:
            out.append(("stderr", f"[sage_jupyter: {dropped} characters of output dropped]\n"))
        return out

    def install(self) -> "OutputCapture":
        sys.stdout = _CapturedStream(self, "stdout")  # type: ignore[assignment]
        sys.stderr = _CapturedStream(self, "stderr")  # type: ignore[assignment]
        return self


class _CapturedStream(io.TextIOBase):
    def __init__(self, capture: OutputCapture, name: str) -> None:
        self._capture = capture
        self._name = name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._capture.write(self._name, str(text))
        return len(text)

    def flush(self) -> None:
        """Nothing buffered here: text is kept until the driver drains it."""


_capture: OutputCapture | None = None


def capture_output() -> OutputCapture:
    """Install (once per process) and return the actor's output capture."""
    global _capture
    with _lock:
        if _capture is None:
            _capture = OutputCapture().install()
    return _capture


def deliver_output(chunks: Iterable[tuple[str, str]], sink: Callable[[str, str], None] | None) -> None:
    """Hand captured actor output to the job's output callable, else to this process's
    stdout/stderr (so plain scripts still see their prints)."""
    for stream, text in chunks:
        if sink is not None:
            try:
                sink(stream, text)
                continue
            except Exception:  # noqa: BLE001 - a broken view must not lose the text
                pass
        target = sys.stderr if stream == "stderr" else sys.stdout
        target.write(text)


# ---- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sage_jupyter.runtime.ray_support",
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
                print(f"{info['state']:<8} {info['actor_id']} {info['name']}")
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
