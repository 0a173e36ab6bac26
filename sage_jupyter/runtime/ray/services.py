"""Services as Ray actors: `RayServiceHost` for the dispatcher, `ActorWrapper` for the
clean-then-kill ending, and the clients that let code inside any actor call services.

A service actor runs the service's hooks and methods in its own process; its `print`
output travels back with call results (and at cleanup) to the job's output. An exception
raised by a service method reaches the caller as itself, tagged with the service's name.
"""

from __future__ import annotations

import inspect
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
from ..services import ServiceCaller, ServiceHost, run_hook, tag_service_error
from ..threads import OutputSink, current_output
from .capture import capture_output, deliver_output
from .cluster import actor_options, ensure_ray, node_label, where_am_i
from .options import describe_demand
from .orphans import NAMESPACE, actor_name, kill_actor, wait_dead
from .pickling import dumps, loads
from ..tracebacks import user_traceback

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


def public_methods(instance: Any) -> list[str]:
    """Names callable through `call_service`, found without running properties."""
    names = set()
    for name in dir(type(instance)):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(type(instance), name)
        if isinstance(attr, (staticmethod, classmethod)) or inspect.isroutine(attr):
            names.add(name)
    names.update(n for n, v in vars(instance).items() if not n.startswith("_") and callable(v))
    return sorted(names)


# Ray's stubs do not cover the actor options used here: the decorator is typed loosely.
remote_class: Any = ray.remote


