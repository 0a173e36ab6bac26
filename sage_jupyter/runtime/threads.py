"""Daemon threads that carry their job's output sink.

Every thread the runtime starts for a job inherits the job's `output` callable (stream,
text), so a thread-aware stdout proxy (installed by the Jupyter layer) can route `print`
from stages and services to the job's own output area instead of the current cell.
"""

from __future__ import annotations

import threading
from typing import Callable

OutputSink = Callable[[str, str], None]


def current_output() -> OutputSink | None:
    return getattr(threading.current_thread(), "sage_output", None)


def spawn(target: Callable[[], None], name: str, output: OutputSink | None = None,
          start: bool = True) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    # The sink rides on the Thread object itself (read back by current_output); Thread declares no such attribute.
    thread.sage_output = output if output is not None else current_output()  # type: ignore[attr-defined]
    if start:
        thread.start()
    return thread
