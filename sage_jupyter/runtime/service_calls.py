"""How a local service's methods are called: the locked path every caller can take, and the
bias that lets a service's only caller skip the lock.

A call refuses once the service stopped taking calls, counts itself, runs under the
service's lock (one call at a time, as on an actor) unless the service takes concurrent
calls, and tags an error with the service's name. `call_function` makes that path for one
method; `proxies.py` builds the lock-free path of a service's only caller on top of it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Protocol

# Biasing relies on the GIL ordering plain attribute reads and writes between threads.
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


class Claimant(Protocol):
    """A caller the bias can be granted to (a task's proxy): it calls lock-free while
    `_sage_fast` is true."""

    _sage_fast: bool

    def _sage_calls(self) -> int: ...


class CountedHost(Protocol):
    accepting: bool
    calls: int


class Bias:
    """Serialises a service's calls, with no lock at all while one task is its only caller
    (a single task calling a service, the common case).

    The first eligible caller to call becomes the owner: its proxy calls without the lock
    from then on. When any other caller calls, the bias is revoked for good: the owner's
    proxy loses its lock-free path, and every call takes the (reentrant) lock once the
    owner's lock-free calls in progress ended. Those are found on the threads' stacks (a
    frame of a lock-free method not on its line that falls back to the locked path), so the
    owner's path pays for no bookkeeping of its own. Without a GIL there is no bias.

    A service taking concurrent calls (`serialised=False`) grants the lock-free path to
    every eligible caller. `close()` takes it from all of them when the service stops.
    """

    def __init__(self, lock: threading.RLock, serialised: bool = True) -> None:
        self.lock = lock
        self.serialised = serialised
        self.owner: Claimant | None = None
        self.revoked = serialised and not GIL
        self.settled = self.revoked  # revoked, and no lock-free call of the owner runs any more
        self.decide = threading.Lock()  # orders grants, revocations and the end of accepting
        self.fast_codes: dict[CodeType, int] = {}  # a lock-free method's code -> its fallback line
        self._granted: list[Claimant] = []

    def claim(self, proxy: Claimant, host: CountedHost) -> bool:
        """On an eligible proxy's locked path: may it call lock-free from now on? If so its
        `_sage_fast` is set."""
        with self.decide:
            if not host.accepting:
                return False
            if not self.serialised or (self.owner is None and not self.revoked):
                self.owner = proxy if self.serialised else None
                proxy._sage_fast = True
                self._granted.append(proxy)
                return True
            if self.owner is not proxy and not self.revoked:
                self._revoke()
            return False

    def lock_free_calls(self) -> int:
        """Calls made on the lock-free paths granted so far (counted by the proxies)."""
        return sum(proxy._sage_calls() for proxy in list(self._granted))

    def close(self) -> None:
        """The service stopped taking calls (`accepting` is false): no lock-free path any more."""
        with self.decide:
            for proxy in self._granted:
                proxy._sage_fast = False

    def enter(self) -> None:
        """The locked path: revoke the bias if still on, wait out the owner's lock-free
        calls on other threads, take the lock."""
        if not self.revoked:
            with self.decide:
                if not self.revoked:
                    self._revoke()
        while not self.settled:
            others, mine = self._lock_free_calls()
            if not others:
                # this thread's own lock-free call (a service calling itself) ends later, after it
                self.settled = not mine
                break
            time.sleep(0.0005)
        self.lock.acquire()

    def _revoke(self) -> None:
        self.revoked = True
        if self.owner is not None:
            self.owner._sage_fast = False  # its next call takes the locked path

    def _lock_free_calls(self) -> tuple[bool, bool]:
        """(on another thread, on this one): is a lock-free call of the owner running?"""
        me = threading.get_ident()
        others = mine = False
        for ident, frame in sys._current_frames().items():
            f: FrameType | None = frame
            while f is not None:
                fallback = self.fast_codes.get(f.f_code)
                if fallback is not None and f.f_lineno != fallback:
                    if ident == me:
                        mine = True
                    else:
                        others = True
                    break
                f = f.f_back
        return others, mine


def call_function(bound: Callable[..., Any], host: CountedHost, bias: Bias | None,
                  refuse: Callable[[], None], tag: Callable[[BaseException], None], label: str) -> Callable[..., Any]:
    """The locked path of one method, serialised by the service's `bias` (None: the
    service takes concurrent calls). Ray service actors, calls with a timeout, async calls
    and services calling services use it directly."""
    # without a bias (concurrent calls) there is no lock: entering and leaving do nothing
    enter, release = (bias.enter, bias.lock.release) if bias is not None else (_nothing, _nothing)

    def call(*args: Any, **kwargs: Any) -> Any:
        if not host.accepting:
            refuse()
        enter()
        try:
            host.calls += 1  # without the lock a count under concurrent calls may miss a few
            return bound(*args, **kwargs)
        except Exception as exc:
            tag(exc)
            raise
        finally:
            release()

    call.__name__ = call.__qualname__ = getattr(bound, "__name__", "call")
    call.__doc__ = getattr(bound, "__doc__", None)
    call.label = label  # type: ignore[attr-defined]  # named in cleanup reports while it runs
    return call


def _nothing() -> None:
    return None
