"""Turn what the user passed to `map(...)`, `from_batch(...)` and friends into stage specs,
with clear errors at declaration time rather than tracebacks from a worker thread."""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable

from .functions import (BaseCoMapFunction, BaseFunction, BaseJoinFunction, BatchFunction, FilterFunction,
                        FlatMapFunction, KeyByFunction, MapFunction, SinkFunction, SourceFunction)

EXPECTED: dict[str, type] = {
    "map": MapFunction,
    "filter": FilterFunction,
    "flatmap": FlatMapFunction,
    "sink": SinkFunction,
    "keyby": KeyByFunction,
    "comap": BaseCoMapFunction,
    "join": BaseJoinFunction,
}


def display_name(obj: Any) -> str:
    name = getattr(obj, "__name__", None) or type(obj).__name__
    return "lambda" if name == "<lambda>" else name


def check_parallelism(method: str, parallelism: Any) -> int:
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"{method}(parallelism={parallelism!r}): parallelism must be an integer >= 1")
    return parallelism


def resolve_function(kind: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     parallelism: int = 1) -> tuple[Callable[[], Any], str]:
    """Return (factory, call style) for an operator or key function."""
    expected = EXPECTED[kind]
    if inspect.isclass(fn) and (issubclass(fn, BaseFunction) or hasattr(fn, "execute")):
        if issubclass(fn, expected):
            check_concrete(kind, fn)
            return functools.partial(fn, *args, **kwargs), "method"
        what = (f"a {_base_of(fn).__name__} subclass" if issubclass(fn, BaseFunction)
                else "a class that is not a SAGE function (it defines execute())")
        raise TypeError(
            f"{kind}({fn.__name__}): {fn.__name__} is {what}; pass a {expected.__name__} "
            "subclass or a plain function"
        )
    # Any other class (str, int, a dataclass...) is a plain callable applied to each record.
    if isinstance(fn, BaseFunction):
        if not isinstance(fn, expected):
            raise TypeError(f"{kind}() got a {_base_of(type(fn)).__name__} instance; pass a {expected.__name__}")
        if args or kwargs:
            raise TypeError(f"{kind}() got a function instance and constructor arguments; pass the class")
        if parallelism > 1:
            return _copies_of(kind, fn, parallelism), "method"
        return (lambda: fn), "method"
    if callable(fn):
        if args or kwargs:
            bound = _bind_extra(fn, args, kwargs)
            return (lambda: bound), "plain"
        return (lambda: fn), "plain"
    raise TypeError(
        f"{kind}() needs a function or a {expected.__name__} subclass, got {type(fn).__name__}: {fn!r:.80}"
    )


def check_concrete(method: str, cls: type) -> None:
    """A class with abstract methods left (`execute`, `map1`...) cannot be built: say so now."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"{method}({cls.__name__}): {cls.__name__} does not define {', '.join(missing)}")


def _copies_of(kind: str, fn: BaseFunction, parallelism: int) -> Callable[[], Any]:
    """Each parallel instance gets its own deep copy of the user's instance (as Flink
    serialises one per subtask); the user's object stays untouched, a template."""
    try:
        _copy(fn)
    except Exception as exc:  # noqa: BLE001 - any failure means it cannot be copied
        name = type(fn).__name__
        raise TypeError(
            f"{kind}({name}(), parallelism={parallelism}): each parallel instance needs its own copy of the "
            f"{name} instance, but it cannot be copied ({type(exc).__name__}: {exc}); pass the class "
            f"{name} (with its constructor arguments) instead, or use parallelism=1"
        ) from None

    return lambda: _copy(fn)


def _copy(fn: BaseFunction) -> BaseFunction:
    # A context from an earlier run holds locks and services: a copy starts without one.
    memo: dict[int, Any] = {id(fn.ctx): None} if fn.ctx is not None else {}
    cached = getattr(fn, "call_service", None)  # set with the context, see attach_context
    if cached is not None:
        memo[id(cached)] = None
    copied: BaseFunction = copy.deepcopy(fn, memo)
    return copied


