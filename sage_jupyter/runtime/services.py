"""Service hosting and calling.

A host owns one service instance for one job: in this thread's process (`LocalServiceHost`)
or in a Ray actor (`ray.services.RayServiceHost`). Both offer the same small interface, so
the dispatcher and `call_service` do not care where a service lives.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from .context import RuntimeContext, attach_context
from .errors import ServiceCallError
from .executor import DaemonExecutor
from .graph import ServiceSpec
from .job import ErrorInfo, HookOutcome, ServiceCleanup, ServiceState, ServiceStatus
from .policy import CleanupPolicy
from .proxies import ServiceProxy, proxy_class
from .service_calls import Bias, call_function
from .threads import spawn
from .tracebacks import error_info as error_info  # re-exported: the backends import it from here




def tag_service_error(exc: BaseException, service: str, method: str) -> None:
    """Put the service's name into the exception's message, keeping its type."""
    tag = f"[service {service!r}.{method}()]"
    if getattr(exc, "_sage_tagged", False):
        return
    try:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (f"{tag} {exc.args[0]}",) + tuple(exc.args[1:])
        elif hasattr(exc, "add_note"):
            exc.add_note(f"raised by {tag}")
        exc._sage_tagged = True  # type: ignore[attr-defined]  # a marker on the user's exception
    except Exception:  # noqa: BLE001 - some exception types refuse new attributes
        pass


def run_hook(fn: Callable[[], Any] | None, timeout: float, name: str) -> HookOutcome:
    """Run one lifecycle hook in a daemon thread, giving up after `timeout` seconds."""
    if fn is None:
        return HookOutcome("skipped")
    result: list[BaseException | None] = []
    t0 = time.perf_counter()

    def target() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded in the report
            result.append(exc)

    worker = spawn(target, name)
    worker.join(timeout)
    dt = time.perf_counter() - t0
    if worker.is_alive():
        return HookOutcome("timeout", dt, f"still running after {timeout:g} s")
    exc = result[0]
    if exc is None:
        return HookOutcome("ok", dt)
    return HookOutcome("error", dt, f"{type(exc).__name__}: {exc}")


class ServiceHost(abc.ABC):
    """Interface of a service host. Subclasses fill in where the instance lives."""

    kind = "thread"

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.state = ServiceState.CREATED
        self.calls = 0
        self.error: ErrorInfo | None = None
        self.accepting = False
        self.calls_left_running: tuple[str, ...] = ()  # calls the host saw still running at its cleanup

    @abc.abstractmethod
    def start(self, ctx: RuntimeContext) -> None:
        """Build the instance, attach its context, run `setup()` then `start()`."""

    @abc.abstractmethod
    def method(self, method: str) -> Callable[..., Any]:
        """A callable that runs `method` on the service, counting calls."""

    @abc.abstractmethod
    def stop_and_cleanup(self, policy: CleanupPolicy) -> ServiceCleanup:
        """Run `stop()` then `cleanup()` under the policy's timeouts; never raises."""

    @property
    def actor_id(self) -> str | None:
        return None

    def proxy(self, eligible: bool) -> Any:
        """`call_service[name]` for one caller; `eligible`: a task's own caller (see proxies.py)."""
        return LookupProxy(self)

    @property
    def call_count(self) -> int:
        """Calls the service took, by every path."""
        return self.calls

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.name, self.kind, self.state, self.call_count, self.actor_id, self.error)

    def ended(self, report: ServiceCleanup) -> ServiceCleanup:
        """Set the final state after cleanup: FAILED if `setup()`/`start()` raised (its
        error is `self.error`) or a cleanup hook went wrong, else CLEANED."""
        if self.error is not None:
            report = dataclasses.replace(report, start_error=f"{self.error.type}: {self.error.message}")
        self.state = ServiceState.CLEANED if report.cleaned else ServiceState.FAILED
        return report


