"""DataStream: the fluent builder users chain (`from_batch(...).map(...).sink(...)`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..runtime.graph import StageSpec
from ..runtime.ray.options import check_ray_remote_args
from .resolve import check_parallelism, display_name, resolve_function

if TYPE_CHECKING:  # pragma: no cover
    from .connected_streams import ConnectedStreams
    from .environment import BaseEnvironment

STRATEGIES = {"hash": "hash", "broadcast": "broadcast", "round_robin": "forward", "forward": "forward"}


class DataStream:
    """A stream of records produced by one stage. Each method adds a stage and returns
    the stream it produces; a stream can feed several stages (each gets every record)."""

    def __init__(self, env: "BaseEnvironment", stage: StageSpec, partition: str = "forward",
                 key_factory: Callable[[], Callable[[Any], Any]] | None = None) -> None:
        self._env = env
        self._stage = stage
        self._partition = partition
        self._key_factory = key_factory

    def _add(self, kind: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], parallelism: int,
             ray_remote_args: dict[str, Any] | None = None) -> DataStream:
        if self._stage.kind == "sink":
            raise ValueError(f"{kind}() after sink(): a sink ends its stream; add stages before the sink")
        check_parallelism(kind, parallelism)
        remote_args = check_ray_remote_args(f"{kind}({display_name(fn)})", ray_remote_args)
        factory, call = resolve_function(kind, fn, args, kwargs, parallelism)
        stage = self._env._add_stage(kind, display_name(fn), factory, call, parallelism,
                                     upstream=(self._stage.id,), partition=self._partition,
                                     key_factory=self._key_factory, user_object=fn,
                                     ray_remote_args=remote_args)
        return DataStream(self._env, stage)

    def map(self, function: Any, *args: Any, parallelism: int = 1,
            ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> "DataStream":
        """Transform each record: a `MapFunction` subclass or a plain callable."""
        return self._add("map", function, args, kwargs, parallelism, ray_remote_args)

    def filter(self, function: Any, *args: Any, parallelism: int = 1,
            ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> "DataStream":
        """Keep records for which the function returns true."""
        return self._add("filter", function, args, kwargs, parallelism, ray_remote_args)

    def flatmap(self, function: Any, *args: Any, parallelism: int = 1,
            ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> "DataStream":
        """Turn each record into zero or more (return an iterable, or call `self.collect`)."""
        return self._add("flatmap", function, args, kwargs, parallelism, ray_remote_args)

    flat_map = flatmap

    def sink(self, function: Any, *args: Any, parallelism: int = 1,
            ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> "DataStream":
        """Consume each record: a `SinkFunction` subclass or a plain callable."""
        return self._add("sink", function, args, kwargs, parallelism, ray_remote_args)

    def keyby(self, function: Any, *args: Any, strategy: str = "hash", **kwargs: Any) -> "DataStream":
        """Route each record of this stream to one instance of the next stage by
        `function(record)`; the record itself is what that stage receives.
        strategy: "hash" (by key), "broadcast" (every instance gets every record) or
        "round_robin"."""
        if self._stage.kind == "sink":
            raise ValueError("keyby() after sink(): a sink ends its stream, so the key would route nothing; "
                             "put keyby before the stage it partitions")
        if strategy not in STRATEGIES:
            raise ValueError(f"keyby(strategy={strategy!r}): use one of {', '.join(STRATEGIES)}")
        factory, call = resolve_function("keyby", function, args, kwargs)
        if call == "method":
            key_factory = _method_of(factory)
        else:
            key_factory = factory
        return DataStream(self._env, self._stage, STRATEGIES[strategy], key_factory)

    key_by = keyby

    def connect(self, other: "DataStream | ConnectedStreams") -> "ConnectedStreams":
        """Connect this stream with another (or with connected streams) for `comap`, `join`,
        `map` or `sink` over all of them; this stream is input 0."""
        from .connected_streams import ConnectedStreams

        if isinstance(other, ConnectedStreams):
            return ConnectedStreams(self._env, (self, *other.streams))
        return ConnectedStreams(self._env, (self, other))

    def print(self, prefix: str = "", separator: str = " | ", colored: bool = True,
              ray_remote_args: dict[str, Any] | None = None) -> "DataStream":
        """A sink printing every record as `prefix | record` (upstream SAGE's `print`)."""
        from .print_sink import PrintSink

        return self.sink(PrintSink, prefix=prefix, separator=separator, colored=colored,
                         ray_remote_args=ray_remote_args)

    def __repr__(self) -> str:
        return f"<DataStream of {self._stage.label} in {self._env.name!r}>"


def _method_of(factory: Callable[[], Any]) -> Callable[[], Callable[[Any], Any]]:
    def make() -> Callable[[Any], Any]:
        execute: Callable[[Any], Any] = factory().execute
        return execute

    return make
