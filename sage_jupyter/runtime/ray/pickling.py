"""User code sent to Ray workers: Ray's own pickler, and the check at submit that every
stage and remote service can be sent (naming the culprit when not)."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from ..graph import PipelineGraph, ServiceSpec
from ..shipping import local_modules
from .cluster import ensure_ray


def _pickler() -> ModuleType:
    """The pickler Ray itself uses for arguments (it ships code by value)."""
    from ray import cloudpickle

    return cloudpickle


def dumps(obj: Any) -> bytes:
    data: bytes = _pickler().dumps(obj)
    return data


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
