"""Base class for services: long-lived objects that pipeline functions call by name."""

from __future__ import annotations

from typing import Any

from .functions import _Servicing


class BaseService(_Servicing):
    """Hooks, in order: `setup()` then `start()` before the first task runs; then method
    calls; at cleanup `stop()` then `cleanup()`. A service method is an ordinary method.

    `__init__` takes no required arguments; the runtime attaches `self.ctx` afterwards.
    Calls run one at a time, as on a Ray actor; a service whose methods are thread-safe
    can set `concurrent_calls = True` to let parallel tasks call it at once.
    """

    concurrent_calls: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def setup(self) -> None:
        """Acquire resources (open files, load models, connect)."""

    def start(self) -> None:
        """Called after `setup()` (upstream SAGE hook)."""

    def stop(self) -> None:
        """Stop taking work (called first at cleanup)."""

    def cleanup(self) -> None:
        """Release resources (called after `stop()`)."""
