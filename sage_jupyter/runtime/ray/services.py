"""Services as Ray actors: the transport around the one service host. `ServiceActor` hosts
the service in a `LocalServiceHost` (the thread backend's host: same hooks, same rules);
`RayServiceHost` is the dispatcher's side (placement, calls, counts, clean-then-kill); and
the clients let code inside any actor call services.

A service actor runs the service's hooks and methods in its own process; its `print`
output travels back with call results (and at cleanup) to the job's output. An exception
raised by a service method reaches the caller as itself, tagged with the service's name.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..context import RuntimeContext, make_logger
from ..errors import ServiceCallError
from ..executor import DaemonExecutor
from ..graph import ServiceSpec
from ..job import HookOutcome, ServiceCleanup, ServiceState, ServiceStatus
from ..policy import CleanupPolicy
from ..proxies import public_methods
from ..services import LocalServiceHost, LookupProxy, ServiceCaller, ServiceHost
from ..threads import OutputSink, current_output
from ..tracebacks import user_traceback
from .capture import capture_output, deliver_output
from .cluster import actor_options, ensure_ray, node_label, where_am_i
from .options import describe_demand
from .orphans import NAMESPACE, actor_name, kill_actor, wait_dead
from .pickling import dumps, loads

CALL_THREADS = 8  # concurrent method calls per service actor, like the driver's call pool
STATS_EVERY_S = 0.25


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
        return (host.calls if host is not None else 0), self._capture.drain()

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
        return report, left, host.calls, self._capture.drain()


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


# ---- the driver side ---------------------------------------------------------------------


class RayServiceHost(ServiceHost):
    """A `remote=True` service: a non-detached actor named after its job, hosting the
    service in a `LocalServiceHost`. The driver side places the actor, forwards calls,
    reads the actor's call count, and at the end has the actor's host stop and clean the
    service before it kills the actor and waits to see it dead."""

    kind = "ray"

    def __init__(self, spec: ServiceSpec, job_tag: str, placement_timeout: float = 60.0) -> None:
        super().__init__(spec)
        self.job_tag = job_tag
        self.placement_timeout = placement_timeout
        self.node: str | None = None
        self.node_label: str | None = None
        self.actor: Any = None  # its handle, once created
        self.actor_name = ""
        self._actor_hex: str | None = None
        self._methods: set[str] = set()
        self._started = False  # its actor ran setup() and start(): the methods are known
        self._sink: OutputSink | None = None
        self._phase = threading.Lock()  # orders the starter's steps against a stop
        self._ending = False  # a stop began: the starter goes no further
        self._stats_ref: Any = None
        self._stats_at = 0.0
        self._stats_lock = threading.Lock()

    @property
    def actor_id(self) -> str | None:
        return self._actor_hex

    def start(self, ctx: RuntimeContext) -> None:
        ensure_ray()
        self.state = ServiceState.STARTING
        self._sink = current_output()  # the dispatcher's threads carry the job's output
        names = ctx.services.names() if ctx.services is not None else [self.name]
        peers = {n: actor_name(self.job_tag, f"svc:{n}") for n in names}
        payload = dumps((self.spec.cls, self.spec.args, self.spec.kwargs))
        name = peers.get(self.name, actor_name(self.job_tag, f"svc:{self.name}"))
        with self._phase:
            if self._ending:
                return
            self.actor_name = name
            self.actor = RemoteServiceActor.options(
                name=name, namespace=NAMESPACE, **actor_options(self.spec.ray_remote_args),
            ).remote(payload, self.name, ctx.job_name, ctx.env_name, peers)
        self._await_placement()
        try:
            methods = unwrap(ray.get(self.actor.start.remote()), self._sink)
        except RayActorError as exc:
            if self._ending:  # the stop killed the actor while setup() ran: the report says so
                return
            raise RuntimeError(f"the Ray actor of service {self.name!r} could not start: {exc}") from None
        with self._phase:
            if self._ending:  # a stop that came during setup() owns the state now
                return
            self._methods = set(methods)
            self._started = True
            self.accepting = True
            self.state = ServiceState.RUNNING

    def _await_placement(self) -> None:
        """Wait (at most `placement_timeout`) until Ray placed the actor; else kill it and
        fail naming the service and what it asked for."""
        try:
            self._actor_hex, self.node = ray.get(self.actor.where.remote(), timeout=self.placement_timeout)
        except GetTimeoutError:
            self._kill(2.0)
            with self._phase:
                self.actor = None  # killed: nothing left to clean
            raise RuntimeError(
                f"Ray could not place the actor of service {self.name!r} within placement_timeout="
                f"{self.placement_timeout:g} s: it asked for {describe_demand(self.spec.ray_remote_args)}. "
                "No alive node has these resources free; lower the request or add a node that has them"
            ) from None
        except RayActorError as exc:
            if self._ending:
                return
            raise RuntimeError(f"the Ray actor of service {self.name!r} could not start: {exc}") from None
        self.node_label = node_label(self.node)

    def method(self, method: str) -> Callable[..., Any]:
        if self.actor is None or not self._started:
            raise ServiceCallError(f"service {self.name!r} is {self.state.value}; it takes no calls yet")
        if method.startswith("_") or method not in self._methods:
            raise ServiceCallError(
                f"service {self.name!r} ({self.spec.cls.__name__}) has no method {method!r}")
        host, actor, name = self, self.actor, self.name

        def call(*args: Any, **kwargs: Any) -> Any:
            if not host.accepting:
                raise ServiceCallError(f"service {name!r} is {host.state.value}; it takes no more calls")
            host.calls += 1
            try:
                result = ray.get(actor.call.remote(method, args, kwargs))
            except RayActorError as exc:
                raise ServiceCallError(f"service {name!r} is gone: its Ray actor died") from exc
            return unwrap(result, host._sink)

        call.label = f"{name}.{method}()"  # type: ignore[attr-defined]  # named in reports while it runs
        return call

    def status(self) -> ServiceStatus:
        self._refresh_stats()
        return ServiceStatus(self.name, self.kind, self.state, self.calls, self.actor_id, self.error,
                             self.node, self.node_label)

    def _refresh_stats(self) -> None:
        """Call counts from the actor (it counts every call, from the driver and from task
        actors), without blocking: collect the last answer if it came, ask again now and then."""
        if self.state is not ServiceState.RUNNING or self.actor is None:
            return
        if not self._stats_lock.acquire(blocking=False):
            return  # another thread is reading them right now
        try:
            if self._stats_ref is not None:
                ready, _ = ray.wait([self._stats_ref], timeout=0)
                if ready:
                    ref, self._stats_ref = self._stats_ref, None
                    calls, output = ray.get(ref)
                    self.calls = max(self.calls, calls)
                    deliver_output(output, self._sink)
            now = time.monotonic()
            if self._stats_ref is None and now - self._stats_at > STATS_EVERY_S:
                self._stats_at = now
                self._stats_ref = self.actor.stats.remote()
        except Exception:  # noqa: BLE001 - a status read must never fail the caller
            self._stats_ref = None
        finally:
            self._stats_lock.release()

    def stop_and_cleanup(self, policy: CleanupPolicy) -> ServiceCleanup:
        t0 = time.perf_counter()
        with self._phase:
            self._ending = True
            actor = self.actor
            if actor is not None:
                self.state = ServiceState.STOPPING
        if actor is None:  # never created, or never placed (killed then): nothing to clean
            skipped = HookOutcome("skipped")
            return self.ended(ServiceCleanup(self.name, self.kind, skipped, skipped, None))
        self._collect_stats()
        report, self.calls_left_running = self._shutdown(actor, policy)
        self.accepting = False
        killed = self._kill(max(policy.kill_timeout, 0.5))
        setup = report.setup
        if setup is not None and setup.outcome == "timeout" and killed:  # nothing of it is left running
            setup = HookOutcome("timeout", setup.duration_s,
                                (setup.error or "").split(";")[0] + "; its Ray actor was killed, no hook ran after it")
        report = dataclasses.replace(report, kind=self.kind, killed=killed, duration_s=time.perf_counter() - t0,
                                     setup=setup)
        if report.setup is not None and report.setup.outcome == "timeout":
            self.state = ServiceState.FAILED
            return report
        return self.ended(report)

    def _shutdown(self, actor: Any, policy: CleanupPolicy) -> tuple[ServiceCleanup, tuple[str, ...]]:
        """The actor's host stops and cleans the service: (its report, calls still running)."""
        t0 = time.perf_counter()
        # waits inside: the calls, a running setup(), stop() and cleanup(), each at most graceful_timeout
        budget = 4 * policy.graceful_timeout + 2.0
        try:
            report, left, calls, output = ray.get(actor.shutdown.remote(policy), timeout=budget)
            deliver_output(output, self._sink)
            self.calls = max(self.calls, calls)
            return report, tuple(left)
        except GetTimeoutError:
            gone = HookOutcome("timeout", time.perf_counter() - t0, f"the actor did not answer within {budget:g} s")
        except RayActorError as exc:
            gone = HookOutcome("error", time.perf_counter() - t0, f"the actor died before cleanup: {_first_line(exc)}")
        return ServiceCleanup(self.name, self.kind, gone, gone), ()

    def _kill(self, timeout: float) -> bool:
        """`ray.kill`, then wait until Ray's actor table shows the actor dead."""
        kill_actor(self.actor)  # refused only when it is already gone
        return not wait_dead([self.actor_name], timeout)

    def _collect_stats(self) -> None:
        """Take a pending stats answer (so its output is not lost) before cleanup."""
        with self._stats_lock:
            ref, self._stats_ref = self._stats_ref, None
        if ref is None:
            return
        try:
            calls, output = ray.get(ref, timeout=1.0)
            self.calls = max(self.calls, calls)
            deliver_output(output, self._sink)
        except Exception:  # noqa: BLE001 - the actor may be gone already
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