class LocalServiceHost(ServiceHost):
    """A service living in this process; calls are plain method calls (no queue hop).

    A stop may come while `setup()` or `start()` still runs (on the job's starter thread):
    the host then runs no further start hook, waits for the running one within the graceful
    timeout and cleans up after it, or leaves it running and runs no hook at all after it.
    """

    kind = "thread"
    _bias: Bias | None = None  # made with the instance: it depends on `concurrent_calls`

    def __init__(self, spec: ServiceSpec) -> None:
        super().__init__(spec)
        self.instance: Any = None
        self._proxy_class: type[ServiceProxy] | None = None
        self._phase = threading.Lock()  # orders the starter's next hook against a stop
        self._started = threading.Event()  # start() returned (done, failed or cut short)
        self._starting_hook = "__init__"  # what start() runs now, for the report
        self._ending = False  # a stop began: the starter runs no further hook
        self._cut: tuple[str, float] | None = None  # (hook, when) a stop came while a start hook ran
        self._ran_start = False

    def start(self, ctx: RuntimeContext) -> None:
        try:
            self.state = ServiceState.STARTING
            self.instance = self.spec.cls(*self.spec.args, **self.spec.kwargs)
            # One call at a time, like an actor, so service state needs no locks of its own;
            # a service declaring `concurrent_calls = True` takes parallel calls.
            serialised = not getattr(self.instance, "concurrent_calls", False)
            self._bias = Bias(threading.RLock(), serialised)  # reentrant: a service may call itself
            attach_context(self.instance, ctx)
            self.accepting = True  # setup() may already call other services or itself
            for hook in ("setup", "start"):
                fn = getattr(self.instance, hook, None)
                if not callable(fn):
                    continue
                with self._phase:
                    if self._ending:
                        return
                    self._starting_hook = hook
                fn()
                self._ran_start = hook == "start"
            with self._phase:
                if not self._ending:  # a stop that gave up on this start owns the state now
                    self.state = ServiceState.RUNNING
        finally:
            self._started.set()

    def announce_stop(self) -> None:
        """A stop is coming: from now on the starter runs no further hook. The cleanup that
        follows treats a hook running now as cut short by the stop (a Ray actor hears of
        the stop first and runs the cleanup after the calls in flight end)."""
        with self._phase:
            self._ending = True
            if self._cut is None and not self._started.is_set():
                self._cut = (self._starting_hook, time.perf_counter())

    @property
    def call_count(self) -> int:
        """The locked path's count (`calls`) and the lock-free paths' (their proxies')."""
        return self.calls + (self._bias.lock_free_calls() if self._bias is not None else 0)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self._accepting = value
        if not value and self._bias is not None:
            self._bias.close()  # the callers' lock-free paths end with it

    def method(self, method: str, reentrant: bool = False) -> Callable[..., Any]:
        """The locked path of `method` (see service_calls.py). `reentrant`: for a call made
        from inside a call this service runs now, arriving on another thread (a Ray actor's
        self-call): it takes no lock, as an `RLock` would not."""
        bound = getattr(self.instance, method, None)
        if method.startswith("_") or not callable(bound):
            raise ServiceCallError(
                f"service {self.name!r} ({type(self.instance).__name__}) has no method {method!r}"
            )
        bias = self._bias if self._bias is not None and self._bias.serialised and not reentrant else None
        return call_function(bound, self, bias, self._refuse, self._tagger(method), f"{self.name}.{method}()")

    def proxy(self, eligible: bool) -> Any:
        if self.instance is None or self._bias is None:
            raise ServiceCallError(f"service {self.name!r} is not running yet; it takes no calls")
        if self._proxy_class is None:  # a race here makes a second class: harmless
            self._proxy_class = proxy_class(self.name, self.instance, self, self._bias, self.method, self._tagger)
        return self._proxy_class(self, eligible)

    def _refuse(self) -> None:
        raise ServiceCallError(f"service {self.name!r} is {self.state.value}; it takes no more calls")

    def _tagger(self, method: str) -> Callable[[BaseException], None]:
        name = self.name

        def tag(exc: BaseException) -> None:
            tag_service_error(exc, name, method)

        return tag

    def stop_and_cleanup(self, policy: CleanupPolicy) -> ServiceCleanup:
        t0 = time.perf_counter()
        setup: HookOutcome | None = None
        skipped = HookOutcome("skipped")
        self.announce_stop()
        if self._cut is not None:  # the stop came while a start hook ran
            hook, stopped_at = self._cut
            self.state = ServiceState.STOPPING
            if not self._started.wait(policy.graceful_timeout):
                self.accepting = False
                self.state = ServiceState.FAILED
                dt = time.perf_counter() - stopped_at
                setup = HookOutcome("timeout", dt, f"{hook}() still running {dt:.2g} s after the stop; left running, "
                                    "no hook runs after it")
                return ServiceCleanup(self.name, self.kind, skipped, skipped, None, time.perf_counter() - t0, setup)
            setup = HookOutcome("late", time.perf_counter() - stopped_at,
                                f"{hook}() was still running at the stop; cleaned after it returned")
        if self.instance is None:  # never built
            return self.ended(ServiceCleanup(self.name, self.kind, skipped, skipped, None, 0.0, setup))
        self.state = ServiceState.STOPPING
        # stop() undoes start(): skip it when the stop kept start() from running
        stop_fn = getattr(self.instance, "stop", None) if self._ran_start or setup is None else None
        stop = run_hook(stop_fn, policy.graceful_timeout, f"sage-stop:{self.name}")
        self.accepting = False
        cleanup = run_hook(
            getattr(self.instance, "cleanup", None), policy.graceful_timeout, f"sage-cleanup:{self.name}"
        )
        report = ServiceCleanup(self.name, self.kind, stop, cleanup, None, time.perf_counter() - t0, setup)
        return self.ended(report)


