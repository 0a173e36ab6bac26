"""The actor side of `remote=True` services: `ServiceActor` hosts the service in a
`LocalServiceHost` (the thread backend's host: same hooks, same rules), and the clients let
code inside any actor call services (`actor_service_caller`).

A service actor runs the service's hooks and methods in its own process; its `print`
output travels back with call results (and at cleanup) to the job's output. An exception
raised by a service method reaches the caller as itself, tagged with the service's name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError

from ..context import RuntimeContext, make_logger
from ..errors import ServiceCallError
from ..executor import DaemonExecutor
from ..graph import ServiceSpec
from ..job import HookOutcome, ServiceCleanup
from ..policy import CleanupPolicy
from ..proxies import public_methods
from ..services import LocalServiceHost, LookupProxy, ServiceCaller
from ..threads import OutputSink
from ..tracebacks import user_traceback
from .capture import capture_output, deliver_output
from .cluster import where_am_i
from .orphans import NAMESPACE
from .pickling import dumps, loads

CALL_THREADS = 8  # concurrent method calls per service actor, like the driver's call pool


def pack_error(exc: BaseException, note: str) -> bytes:
    """Pickle an exception for the caller, with the remote traceback as a note; an
    exception that cannot be pickled becomes a RuntimeError carrying its text."""
    tb = user_traceback(exc)
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    try:
        if add_note is not None:
            add_note(f"{note}:\n{tb.rstrip()}")
    except Exception:  # noqa: BLE001 - exotic exceptions refuse notes
        pass
    try:
        return dumps(exc)
    except Exception:  # noqa: BLE001
        return dumps(RuntimeError(f"{type(exc).__name__}: {exc}\n{note}:\n{tb}"))


def unwrap(result: tuple[str, Any, list[tuple[str, str]]], sink: OutputSink | None) -> Any:
    """Deliver the output carried by a service actor's answer, then return or raise."""
    status, value, output = result
    if output:
        deliver_output(output, sink)
    if status == "err":
        raise loads(value)
    return value


def actor_methods(instance: Any) -> list[str]:
    """Names callable through `call_service` on a service actor: its class's public methods,
    and callables set on the instance (read once here, where a call costs a Ray hop anyway)."""
    names = set(public_methods(instance))
    names.update(n for n, v in vars(instance).items() if not n.startswith("_") and callable(v))
    return sorted(names)


# Ray's stubs do not cover the actor options used here: the decorator is typed loosely.
remote_class: Any = ray.remote