class ServiceActor:
    """One service instance in its own process. Calls run on `CALL_THREADS` threads (a
    service may call itself or others); lifecycle calls have their own threads so a busy
    service can still be cleaned."""

    def __init__(self, payload: bytes, name: str, job_name: str, env_name: str,
                 peers: dict[str, str]) -> None:
        self._capture = capture_output()
        self._payload = payload
        self._name = name
        self._job_name = job_name
        self._env_name = env_name
        self._peers = peers
        self._instance: Any = None
        self._accepting = False
        self._calls = 0
        self._calls_lock = threading.Lock()

    @ray.method(concurrency_group="control")
    def start(self) -> tuple[str, Any, list[tuple[str, str]]]:
        try:
            cls, args, kwargs = loads(self._payload)
            self._instance = cls(*args, **kwargs)
            self._instance.ctx = RuntimeContext(
                name=f"service:{self._name}", job_name=self._job_name, env_name=self._env_name,
                services=actor_service_caller(self._peers),
                logger=make_logger(self._job_name, f"service:{self._name}"))
            self._accepting = True  # setup() may already call other services or itself
            for hook in ("setup", "start"):
                fn = getattr(self._instance, hook, None)
                if callable(fn):
                    fn()
            return ("ok", public_methods(self._instance), self._capture.drain())
        except Exception as exc:  # noqa: BLE001 - raised again in the driver
            return ("err", pack_error(exc, f"remote traceback (Ray actor of service {self._name!r})"),
                    self._capture.drain())

    def call(self, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[str, Any, list[tuple[str, str]]]:
        try:
            if not self._accepting:
                raise ServiceCallError(f"service {self._name!r} is stopping; it takes no more calls")
            fn = getattr(self._instance, method, None)
            if method.startswith("_") or not callable(fn):
                raise ServiceCallError(
                    f"service {self._name!r} ({type(self._instance).__name__}) has no method {method!r}")
            with self._calls_lock:
                self._calls += 1
            return ("ok", fn(*args, **kwargs), self._capture.drain())
        except Exception as exc:  # noqa: BLE001 - the caller gets it as itself
            if not isinstance(exc, ServiceCallError):
                tag_service_error(exc, self._name, method)
            note = f"remote traceback (Ray actor of service {self._name!r})"
            return ("err", pack_error(exc, note), self._capture.drain())

    @ray.method(concurrency_group="control")
    def where(self) -> tuple[str, str]:
        """(actor id, node id): answered once the actor is placed and up."""
        return where_am_i()

    @ray.method(concurrency_group="control")
    def methods(self) -> list[str]:
        return public_methods(self._instance) if self._instance is not None else []

    @ray.method(concurrency_group="control")
    def stats(self) -> tuple[int, list[tuple[str, str]]]:
        return self._calls, self._capture.drain()

    @ray.method(concurrency_group="control")
    def shutdown(self, timeout: float) -> tuple[HookOutcome, HookOutcome, int, list[tuple[str, str]]]:
        """`stop()` then `cleanup()`, each given `timeout` seconds; with the call count."""
        inst = self._instance
        if inst is None:
            skipped = HookOutcome("skipped")
            return skipped, skipped, self._calls, self._capture.drain()
        stop = run_hook(getattr(inst, "stop", None), timeout, f"sage-stop:{self._name}")
        self._accepting = False
        cleanup = run_hook(getattr(inst, "cleanup", None), timeout, f"sage-cleanup:{self._name}")
        return stop, cleanup, self._calls, self._capture.drain()


RemoteServiceActor: Any = remote_class(max_concurrency=CALL_THREADS, concurrency_groups={"control": 2})(ServiceActor)


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
                result = ray.get(handle.call.remote(method, args, kwargs))
            except RayActorError as exc:
                raise ServiceCallError(f"service {name!r} is gone: its Ray actor died") from exc
            return unwrap(result, None)  # output goes to this actor's captured stdout

        return call


class DriverOnlyService:
    """A thread service named in a Ray actor: it lives in the driver, out of reach."""

    kind = "thread"

    def __init__(self, name: str) -> None:
        self.name = name

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


class ActorWrapper:
    """Owns one actor's ending: its cleanup method under a timeout, then `ray.kill`."""

    def __init__(self, actor: Any, label: str, on_output: OutputSink | None = None,
                 name: str = "", actor_id: str = "") -> None:
        self.actor = actor
        self.label = label
        self.on_output = on_output
        self.name = name  # the actor's name: how its death is seen in Ray's live list
        self.actor_id = actor_id  # as the actor reported it (`where`)
        self.outcomes: tuple[HookOutcome, HookOutcome] | None = None  # of the last cleanup
        self.calls: int | None = None  # calls the actor served, as of the last cleanup

    def cleanup(self, timeout: float) -> tuple[HookOutcome, HookOutcome]:
        """Run `stop()` and `cleanup()` inside the actor, each under `timeout`."""
        t0 = time.perf_counter()
        try:
            stop, cleanup, self.calls, output = ray.get(self.actor.shutdown.remote(timeout),
                                                        timeout=2 * timeout + 2.0)
            deliver_output(output, self.on_output)
        except GetTimeoutError:
            waited = f"the actor did not answer within {2 * timeout + 2.0:g} s"
            stop = cleanup = HookOutcome("timeout", time.perf_counter() - t0, waited)
        except RayActorError as exc:
            gone = f"the actor died before cleanup: {_first_line(exc)}"
            stop = cleanup = HookOutcome("error", time.perf_counter() - t0, gone)
        self.outcomes = (stop, cleanup)
        return stop, cleanup

    def kill(self, no_restart: bool = True, timeout: float = 2.0) -> bool:
        """`ray.kill`, then wait until Ray's actor table shows the actor dead."""
        kill_actor(self.actor, no_restart)  # refused only when it is already gone
        return not wait_dead([self.name], timeout)

    def cleanup_and_kill(self, cleanup_timeout: float = 5.0, no_restart: bool = True,
                         kill_timeout: float = 2.0) -> tuple[bool, bool]:
        """Clean the service inside the actor, then kill it: (cleaned, killed)."""
        stop, cleanup = self.cleanup(cleanup_timeout)
        killed = self.kill(no_restart, kill_timeout)
        return stop.ok and cleanup.ok, killed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayServiceHost(ServiceHost):
    """A `remote=True` service: a non-detached actor named after its job."""

    kind = "ray"

    def __init__(self, spec: ServiceSpec, job_tag: str, placement_timeout: float = 60.0) -> None:
        super().__init__(spec)
        self.job_tag = job_tag
        self.placement_timeout = placement_timeout
        self.node: str | None = None
        self.node_label: str | None = None
        self.wrapper: ActorWrapper | None = None
        self._methods: set[str] = set()
        self._sink: OutputSink | None = None
        self._stats_ref: Any = None
        self._stats_at = 0.0
        self._stats_lock = threading.Lock()

    @property
    def actor_id(self) -> str | None:
        return self.wrapper.actor_id if self.wrapper is not None else None

    @property
    def actor(self) -> Any:
        """The actor's handle (None before `start`)."""
        return self.wrapper.actor if self.wrapper is not None else None

    def start(self, ctx: RuntimeContext) -> None:
        ensure_ray()
        self.state = ServiceState.STARTING
        self._sink = current_output()  # the dispatcher's threads carry the job's output
        names = ctx.services.names() if ctx.services is not None else [self.name]
        peers = {n: actor_name(self.job_tag, f"svc:{n}") for n in names}
        payload = dumps((self.spec.cls, self.spec.args, self.spec.kwargs))
        name = peers.get(self.name, actor_name(self.job_tag, f"svc:{self.name}"))
        actor = RemoteServiceActor.options(name=name, namespace=NAMESPACE, **actor_options(self.spec.ray_remote_args)
                                     ).remote(payload, self.name, ctx.job_name, ctx.env_name, peers)
        self.wrapper = ActorWrapper(actor, f"service {self.name!r}", self._sink, name)
        self._await_placement(self.wrapper)
        self.accepting = True
        try:
            methods = unwrap(ray.get(actor.start.remote()), self._sink)
        except RayActorError as exc:
            raise RuntimeError(f"the Ray actor of service {self.name!r} could not start: {exc}") from None
        self._methods = set(methods)
        self.state = ServiceState.RUNNING

    def _await_placement(self, wrapper: ActorWrapper) -> None:
        """Wait (at most `placement_timeout`) until Ray placed the actor; else kill it and
        fail naming the service and what it asked for."""
        try:
            wrapper.actor_id, self.node = ray.get(wrapper.actor.where.remote(), timeout=self.placement_timeout)
        except GetTimeoutError:
            wrapper.kill()
            self.wrapper = None  # killed: nothing left to clean
            raise RuntimeError(
                f"Ray could not place the actor of service {self.name!r} within placement_timeout="
                f"{self.placement_timeout:g} s: it asked for {describe_demand(self.spec.ray_remote_args)}. "
                "No alive node has these resources free; lower the request or add a node that has them"
            ) from None
        except RayActorError as exc:
            raise RuntimeError(f"the Ray actor of service {self.name!r} could not start: {exc}") from None
        self.node_label = node_label(self.node)

    def method(self, method: str) -> Callable[..., Any]:
        if self.wrapper is None:
            raise ServiceCallError(f"service {self.name!r} is {self.state.value}; it takes no calls yet")
        if method.startswith("_") or method not in self._methods:
            raise ServiceCallError(
                f"service {self.name!r} ({self.spec.cls.__name__}) has no method {method!r}")
        host, actor, name = self, self.wrapper.actor, self.name

        def call(*args: Any, **kwargs: Any) -> Any:
            if not host.accepting:
                raise ServiceCallError(f"service {name!r} is {host.state.value}; it takes no more calls")
            host.calls += 1
            try:
                result = ray.get(actor.call.remote(method, args, kwargs))
            except RayActorError as exc:
                raise ServiceCallError(f"service {name!r} is gone: its Ray actor died") from exc
            return unwrap(result, host._sink)

        return call

    def status(self) -> ServiceStatus:
        self._refresh_stats()
        return ServiceStatus(self.name, self.kind, self.state, self.calls, self.actor_id, self.error,
                             self.node, self.node_label)

    def _refresh_stats(self) -> None:
        """Call counts from the actor (it also counts calls from task actors), without
        blocking: collect the last answer if it came, ask again now and then."""
        if self.state is not ServiceState.RUNNING or self.wrapper is None:
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
                self._stats_ref = self.wrapper.actor.stats.remote()
        except Exception:  # noqa: BLE001 - a status read must never fail the caller
            self._stats_ref = None
        finally:
            self._stats_lock.release()

    def stop_and_cleanup(self, policy: CleanupPolicy) -> ServiceCleanup:
        t0 = time.perf_counter()
        if self.wrapper is None:  # never started: nothing to clean or kill
            skipped = HookOutcome("skipped")
            return self.ended(ServiceCleanup(self.name, self.kind, skipped, skipped, None))
        self.state = ServiceState.STOPPING
        self._collect_stats()
        _, killed = self.wrapper.cleanup_and_kill(policy.graceful_timeout, no_restart=True,
                                                  kill_timeout=max(policy.kill_timeout, 0.5))
        self.accepting = False
        stop, cleanup = self.wrapper.outcomes or (HookOutcome("skipped"), HookOutcome("skipped"))
        self.calls = max(self.calls, self.wrapper.calls or 0)
        report = ServiceCleanup(self.name, self.kind, stop, cleanup, killed, time.perf_counter() - t0)
        return self.ended(report)

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
