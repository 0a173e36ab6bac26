"""The function a local service hands out for one of its methods.

It refuses calls once the service stopped taking them, counts the call, runs it under the
service's lock (one call at a time, as on an actor) unless the service takes concurrent
calls, and tags an error with the service's name. It is generated with the method's own
parameters when they are plain ones (as `dataclasses` generates `__init__`), so a call
allocates nothing beyond its arguments: no `*args` tuple, no `**kwargs` dict.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

_SERIALISED = """
def call({params}):
    if not _sage_host.accepting:
        _sage_refuse()
    if _sage_bias.on:
        if _sage_mine.owner:  # the thread the service is biased to: no lock while it is the only caller
            _sage_bias.depth += 1  # announce the call first, then look at the bias (see Bias)
            if _sage_bias.on:
                try:
                    _sage_host.calls += 1
                    return _sage_bound({args})
                except Exception as exc:
                    _sage_tag(exc)
                    raise
                finally:
                    _sage_bias.depth -= 1
            _sage_bias.depth -= 1
        _sage_enter()
    elif _sage_bias.settled:
        _sage_acquire()
    else:
        _sage_enter()
    try:
        _sage_host.calls += 1
        return _sage_bound({args})
    except Exception as exc:
        _sage_tag(exc)
        raise
    finally:
        _sage_release()
"""

_CONCURRENT = """
def call({params}):
    if not _sage_host.accepting:
        _sage_refuse()
    _sage_host.calls += 1  # not under a lock: a count under concurrent calls may miss a few
    try:
        return _sage_bound({args})
    except Exception as exc:
        _sage_tag(exc)
        raise
"""

_ANY = ("*args, **kwargs", "*args, **kwargs")
# Biasing relies on the GIL ordering plain attribute reads and writes between threads.
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


class _Owner(threading.local):
    owner = False  # true only in the thread the service is biased to


class Bias:
    """Serialises a service's calls, with no lock at all while one thread is its only
    caller (a single task calling a service, the common case).

    The first caller becomes the owner and calls without the lock. When another thread
    calls, it turns the bias off and waits until the owner's calls in progress ended
    (`depth` 0); from then on every call takes the (reentrant) lock. The owner raises
    `depth` before it reads `on`, and the other thread clears `on` before it reads `depth`,
    so one of the two always sees the other (under the GIL, plain attribute reads and
    writes are ordered). Without a GIL there is no bias: every call takes the lock.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self.on = _GIL
        self.depth = 0  # the owner's calls in progress; written by the owner only
        self.settled = not _GIL  # the bias is off and the owner's last lock-free call has ended
        self.mine = _Owner()
        self._claimed = False

    def enter(self) -> None:
        """The locked path: take the lock, claiming or revoking the bias first if on."""
        if self.on:
            with self.lock:
                if self.on and not self._claimed:  # the very first call: this thread owns it
                    self._claimed = True
                    self.mine.owner = True
                    self.lock.acquire()
                    return
                self.on = False
        if not self.mine.owner:  # (the owner's own outer call may be in progress: no waiting on it)
            while self.depth:  # a call of the owner in progress ends without the lock
                time.sleep(0.0005)
            self.settled = True  # the owner reads `on` (now false) before any further call
        self.lock.acquire()


class CountedHost(Protocol):
    accepting: bool
    calls: int


def make_call(bound: Callable[..., Any], host: CountedHost, bias: Bias | None,
              refuse: Callable[[], None], tag: Callable[[BaseException], None], label: str) -> Callable[..., Any]:
    """A call function for `bound`, serialised by the service's `bias` (None: the service
    takes concurrent calls)."""
    namespace: dict[str, Any] = {"_sage_host": host, "_sage_bound": bound, "_sage_refuse": refuse, "_sage_tag": tag}
    if bias is not None:
        namespace.update(_sage_bias=bias, _sage_mine=bias.mine, _sage_enter=bias.enter,
                         _sage_acquire=bias.lock.acquire, _sage_release=bias.lock.release)
    params, args = _plain_parameters(bound, namespace) or _ANY
    exec((_SERIALISED if bias is not None else _CONCURRENT).format(params=params, args=args), namespace)
    call: Callable[..., Any] = namespace["call"]
    call.__name__ = call.__qualname__ = getattr(bound, "__name__", "call")
    call.__doc__ = getattr(bound, "__doc__", None)
    call.label = label  # type: ignore[attr-defined]  # named in cleanup reports while it runs
    return call


def _plain_parameters(bound: Callable[..., Any], namespace: dict[str, Any]) -> tuple[str, str] | None:
    """("x, y=_sage_d1", "x, y") for a method whose parameters are all plain ones, else None."""
    try:
        signature = inspect.signature(bound)
    except (TypeError, ValueError):  # some C callables have none
        return None
    params, args = [], []
    for i, p in enumerate(signature.parameters.values()):
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or p.name.startswith("_sage_") \
                or p.name in ("exc", "Exception"):
            return None
        if p.default is inspect.Parameter.empty:
            params.append(p.name)
        else:
            namespace[f"_sage_d{i}"] = p.default
            params.append(f"{p.name}=_sage_d{i}")
        args.append(p.name)
    return ", ".join(params), ", ".join(args)
