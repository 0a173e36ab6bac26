"""One thread-aware stdout/stderr proxy: text written by a job's threads goes to that job.

Every thread the runtime starts for a job carries the job's output sink (`sage_output`,
see runtime/threads.py). `print` on such a thread is handed to the sink (the job's Output
area); any other thread writes to the original stream exactly as before. This does not
depend on ipykernel's parent headers, which changed meaning between 6.29 and 7.1.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..runtime.threads import current_output


class RoutedStream:
    """Wraps `sys.stdout` or `sys.stderr`; everything but writing is the original's."""

    def __init__(self, original: TextIO, stream_name: str) -> None:
        self._original = original
        self._stream_name = stream_name
        self._active = True

    @property
    def original(self) -> TextIO:
        return self._original

    def write(self, text: str) -> int:
        sink = current_output() if self._active else None
        if sink is None:
            return self._original.write(text)
        if text:
            try:
                sink(self._stream_name, text)
            except Exception:  # noqa: BLE001 - a closed view must not break the user's print
                return self._original.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if current_output() is None or not self._active:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def __repr__(self) -> str:
        return f"<RoutedStream {self._stream_name} over {self._original!r}>"


def install() -> None:
    """Put the proxy in front of sys.stdout and sys.stderr (once; idempotent)."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if isinstance(current, RoutedStream):
            current._active = True
        elif current is not None:
            setattr(sys, name, RoutedStream(current, name))


def uninstall() -> None:
    """Remove the proxy. If something else has wrapped it since, turn it into a plain
    pass-through instead of breaking that wrapper's chain."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if isinstance(current, RoutedStream):
            setattr(sys, name, current.original)
        else:
            proxy = _find_in_chain(current)
            if proxy is not None:
                proxy._active = False


def installed() -> bool:
    return isinstance(sys.stdout, RoutedStream) and isinstance(sys.stderr, RoutedStream)


def _find_in_chain(stream: Any) -> RoutedStream | None:
    for _ in range(8):  # wrappers commonly expose what they wrap as one of these
        if isinstance(stream, RoutedStream):
            return stream
        stream = getattr(stream, "original", None) or getattr(stream, "_original", None)
        if stream is None:
            return None
    return None
