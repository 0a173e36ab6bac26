"""Which user code must travel by value to another process (a Ray worker, a JobManager).

cloudpickle sends classes and functions by reference (module + name) unless told
otherwise; a worker that cannot import the module (a test file, a script's neighbour, a
notebook) then fails. Modules that are not `__main__`, not ours, not the standard library
and not an installed package are shipped by value instead.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
import types
from typing import Any, Iterable, Iterator

from .graph import PipelineGraph, ServiceSpec


def _installed_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def ships_by_value(module: types.ModuleType) -> bool:
    """True for a module another process may be unable to import."""
    name = module.__name__
    if name == "__main__" or name.split(".")[0] in ("sage_jupyter", "builtins"):
        return False  # cloudpickle ships __main__ by value anyway
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return not os.path.realpath(path).startswith(_installed_roots())


def _code_objects(obj: Any) -> Iterator[Any]:
    """The user's classes and functions behind a stage object or a factory."""
    if obj is None:
        return
    if isinstance(obj, functools.partial):
        yield from _code_objects(obj.func)
        return
    yield obj
    for cell in getattr(obj, "__closure__", None) or ():  # factories close over the user's object
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(content, (type, types.FunctionType, functools.partial)):
            yield from _code_objects(content)


def user_modules(graph: PipelineGraph, services: Iterable[ServiceSpec]) -> list[types.ModuleType]:
    """Modules defining the pipeline's functions, key functions and service classes."""
    objects: list[Any] = []
    for stage in graph.stages:
        objects += [stage.user_object, *_code_objects(stage.key_factory)]
        objects += [o for route in stage.inputs for o in _code_objects(route.key_factory)]  # connected streams
        if isinstance(stage.user_object, (list, tuple)):  # comap([f0, f1])
            objects += list(stage.user_object)
    objects += [s.cls for s in services]
    names: set[str] = set()
    for obj in objects:
        for c in obj.__mro__ if isinstance(obj, type) else (obj, type(obj)):
            name = getattr(c, "__module__", None)
            if isinstance(name, str):
                names.add(name)
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


def local_modules(graph: PipelineGraph, services: Iterable[ServiceSpec]) -> list[types.ModuleType]:
    """The pipeline's modules that must be shipped by value."""
    return [m for m in user_modules(graph, services) if ships_by_value(m)]
