"""Output of user code inside actors: captured in the actor process, shipped back with
answers, and delivered to the job's output on the driver."""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable, Iterable

OUTPUT_LIMIT = 1 << 20  # characters of captured output kept per actor between drains
_lock = threading.Lock()


class OutputCapture:
    """Collects what an actor process writes to stdout/stderr, to ship it to the driver.

    Installed once per actor process; `drain()` hands over what was written since the last
    drain as (stream, text) chunks, consecutive writes to one stream merged.
    """

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._chunks: list[list[str]] = []
        self._size = 0
        self._limit = limit
        self._dropped = 0
        self.ready = threading.Event()

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._size + len(text) > self._limit:
                self._dropped += len(text)
            else:
                self._size += len(text)
                if self._chunks and self._chunks[-1][0] == stream:
                    self._chunks[-1][1] += text
                else:
                    self._chunks.append([stream, text])
        self.ready.set()

    def drain(self) -> list[tuple[str, str]]:
        with self._lock:
            chunks, self._chunks, self._size = self._chunks, [], 0
            dropped, self._dropped = self._dropped, 0
            self.ready.clear()
        out = [(s, t) for s, t in chunks]
        if dropped:
            out.append(("stderr", f"[sage_jupyter: {dropped} characters of output dropped]\n"))
        return out

    def install(self) -> OutputCapture:
        sys.stdout = _CapturedStream(self, "stdout")
        sys.stderr = _CapturedStream(self, "stderr")
        return self


class _CapturedStream(io.TextIOBase):
    def __init__(self, capture: OutputCapture, name: str) -> None:
        self._capture = capture
        self._name = name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._capture.write(self._name, str(text))
        return len(text)

    def flush(self) -> None:
        """Nothing buffered here: text is kept until the driver drains it."""


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
