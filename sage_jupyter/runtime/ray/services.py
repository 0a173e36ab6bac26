"""`remote=True` services seen from the dispatcher (`RayServiceHost`); the actor that hosts
the service, and the clients code in other actors calls it with, are in service_actor.py."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..context import RuntimeContext
from ..errors import ServiceCallError
from ..graph import ServiceSpec
from ..job import HookOutcome, ServiceCleanup, ServiceState, ServiceStatus
from ..policy import CleanupPolicy
from ..services import ServiceHost
from ..threads import OutputSink, current_output
from .capture import deliver_output
from .cluster import actor_options, ensure_ray, node_label
from .options import describe_demand
from .orphans import NAMESPACE, actor_name, kill_actor, wait_dead
from .pickling import dumps
from .service_actor import RemoteServiceActor, unwrap

STATS_EVERY_S = 0.25  # how often the driver reads the actor's call count
ANNOUNCE_TIMEOUT_S = 5.0  # a placed actor answers control calls within milliseconds


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
        if self._ending:  # a stop came while Ray placed the actor: run no hook
            return
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
        if actor is None:  # never created, or never placed (killed then): nothing to clean
            skipped = HookOutcome("skipped")
            return self.ended(ServiceCleanup(self.name, self.kind, skipped, skipped, None))
        self._announce_stop(actor)
        self.state = ServiceState.STOPPING
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

    def _announce_stop(self, actor: Any) -> None:
        """Tell a placed actor of the stop before reporting STOPPING, so a `setup()` that
        returns from now on is the last hook it runs. An actor still waiting for a node runs
        no hook yet (the starter checks `_ending` before it asks for one)."""
        if self._actor_hex is None:
            return
        try:
            ray.get(actor.begin_stop.remote(), timeout=ANNOUNCE_TIMEOUT_S)
        except (GetTimeoutError, RayActorError):
            pass  # busy or gone: the shutdown that follows deals with it

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