def _bind_extra(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    def call(data: Any) -> Any:
        return fn(data, *args, **kwargs)

    call.__name__ = display_name(fn)
    return call


def _base_of(cls: type) -> type:
    for base in (BatchFunction, SourceFunction, MapFunction, FilterFunction, FlatMapFunction,
                 SinkFunction, KeyByFunction, BaseCoMapFunction, BaseJoinFunction):
        if issubclass(cls, base):
            return base
    return BaseFunction


def resolve_batch_source(source: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                         method: str) -> tuple[Callable[[], Any], str]:
    """`from_batch` / `from_collection`: a BatchFunction class, an iterable, or a callable
    returning an iterator."""
    if inspect.isclass(source):
        if issubclass(source, SourceFunction) and method == "from_batch":
            raise TypeError(f"{method}({source.__name__}): a SourceFunction is unbounded; use env.from_source")
        # Upstream's from_collection takes any function that produces records, and its
        # batch ends when execute() returns None, whatever the base class.
        if issubclass(source, BatchFunction) or _produces_records(source):
            check_concrete(method, source)
            return functools.partial(source, *args, **kwargs), "method"
        raise TypeError(
            f"{method}({source.__name__}): pass a BatchFunction subclass, an iterable, "
            "or a function returning an iterator"
        )
    if isinstance(source, BatchFunction) or (method != "from_batch" and _produces_records(type(source))):
        return (lambda: source), "method"
    if isinstance(source, (str, bytes)):
        raise TypeError(f"{method}() got a {type(source).__name__}; pass a list of records instead")
    if hasattr(source, "__iter__"):
        if args or kwargs:
            raise TypeError(f"{method}() got an iterable and extra arguments; extra arguments go to a class")
        return (lambda: source), "iter"
    if callable(source):
        name = display_name(source)

        def produce() -> Any:
            out = source(*args, **kwargs)
            if not hasattr(out, "__iter__"):
                raise TypeError(f"{method}({name}): {name}() returned {type(out).__name__}, not an iterable")
            return out

        return produce, "iter"
    raise TypeError(
        f"{method}() needs a BatchFunction subclass, an iterable or a function returning an iterator, "
        f"got {type(source).__name__}: {source!r:.80}"
    )


def resolve_unbounded_source(source: Any, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    """`from_source`: a SourceFunction class (or instance), or a zero-argument callable
    polled until the job stops."""
    if inspect.isclass(source):
        if issubclass(source, BatchFunction) or _produces_records(source):
            check_concrete("from_source", source)
            return functools.partial(source, *args, **kwargs), "method"
        if issubclass(source, BaseFunction):
            raise TypeError(
                f"from_source({source.__name__}): a {_base_of(source).__name__} consumes records; "
                "pass a SourceFunction subclass (or any function class whose execute() takes no data)"
            )
        raise TypeError(f"from_source({source.__name__}): pass a SourceFunction subclass or a function")
    if isinstance(source, BatchFunction) or _produces_records(type(source)):
        return (lambda: source), "method"
    if callable(source):
        if args or kwargs:
            return (lambda: functools.partial(source, *args, **kwargs)), "plain"
        return (lambda: source), "plain"
    raise TypeError(f"from_source() needs a SourceFunction subclass or a function, got {type(source).__name__}")


_CONSUMERS = (MapFunction, FilterFunction, FlatMapFunction, SinkFunction, KeyByFunction, BaseCoMapFunction,
              BaseJoinFunction)


def _produces_records(cls: type) -> bool:
    """A function class that makes records: a SourceFunction, or any other BaseFunction
    subclass that is not one of the record consumers (upstream accepts those as sources)."""
    return issubclass(cls, BaseFunction) and not issubclass(cls, _CONSUMERS)
