"""Environments: where a pipeline and its services are declared and submitted."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

from ..runtime.dispatcher import Dispatcher
from ..runtime.extras import require_extra
from ..runtime.graph import PipelineGraph, ServiceSpec, StageSpec
from ..runtime.handle import JobHandle
from ..runtime.limits import check_limits
from ..runtime.policy import CleanupPolicy
from ..runtime.ray.options import check_ray_remote_args
from .datastream import DataStream
from .resolve import display_name, resolve_batch_source, resolve_unbounded_source
from .upstream_env import UpstreamEnvironment

if TYPE_CHECKING:  # pragma: no cover
    from ..jobmanager.remote_handle import RemoteJobHandle

BACKENDS = ("thread", "ray")


def as_policy(value: Any, where: str) -> CleanupPolicy:
    if isinstance(value, CleanupPolicy):
        return value
    if isinstance(value, dict):
        try:
            return CleanupPolicy(**value)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}; use graceful_timeout and kill_timeout") from None
    raise TypeError(f"{where}: expected a CleanupPolicy or a dict, got {type(value).__name__}")


def ray_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config["ray"]`, checked: today only `placement_timeout` (seconds, default 60)."""
    ray = config.get("ray", {})
    if not isinstance(ray, dict):
        raise ValueError(f"config['ray'] must be a dict, got {type(ray).__name__}")
    unknown = set(ray) - {"placement_timeout"}
    if unknown:
        raise ValueError(f"config['ray']: unknown key(s) {sorted(unknown)}; accepted: placement_timeout")
    timeout = ray.get("placement_timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"config['ray']['placement_timeout'] must be a finite number of seconds > 0, got {timeout!r}")
    return {"placement_timeout": float(timeout)}


class BaseEnvironment(UpstreamEnvironment):
    """Declares services and streams; subclasses decide where `submit` runs them."""

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"environment name must be a non-empty string, got {name!r}")
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        self.name = name
        self.config: dict[str, Any] = dict(config or {})
        if "cleanup" in self.config:  # a bad policy is refused here, not at submit
            as_policy(self.config["cleanup"], "config['cleanup']")
        self._graph = PipelineGraph()
        self._services: dict[str, ServiceSpec] = {}
        self._job: JobHandle | RemoteJobHandle | None = None  # RemoteEnvironment's is remote

    # ---- declaring ------------------------------------------------------------------

    def register_service(self, name: str, service_class: type, *args: Any, remote: bool = False,
                         ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Register a service class, built when the job starts (a Ray actor if `remote`;
        `ray_remote_args` go to that actor's `.options()`)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"register_service: the name must be a non-empty string, got {name!r}")
        if name in self._services:
            raise ValueError(f"register_service: a service named {name!r} is already registered in {self.name!r}")
        if not inspect.isclass(service_class):
            raise TypeError(
                f"register_service({name!r}, ...): pass the service class, not {type(service_class).__name__}"
            )
        if getattr(service_class, "__dictoffset__", 1) == 0:  # dict, int, __slots__ classes: no self.ctx
            raise TypeError(
                f"register_service({name!r}, {service_class.__name__}): its instances cannot take attributes, "
                "so the runtime cannot attach self.ctx; pass a BaseService subclass (or a plain class)"
            )
        remote_args = check_ray_remote_args(f"register_service({name!r})", ray_remote_args)
        if remote_args is not None and not remote and self._runs_on_threads():
            raise ValueError(
                f"register_service({name!r}, ray_remote_args=...): the service runs on a thread "
                "(remote=False on a thread-backend environment), where ray_remote_args would do "
                "nothing; pass remote=True to run it as a Ray actor, or drop ray_remote_args"
            )
        self._check_not_submitted("register_service")
        self._services[name] = ServiceSpec(name, service_class, args, kwargs, bool(remote), remote_args)

    def _runs_on_threads(self) -> bool:
        """Whether services with remote=False of this environment surely run on threads."""
        return False

    def from_batch(self, source: Any, *args: Any, ray_remote_args: dict[str, Any] | None = None,
                   **kwargs: Any) -> DataStream:
        """A bounded source: a `BatchFunction` subclass (extra arguments go to its
        constructor), an iterable, or a function returning an iterator."""
        return self._bounded("from_batch", source, args, kwargs, ray_remote_args)

    def from_collection(self, source: Any, *args: Any, ray_remote_args: dict[str, Any] | None = None,
                        **kwargs: Any) -> DataStream:
        """Upstream SAGE spelling of `from_batch`."""
        return self._bounded("from_collection", source, args, kwargs, ray_remote_args)

    def _bounded(self, method: str, source: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 ray_remote_args: dict[str, Any] | None) -> DataStream:
        remote_args = check_ray_remote_args(f"{method}({display_name(source)})", ray_remote_args)
        factory, call = resolve_batch_source(source, args, kwargs, method)
        return self._source(factory, call, source, bounded=True, ray_remote_args=remote_args)

    def from_source(self, source: Any, *args: Any, ray_remote_args: dict[str, Any] | None = None,
                    **kwargs: Any) -> DataStream:
        """An unbounded source: a `SourceFunction` subclass, called until the job stops."""
        remote_args = check_ray_remote_args(f"from_source({display_name(source)})", ray_remote_args)
        factory, call = resolve_unbounded_source(source, args, kwargs)
        return self._source(factory, call, source, bounded=False, ray_remote_args=remote_args)

    def _source(self, factory: Callable[[], Any], call: str, user_object: Any, bounded: bool,
                ray_remote_args: dict[str, Any] | None = None) -> DataStream:
        stage = self._add_stage("source", display_name(user_object), factory, call, 1, (),
                                bounded=bounded, user_object=user_object, ray_remote_args=ray_remote_args)
        return DataStream(self, stage)

    def _add_stage(self, kind: str, name: str, factory: Callable[[], Any], call: str, parallelism: int,
                   upstream: tuple[int, ...], partition: str = "forward",
                   key_factory: Callable[[], Callable[[Any], Any]] | None = None,
                   bounded: bool = True, user_object: Any = None,
                   ray_remote_args: dict[str, Any] | None = None) -> StageSpec:
        self._check_not_submitted(kind)
        stage = StageSpec(len(self._graph.stages), kind, name, factory, call, parallelism, upstream,
                          partition, key_factory, bounded, user_object, ray_remote_args=ray_remote_args)
        return self._graph.add(stage)

    def _check_not_submitted(self, what: str) -> None:
        if self._job is not None:
            raise RuntimeError(f"{what}: environment {self.name!r} was already submitted; build a new environment")

    # ---- submitting -----------------------------------------------------------------

    def _validate_for_submit(self) -> None:
        if self._job is not None:
            raise RuntimeError(
                f"environment {self.name!r} was already submitted (job {self._job.job_id}); "
                "build a new environment to run the pipeline again"
            )
        if not any(s.kind == "sink" for s in self._graph.stages):
            raise ValueError(
                f"environment {self.name!r} has no sink: end the pipeline with .sink(...) so its records go somewhere"
            )

    def _policy(self, cleanup: Any) -> CleanupPolicy:
        if cleanup is not None:
            return as_policy(cleanup, "submit(cleanup=...)")
        if "cleanup" in self.config:
            return as_policy(self.config["cleanup"], "config['cleanup']")
        return CleanupPolicy()

    @property
    def job(self) -> JobHandle | RemoteJobHandle | None:
        """The handle of the submitted job, if any."""
        return self._job

    @property
    def has_sink(self) -> bool:
        """True once the pipeline has a sink (what `submit()` requires)."""
        return any(s.kind == "sink" for s in self._graph.stages)

    def stop(self) -> None:
        """Stop this environment's job (if any) and clean its services; blocks until done."""
        if self._job is not None:
            self._job.stop(wait=True)

    def close(self) -> None:
        """Upstream SAGE name: stop the job and release everything."""
        self.stop()

    def __enter__(self) -> "BaseEnvironment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalEnvironment(BaseEnvironment):
    """Runs the pipeline in this process: on threads, or on Ray actors (`backend="ray"`)."""

    def __init__(self, name: str = "local_environment", backend: str | dict[str, Any] = "thread",
                 config: dict[str, Any] | None = None, **upstream_kwargs: Any) -> None:
        if isinstance(backend, dict) and config is None:  # upstream's LocalEnvironment(name, config)
            config, backend = backend, "thread"
        super().__init__(name, config)
        if backend not in BACKENDS:
            raise ValueError(f"LocalEnvironment(backend={backend!r}): use 'thread' or 'ray'")
        self.backend = backend
        # Upstream accepts extra options (platform, scheduler...); they change nothing here.
        self._upstream_kwargs = upstream_kwargs
        self.enable_monitoring = bool(upstream_kwargs.get("enable_monitoring", False))
        self._output: Callable[[str, str], None] | None = None  # set by the Jupyter layer

    def _runs_on_threads(self) -> bool:
        return self.backend == "thread"

    def route_output(self, sink: Callable[[str, str], None] | None) -> None:
        """Send what the job's stages and services print to `sink(stream, text)` (before
        `submit()`: every thread of the job inherits it), e.g. a notebook widget's output area."""
        self._output = sink

    def submit(self, autostop: bool = False, block: bool | None = None,
               cleanup: CleanupPolicy | dict[str, Any] | None = None, max_records: int | None = None,
               max_duration: float | None = None) -> JobHandle:
        """Start the job. With `autostop=True` every service is stopped and cleaned when the
        pipeline ends, and the call blocks until then unless `block=False`. `max_records`
        bounds the records all sources emit together, `max_duration` the seconds they run;
        then they end as if exhausted (the job FINISHES, every emitted record reaches the sinks).

        Raises `PipelineError` (blocking) if a stage or a service failed.
        """
        limits = check_limits(max_records, max_duration)
        self._validate_for_submit()
        policy = self._policy(cleanup)
        backend_config = ray_config(self.config)
        services = list(self._services.values())
        if self.backend == "ray":  # every service is an actor when tasks are
            services = [dataclasses.replace(s, remote=True) for s in services]
        if self.backend == "ray" or any(s.remote for s in services):
            remote = [s.name for s in services if s.remote]
            require_extra("ray", "backend='ray'" if self.backend == "ray" else f"service {remote[0]!r} (remote=True)")
            from ..runtime.ray.pickling import check_shippable

            check_shippable(self._graph, services)
        dispatcher = Dispatcher(self.name, self._graph, services, backend=self.backend, autostop=autostop,
                                policy=policy, env_name=self.name, output=self._output,
                                backend_config=backend_config, limits=limits)
        self._job = JobHandle(dispatcher)
        dispatcher.start()
        if block is None:
            block = autostop
        if block:
            try:
                self._job.wait()
            except KeyboardInterrupt:
                self._job.stop(wait=True)
                raise
        return self._job
