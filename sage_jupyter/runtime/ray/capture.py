"""Output of user code inside actors: captured in the actor process, shipped back with
answers, and delivered to the job's output on the driver.

The actor process routes its streams with runtime/output.py, every thread's text going to
one `OutputBuffer` (a thread that carries a job's sink still writes to that sink)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable

from .. import output
from ..output import OutputBuffer

OUTPUT_LIMIT = 1 << 20  # characters of captured output kept per actor between drains (the oldest go first)
_lock = threading.Lock()


class OutputCapture:
    """What an actor process wrote to stdout/stderr since the last drain, to ship it to
    the driver; `ready` is set by every write."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.ready = threading.Event()
        self._buffer = OutputBuffer(on_write=self.ready.set, limit=limit)

    def write(self, stream: str, text: str) -> None:
        self._buffer.write(stream, text)

    def drain(self) -> list[tuple[str, str]]:
        self.ready.clear()  # before taking: a write racing the drain sets it again
        return self._buffer.drain()

    def install(self) -> OutputCapture:
        output.install(default=self.write)
        return self


_capture: OutputCapture | None = None


def capture_output() -> OutputCapture:
    """Install (once per process) and return the actor's output capture."""
    global _capture
    with _lock:
        if _capture is None:
            _capture = OutputCapture().install()
    return _capture


def deliver_output(chunks: Iterable[tuple[str, str]], sink: Callable[[str, str], None] | None) -> None:
    """Hand captured actor output to the job's output callable, else to this process's
    stdout/stderr (so plain scripts still see their prints)."""
    for stream, text in chunks:
        if sink is not None:
            try:
                sink(stream, text)
                continue
            except Exception:  # noqa: BLE001 - a broken view must not lose the text
                pass
        target = sys.stderr if stream == "stderr" else sys.stdout
        target.write(text)
