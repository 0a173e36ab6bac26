"""`call_service["name"]` for a service living in this process: one proxy per caller.

A proxy's class is made once per service, with one method per public method of the
service, each generated with that method's own parameters (as `dataclasses` generates
`__init__`). So `call_service["acc"].add(x)` is a plain dict lookup, a method lookup that
CPython specialises (a slotted class without `__getattr__`), and one small frame:

    def add(self, x):
        if not self._sage_fast:
            return _sage_locked(self, x)
        ...count (see _sage_tally), call, tag an error...

`_sage_fast` is true only on the proxy of a service's only caller while the service takes
calls (see `service_calls.Bias`); every other call takes the locked path. An unknown method
is an `AttributeError` (no `__getattr__`, which would cost every lookup); the runtime
reports it as the `ServiceCallError` it is (`unknown_method`).
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable
from typing import Any

from .errors import ServiceCallError
from .service_calls import Bias

_METHOD = """
def {name}(self, {params}):
    if not self._sage_fast:
        return _sage_locked(self, {args})
    self._sage_tally.append(None)
    try:
        return _sage_bound({args})
    except Exception as exc:
        _sage_tag(exc)
        raise
"""
_FALLBACK_LINE = 3  # the line of `_sage_locked(...)` in _METHOD, counted from the `def` line as 1
_ANY = ("*args, **kwargs", "*args, **kwargs")


class ServiceProxy:
    """One caller's view of one service (see the module docstring)."""

    __slots__ = ("_sage_host", "_sage_fast", "_sage_eligible", "_sage_tally", "_sage_folded")
    _sage_service = ""  # the service's name and class, for messages

    def __init__(self, host: Any, eligible: bool) -> None:
        self._sage_host = host
        self._sage_fast = False  # granted on the first call, see Bias.claim
        self._sage_eligible = eligible  # a task's proxy: called from that task's thread only
        # The lock-free calls' count: one entry per call (a list append is about half the
        # cost of `host.calls += 1`, which makes a new int each call), folded into
        # `_sage_folded` by the caller's own thread after each batch (`settle`), so no other
        # thread ever writes either.
        self._sage_tally: list[None] = []
        self._sage_folded = 0

    def _sage_calls(self) -> int:
        """Lock-free calls made through this proxy (read from any thread: a live view)."""
        return self._sage_folded + len(self._sage_tally)

    def _sage_settle(self) -> None:
        """Fold the tally (on the caller's own thread, between its batches)."""
        tally = self._sage_tally
        if tally:
            self._sage_folded += len(tally)
            tally.clear()

    def __repr__(self) -> str:
        return f"<service {self._sage_host.name!r} ({self._sage_host.kind})>"


def unknown_method(exc: BaseException) -> ServiceCallError | None:
    """The `ServiceCallError` an `AttributeError` on a proxy stands for, else None."""
    proxy = getattr(exc, "obj", None) if isinstance(exc, AttributeError) else None
    if not isinstance(proxy, ServiceProxy) or not isinstance(getattr(exc, "name", None), str):
        return None
    return ServiceCallError(f"service {proxy._sage_service} has no method {exc.name!r}")  # type: ignore[attr-defined]


def public_methods(instance: Any) -> list[str]:
    """The methods a caller may call: the public routines of the service's class, found
    without running properties. Read from the class: reading the instance's `__dict__` (as
    `dir(instance)` does) would make every attribute access of the service slower from then on."""
    cls = type(instance)
    names = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)) or inspect.isroutine(attr):
            names.append(name)
    return names


def proxy_class(service: str, instance: Any, host: Any, bias: Bias,
                locked: Callable[[str], Callable[..., Any]], tag: Callable[[str], Callable[[BaseException], None]],
                ) -> type[ServiceProxy]:
    """The proxy class of one service instance. `locked(method)` is the method's locked
    path, `tag(method)` what tags its errors."""
    namespace: dict[str, Any] = {"__slots__": (), "_sage_service": f"{service!r} ({type(instance).__name__})"}
    for name in public_methods(instance):
        if name.isidentifier() and not keyword.iskeyword(name):
            namespace[name] = _method(name, getattr(instance, name), host, bias, locked(name), tag(name))
    return type(f"ServiceProxy[{service}]", (ServiceProxy,), namespace)


def _method(name: str, bound: Callable[..., Any], host: Any, bias: Bias,
            locked: Callable[..., Any], tag: Callable[[BaseException], None]) -> Callable[..., Any]:
    def fallback(proxy: ServiceProxy, *args: Any, **kwargs: Any) -> Any:
        if proxy._sage_eligible and bias.claim(proxy, host):
            return getattr(proxy, name)(*args, **kwargs)  # now lock-free
        return locked(*args, **kwargs)

    namespace: dict[str, Any] = {"_sage_locked": fallback, "_sage_host": host, "_sage_bound": bound,
                                 "_sage_tag": tag}
    params, args = _plain_parameters(bound, namespace) or _ANY
    source = _METHOD.format(name=name, params=params, args=args)
    exec(compile(source, f"<sage proxy {name}>", "exec"), namespace)  # a name tracebacks.py hides
    method: Callable[..., Any] = namespace[name]
    method.__doc__ = getattr(bound, "__doc__", None)
    bias.fast_codes[method.__code__] = method.__code__.co_firstlineno + _FALLBACK_LINE - 1
    return method


def _plain_parameters(bound: Callable[..., Any], namespace: dict[str, Any]) -> tuple[str, str] | None:
    """("x, y=_sage_d1", "x, y") for a method whose parameters are all plain ones, else None."""
    try:
        signature = inspect.signature(bound)
    except (TypeError, ValueError):  # some C callables have none
        return None
    params, args = [], []
    for i, p in enumerate(signature.parameters.values()):
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or p.name.startswith("_sage_") \
                or p.name in ("self", "exc", "Exception"):
            return None
        if p.default is inspect.Parameter.empty:
            params.append(p.name)
        else:
            namespace[f"_sage_d{i}"] = p.default
            params.append(f"{p.name}=_sage_d{i}")
        args.append(p.name)
    return ", ".join(params), ", ".join(args)
