"""ConnectedStreams: two or more streams feeding one stage (`a.connect(b).comap(F)`), as upstream SAGE.

Each input keeps its own identity (and its own keyby) until a multi-input stage consumes them:
`comap` and `join` see which input a record came from; `map`, `sink` and `print` merge them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..runtime.graph import InputRoute, StageSpec
from ..runtime.ray.options import check_ray_remote_args
from .datastream import DataStream
from .functions import BaseCoMapFunction
from .print_sink import PrintSink
from .resolve import check_parallelism, display_name, resolve_function

if TYPE_CHECKING:  # pragma: no cover
    from .environment import BaseEnvironment


class ConnectedStreams:
    """Streams of one environment, in connection order: input 0 is the first."""

    def __init__(self, env: "BaseEnvironment", streams: Sequence[DataStream]) -> None:
        if len(streams) < 2:
            raise ValueError(f"ConnectedStreams needs at least 2 streams, got {len(streams)}")
        for i, stream in enumerate(streams):
            if not isinstance(stream, DataStream):
                raise TypeError(f"connect(): input {i} is a {type(stream).__name__}, not a DataStream")
            if stream._env is not env:
                raise ValueError(
                    f"connect(): input {i} belongs to environment {stream._env.name!r}, not {env.name!r}; "
                    "only streams of one environment can be connected"
                )
        self._env = env
        self._streams = tuple(streams)

    @property
    def streams(self) -> tuple[DataStream, ...]:
        """The connected streams, input 0 first."""
        return self._streams

    @property
    def transformations(self) -> list[StageSpec]:
        """The stage behind each input, input 0 first (upstream's attribute)."""
        return [s._stage for s in self._streams]

    def __len__(self) -> int:
        return len(self._streams)

    def connect(self, other: "DataStream | ConnectedStreams") -> "ConnectedStreams":
        """Add one more input (or every input of other connected streams) after the current ones."""
        if isinstance(other, ConnectedStreams):
            return ConnectedStreams(self._env, self._streams + other._streams)
        return ConnectedStreams(self._env, self._streams + (other,))

    def keyby(self, key_selectors: Any, strategy: str = "hash") -> "ConnectedStreams":
        """Key every input: one key function (or `KeyByFunction` class) for all inputs, or a
        list with one per input, in input order."""
        if isinstance(key_selectors, (list, tuple)):
            if len(key_selectors) != len(self._streams):
                raise ValueError(
                    f"keyby(): {len(key_selectors)} key selectors for {len(self._streams)} connected streams; "
                    "pass one per stream, or a single one for all"
                )
            selectors = list(key_selectors)
        else:
            selectors = [key_selectors] * len(self._streams)
        keyed = [stream.keyby(selector, strategy=strategy)
                 for stream, selector in zip(self._streams, selectors, strict=True)]
        return ConnectedStreams(self._env, keyed)

    def comap(self, function: Any, *args: Any, parallelism: int = 1,
              ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> DataStream:
        """Process each input with its own method: a `BaseCoMapFunction` subclass whose `mapN`
        gets the records of input N, or a list of plain functions, one per input. The results
        go on as one stream; `None` drops a record."""
        count = len(self._streams)
        if isinstance(function, (list, tuple)):
            if len(function) != count or not all(callable(f) for f in function):
                raise TypeError(f"comap(): pass {count} functions, one per connected stream, got {function!r:.80}")
            if args or kwargs:
                raise TypeError("comap() got a list of functions and constructor arguments; arguments go to a class")
            functions = list(function)
            check_parallelism("comap", parallelism)
            return self._add("comap", "functions", lambda: functions, "plain", parallelism, function, ray_remote_args)
        cls = function if inspect.isclass(function) else type(function)
        if issubclass(cls, BaseCoMapFunction):
            abstract: frozenset[str] = getattr(cls, "__abstractmethods__", frozenset())
            missing = [f"map{i}" for i in range(count)
                       if f"map{i}" in abstract or not callable(getattr(cls, f"map{i}", None))]
            if missing:
                raise TypeError(
                    f"comap({cls.__name__}): {count} streams are connected, so it needs "
                    f"{', '.join(f'map{i}' for i in range(count))}; missing {', '.join(missing)}"
                )
        elif callable(function) and not inspect.isclass(function):
            raise TypeError(
                f"comap() needs a BaseCoMapFunction subclass (map0, map1, ...) or a list of {count} functions, "
                f"got {display_name(function)}"
            )
        return self._resolved("comap", function, args, kwargs, parallelism, ray_remote_args)

    def join(self, function: Any, *args: Any, parallelism: int = 1,
             ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> DataStream:
        """Join two keyed streams: a `BaseJoinFunction` subclass whose `execute(payload, key, tag)`
        gets every record of both inputs with its key and input index, and returns the records
        to emit. Its state lives per instance; records of one key always reach the same instance."""
        if len(self._streams) != 2:
            raise ValueError(f"join() needs exactly 2 connected streams, got {len(self._streams)}")
        unkeyed = [i for i, s in enumerate(self._streams) if s._key_factory is None]
        if unkeyed:
            raise ValueError(
                f"join(): input {', '.join(map(str, unkeyed))} is not keyed; call .keyby(...) on each stream "
                "before connect(), or on the connected streams"
            )
        spread = [i for i, s in enumerate(self._streams) if s._partition != "hash"]
        if spread:  # a broadcast or round-robin input would meet its key's state in several instances
            raise ValueError(
                f"join(): input {', '.join(map(str, spread))} is not partitioned by its key; "
                "a join needs keyby(..., strategy='hash') on every input"
            )
        return self._resolved("join", function, args, kwargs, parallelism, ray_remote_args)

    def map(self, function: Any, *args: Any, parallelism: int = 1,
            ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> DataStream:
        """One function over the records of every input, merged into one stream."""
        return self._resolved("map", function, args, kwargs, parallelism, ray_remote_args)

    def sink(self, function: Any, *args: Any, parallelism: int = 1,
             ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> DataStream:
        """One sink consuming the records of every input."""
        return self._resolved("sink", function, args, kwargs, parallelism, ray_remote_args)

    def print(self, prefix: str = "", separator: str = " | ", colored: bool = True,
              ray_remote_args: dict[str, Any] | None = None) -> DataStream:
        """Print every record of every input (a sink), as `DataStream.print`."""
        return self.sink(PrintSink, prefix=prefix, separator=separator, colored=colored,
                         ray_remote_args=ray_remote_args)

    def _resolved(self, kind: str, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                  parallelism: int, ray_remote_args: dict[str, Any] | None) -> DataStream:
        check_parallelism(kind, parallelism)  # before resolving: a function instance is copied per instance
        factory, call = resolve_function(kind, function, args, kwargs, parallelism)
        return self._add(kind, display_name(function), factory, call, parallelism, function, ray_remote_args)

    def _add(self, kind: str, name: str, factory: Callable[[], Any], call: str, parallelism: int,
             user_object: Any, ray_remote_args: dict[str, Any] | None = None) -> DataStream:
        """The stage over every input (its `parallelism` checked already)."""
        for i, stream in enumerate(self._streams):
            if stream._stage.kind == "sink":
                raise ValueError(f"{kind}(): input {i} is a sink's stream; a sink ends its stream")
        remote_args = check_ray_remote_args(f"{kind}({name})", ray_remote_args)
        stage = self._env._add_stage(kind, name, factory, call, parallelism,
                                     upstream=tuple(s._stage.id for s in self._streams), user_object=user_object,
                                     ray_remote_args=remote_args)
        stage.inputs = tuple(InputRoute(s._partition, s._key_factory) for s in self._streams)
        return DataStream(self._env, stage)

    def __repr__(self) -> str:
        labels = ", ".join(s._stage.label for s in self._streams)
        return f"<ConnectedStreams of {labels} in {self._env.name!r}>"