class LookupProxy:
    """`call_service["name"]` for a service in a Ray actor (or one code in an actor cannot
    reach): attribute access gives the host's call function of that method, looked up once.
    A local service has its own proxies (proxies.py), for which a call costs far less."""

    def __init__(self, host: ServiceHost) -> None:
        self._host = host

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        call = self._host.method(method)
        self.__dict__[method] = call  # later lookups skip __getattr__
        return call

    def __repr__(self) -> str:
        return f"<service {self._host.name!r} ({self._host.kind})>"


class ServiceCaller(dict[str, Any]):
    """`self.call_service` in functions and services: one per caller (each function
    instance, each service), all of a job's callers sharing its hosts.

    `call_service["cache"].get(key)` or the upstream form
    `call_service("cache", key, method="get", timeout=10)`.
    A dict of this caller's proxies, made on first use, so `call_service[name]` is a plain
    dict lookup. A task's caller is `eligible` for a service's lock-free path (proxies.py):
    it calls from that task's thread only. Calls with a timeout and async calls run on the
    job's call pool, so they take the locked path, as do the calls of services.
    """

    def __init__(self, hosts: dict[str, ServiceHost], executor_factory: Callable[[], DaemonExecutor],
                 eligible: bool = False) -> None:
        super().__init__()
        self._hosts = hosts
        self._executor_factory = executor_factory
        self._eligible = eligible
        self._pooled: dict[tuple[str, str], Callable[..., Any]] = {}  # the locked paths the call pool runs

    def for_caller(self, eligible: bool) -> ServiceCaller:
        """A caller of its own over the same services (see the class docstring)."""
        return ServiceCaller(self._hosts, self._executor_factory, eligible)

    def settle(self) -> None:
        """Fold the call counts of this caller's lock-free paths: its task calls this on its
        own thread between batches, so the counts take memory for one batch's calls only."""
        for proxy in self.values():
            if isinstance(proxy, ServiceProxy):
                proxy._sage_settle()

    def __missing__(self, name: str) -> Any:
        host = self._hosts.get(name)
        if host is None:
            known = ", ".join(sorted(self._hosts)) or "none"
            raise ServiceCallError(
                f"unknown service {name!r}; registered services: {known} (register it with env.register_service)"
            )
        proxy = self[name] = host.proxy(self._eligible)
        return proxy

    def _method(self, name: str, method: str) -> Callable[..., Any]:
        """This caller's `call_service[name].<method>`, or a ServiceCallError naming it."""
        try:
            found: Callable[..., Any] = getattr(self[name], method)
        except AttributeError:  # not a method of the service's class: the host knows more
            found = self._hosts[name].method(method)  # (or raises the ServiceCallError naming it)
        return found

    def _pool_method(self, name: str, method: str) -> Callable[..., Any]:
        """The locked path of a method, for a call the job's call pool runs."""
        self[name]  # an unknown service is a ServiceCallError
        call = self._pooled.get((name, method))
        if call is None:
            call = self._pooled[(name, method)] = self._hosts[name].method(method)
        return call

    # a caller is equal only to itself
    __eq__ = object.__eq__
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __call__(self, name: str, *args: Any, method: str | None = "process", timeout: float | None = None,
                 **kwargs: Any) -> Any:
        method = method or "process"  # upstream passes method=None for the default
        if timeout is None:
            return self._method(name, method)(*args, **kwargs)
        future = self._executor_factory().submit(self._pool_method(name, method), *args, **kwargs)
        try:
            return future.result(timeout)
        except TimeoutError as exc:
            if future.done():
                raise
            raise TimeoutError(f"service {name!r}.{method}() did not answer within {timeout:g} s") from exc

    def call_async(self, name: str, *args: Any, method: str | None = "process", **kwargs: Any) -> Future[Any]:
        """Run a service call on the job's call pool; returns a `concurrent.futures.Future`."""
        kwargs.pop("timeout", None)  # a Future has its own timeout in .result()
        call = self._pool_method(name, method or "process")
        future: Future[Any] = self._executor_factory().submit(call, *args, **kwargs)
        return future

    def names(self) -> list[str]:
        return list(self._hosts)
