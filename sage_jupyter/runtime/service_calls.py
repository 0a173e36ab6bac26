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
from types import CodeType, FrameType
from typing import Any, Protocol

_SERIALISED = """
def call({params}):
    if _sage_bias.owner == _sage_ident():  # the one thread calling this service: no lock (see Bias)
        _sage_host.calls += 1
        try:
            return _sage_bound({args})
        except Exception as exc:
            _sage_tag(exc)
            raise
    if not _sage_host.accepting:
        _sage_refuse()
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
# Biasing relies on the GIL ordering plain attribute reads and writes between threads, and
# on seeing other threads' stacks to tell whether the owner is inside a call.
_CAN_BIAS = getattr(sys, "_is_gil_enabled", lambda: True)() and hasattr(sys, "_current_frames")


class Bias:
    """Serialises a service's calls, with no lock at all while one thread is its only
    caller (a single task calling a service, the common case).

    The first caller becomes the owner: its calls compare `owner` with its thread id and
    run without the lock. When another thread calls, it clears `owner` (the owner's next
    call takes the lock), waits until the owner's lock-free call in progress ended (a frame
    of one of the service's call functions on the owner's stack), and from then on every
    call takes the (reentrant) lock. Under the GIL the owner reads `owner` inside its call
    frame, so either it saw the change or the waiter sees its frame. When the service stops
    taking calls, `close()` ends the bias, so refusals are checked again.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self.owner: int | None = None  # thread id of the lock-free caller
        self.codes: set[CodeType] = set()  # code of the service's call functions
        self._state = "open" if _CAN_BIAS else "off"  # open -> owned -> draining -> off
        self._revoked: int | None = None  # the former owner, while its last lock-free call may run
        self._mutex = threading.Lock()

    def enter(self) -> None:
        """The locked path: claim or revoke the bias first, then take the lock."""
        if self._state != "off":
            me = threading.get_ident()
            with self._mutex:
                if self._state == "open":  # the very first call: this thread owns the bias from now
                    self._state, self.owner = "owned", me
                elif self._state == "owned" and self.owner != me:
                    self._state, self._revoked, self.owner = "draining", self.owner, None
            if self._state == "draining" and me != self._revoked:  # (the former owner never waits on itself)
                self._wait_out(self._revoked)
                self._state = "off"
        self.lock.acquire()

    def close(self) -> None:
        """No more lock-free calls (the service stopped taking calls: they are refused)."""
        with self._mutex:
            self.owner = None
            if self._state == "open":
                self._state = "off"

    def _wait_out(self, thread: int | None) -> None:
        while thread is not None and self._in_call(sys._current_frames().get(thread)):
            time.sleep(0.0005)

    def _in_call(self, frame: FrameType | None) -> bool:
        while frame is not None:
            if frame.f_code in self.codes:
                return True
            frame = frame.f_back
        return False


class CountedHost(Protocol):
    accepting: bool
    calls: int


def make_call(bound: Callable[..., Any], host: CountedHost, bias: Bias | None,
              refuse: Callable[[], None], tag: Callable[[BaseException], None], label: str) -> Callable[..., Any]:
    """A call function for `bound`, serialised by the service's `bias` (None: the service
    takes concurrent calls)."""
    namespace: dict[str, Any] = {"_sage_host": host, "_sage_bound": bound, "_sage_refuse": refuse, "_sage_tag": tag}
    if bias is not None:
        namespace.update(_sage_bias=bias, _sage_ident=threading.get_ident, _sage_enter=bias.enter,
                         _sage_release=bias.lock.release)
    params, args = _plain_parameters(bound, namespace) or _ANY
    exec((_SERIALISED if bias is not None else _CONCURRENT).format(params=params, args=args), namespace)
    call: Callable[..., Any] = namespace["call"]
    if bias is not None:
        bias.codes.add(call.__code__)
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