class ServiceActor:
    """One service instance in its own process, hosted by the same `LocalServiceHost` the
    thread backend uses: its hooks, its refusals, its call counting and its one-call-at-a-
    time rule are the host's. The actor only carries calls in and answers out.

    Calls run on `CALL_THREADS` threads. A call made while another call of the same chain
    holds this service (the service calling itself, or A -> B -> A) comes on another
    thread, so it runs as a reentrant call, as it would on the one thread of a local call.
    Start and shutdown have their own threads, so a stop can come while `setup()` runs."""

    def __init__(self, payload: bytes, name: str, job_name: str, env_name: str,
                 peers: dict[str, str]) -> None:
        self._capture = capture_output()
        self._payload = payload
        self._name = name
        self._job_name = job_name
        self._env_name = env_name
        self._peers = peers
        self._host: LocalServiceHost | None = None
        self._calls: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when a call ends
        self._running: dict[int, str] = {}  # thread id -> "name.method()" of the call it runs
        self._ending = False

    @ray.method(concurrency_group="lifecycle")
    def start(self) -> tuple[str, Any, list[tuple[str, str]]]:
        try:
            cls, args, kwargs = loads(self._payload)
            with self._lock:
                if self._ending:  # the stop came first: build nothing
                    return ("ok", [], self._capture.drain())
                host = self._host = LocalServiceHost(ServiceSpec(self._name, cls, args, kwargs))
            ctx = RuntimeContext(name=f"service:{self._name}", job_name=self._job_name, env_name=self._env_name,
                                 services=actor_service_caller(self._peers),
                                 logger=make_logger(self._job_name, f"service:{self._name}"))
            host.start(ctx)
            return ("ok", actor_methods(host.instance), self._capture.drain())
        except Exception as exc:  # noqa: BLE001 - raised again in the driver
            return ("err", pack_error(exc, f"remote traceback (Ray actor of service {self._name!r})"),
                    self._capture.drain())

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             chain: tuple[str, ...] = ()) -> tuple[str, Any, list[tuple[str, str]]]:
        me = threading.get_ident()
        with self._lock:
            self._running[me] = f"{self._name}.{method}()"
        outer = _chain.names
        try:
            serialised, reentrant = self._call_functions(method)
            _chain.names = chain + (self._name,)  # what calls made from this one carry along
            fn = reentrant if self._name in chain else serialised
            return ("ok", fn(*args, **kwargs), self._capture.drain())
        except Exception as exc:  # noqa: BLE001 - the caller gets it as itself (tagged by the host)
            note = f"remote traceback (Ray actor of service {self._name!r})"
            return ("err", pack_error(exc, note), self._capture.drain())
        finally:
            _chain.names = outer
            with self._lock:
                del self._running[me]
                self._settled.notify_all()

    def _call_functions(self, method: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The host's call function for `method` and its reentrant twin, made once."""
        found = self._calls.get(method)
        if found is not None:
            return found
        host = self._host
        if host is None or host.instance is None:
            raise ServiceCallError(f"service {self._name!r} is not running; it takes no calls")
        found = self._calls[method] = (host.method(method), host.method(method, reentrant=True))
        return found

    @ray.method(concurrency_group="control")
    def begin_stop(self) -> None:
        """Hear of a stop at once (the shutdown may wait behind calls in flight): a `setup()`
        running now is the last start hook that runs."""
        with self._lock:
            self._ending = True
            host = self._host
        if host is not None:
            host.announce_stop()

    @ray.method(concurrency_group="control")
    def where(self) -> tuple[str, str]:
        """(actor id, node id): answered once the actor is placed and up."""
        return where_am_i()

    @ray.method(concurrency_group="control")
    def methods(self) -> list[str]:
        host = self._host
        return actor_methods(host.instance) if host is not None and host.instance is not None else []

    @ray.method(concurrency_group="control")
    def stats(self) -> tuple[int, list[tuple[str, str]]]:
        host = self._host
        return (host.call_count if host is not None else 0), self._capture.drain()

    @ray.method(concurrency_group="lifecycle")
    def shutdown(self, policy: CleanupPolicy) -> tuple[ServiceCleanup, list[str], int, list[tuple[str, str]]]:
        """Wait for the calls still running (at most `graceful_timeout`), then let the host
        stop and clean the service; with the calls still running and the call count."""
        with self._lock:
            self._ending = True
            host = self._host
            deadline = time.monotonic() + policy.graceful_timeout
            while self._running and time.monotonic() < deadline:
                self._settled.wait(max(0.0, deadline - time.monotonic()))
            left = sorted(self._running.values())
        if host is None:
            skipped = HookOutcome("skipped")
            return ServiceCleanup(self._name, "ray", skipped, skipped), left, 0, self._capture.drain()
        report = host.stop_and_cleanup(policy)
        return report, left, host.call_count, self._capture.drain()


RemoteServiceActor: Any = remote_class(max_concurrency=CALL_THREADS,
                                       concurrency_groups={"lifecycle": 2, "control": 1})(ServiceActor)


class _Chain(threading.local):
    """The services whose calls the current thread runs inside (outermost first)."""

    names: tuple[str, ...] = ()


_chain = _Chain()


# ---- calling services from inside an actor ----------------------------------------------


class RemoteService:
    """A service actor seen from any process: what `ServiceCaller` needs of a host.

    `target` is the actor's handle, or its name (looked up when first called, so services
    may name peers that start after them).
    """

    kind = "ray"

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target
        self._handle: Any = None if isinstance(target, str) else target

        self._methods: set[str] | None = None
        self._lock = threading.Lock()

    def proxy(self, eligible: bool) -> LookupProxy:
        return LookupProxy(self)  # type: ignore[arg-type]  # duck-typed: name, kind, method

    def _resolve(self) -> Any:
        with self._lock:
            if self._handle is None:
                try:
                    self._handle = ray.get_actor(self._target, namespace=NAMESPACE)
                except ValueError:
                    raise ServiceCallError(
                        f"service {self.name!r} cannot be reached from a Ray actor: it runs in the "
                        "driver process (register it with remote=True) or it has already ended"
                    ) from None
            if self._methods is None:
                try:
                    self._methods = set(ray.get(self._handle.methods.remote()))
                except RayActorError as exc:
                    raise ServiceCallError(f"service {self.name!r} is gone: its Ray actor died") from exc
            return self._handle

    def method(self, method: str) -> Callable[..., Any]:
        handle = self._resolve()
        if method.startswith("_") or method not in (self._methods or ()):
            raise ServiceCallError(f"service {self.name!r} has no method {method!r}")
        name = self.name

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = ray.get(handle.call.remote(method, args, kwargs, _chain.names))
            except RayActorError as exc:
                raise ServiceCallError(f"service {name!r} is gone: its Ray actor died") from exc
            return unwrap(result, None)  # output goes to this actor's captured stdout

        return call


class DriverOnlyService:
    """A thread service named in a Ray actor: it lives in the driver, out of reach."""

    kind = "thread"

    def __init__(self, name: str) -> None:
        self.name = name

    def proxy(self, eligible: bool) -> LookupProxy:
        return LookupProxy(self)  # type: ignore[arg-type]  # duck-typed: name, kind, method

    def method(self, method: str) -> Callable[..., Any]:
        raise ServiceCallError(
            f"service {self.name!r} runs in the driver process (remote=False), so code in a Ray "
            "actor cannot call it; register it with remote=True"
        )


def actor_service_caller(targets: dict[str, Any]) -> ServiceCaller:
    """`self.call_service` for code running inside an actor. `targets` maps each service
    name to its actor handle or actor name, or None for a driver-only service."""
    hosts = {n: RemoteService(n, t) if t is not None else DriverOnlyService(n) for n, t in targets.items()}
    pool: list[DaemonExecutor] = []
    lock = threading.Lock()

    def executor() -> DaemonExecutor:
        with lock:
            if not pool:
                pool.append(DaemonExecutor(CALL_THREADS, "sage:service-calls"))
            return pool[0]

    return ServiceCaller(hosts, executor)  # type: ignore[arg-type]
