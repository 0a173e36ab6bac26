"""Captured output of the daemon's jobs: a bounded per-job buffer, and a thread-aware
stdout/stderr proxy that sends what a job's threads print to that job's buffer."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any, Callable, TextIO

from ..runtime.threads import current_output

MAX_BUFFER_CHARS = 1_000_000  # per job; older text is dropped first and counted


class OutputBuffer:
    """Sequenced chunks `(seq, stream, text)`; readers ask for everything after a seq."""

    def __init__(self, on_write: Callable[[], None] | None = None, limit: int = MAX_BUFFER_CHARS) -> None:
        self._chunks: list[tuple[int, str, str]] = []
        self._next = 0
        self._size = 0
        self._limit = limit
        self.dropped_chars = 0
        self._lock = threading.Lock()
        self.on_write = on_write  # wakes readers; set by the daemon's job record

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            self._chunks.append((self._next, stream, text))
            self._next += 1
            self._size += len(text)
            while self._size > self._limit and len(self._chunks) > 1:
                _, _, old = self._chunks.pop(0)
                self._size -= len(old)
                self.dropped_chars += len(old)
        if self.on_write is not None:
            self.on_write()

    @property
    def next_seq(self) -> int:
        return self._next

    def since(self, seq: int) -> tuple[list[tuple[int, str, str]], int]:
        """The chunks numbered `seq` and later that are still kept, and the number to ask
        for next time (read together, so no chunk can slip between them)."""
        with self._lock:
            if not self._chunks or seq >= self._next:
                return [], self._next
            start = max(0, seq - self._chunks[0][0])
            return self._chunks[start:], self._next


class ThreadRoutedStream(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: text written by a thread that carries a
    job's output sink (`sage_output`) goes to that job; anything else to the real stream."""

    def __init__(self, name: str, fallback: TextIO) -> None:
        super().__init__()
        self.name = name
        self.fallback = fallback

    def write(self, text: str) -> int:
        sink = current_output()
        if sink is None:
            return self.fallback.write(text)
        sink(self.name, text)
        return len(text)

    def flush(self) -> None:
        self.fallback.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", "utf-8")


class JobLogHandler(logging.Handler):
    """Copies log records emitted on a job's threads (`self.logger` in user code) into
    that job's output, as stream "stderr"."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        sink = current_output()
        if sink is None:
            return
        try:
            sink("stderr", self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise into user code
            self.handleError(record)


class OutputCapture:
    """Install (and later remove) the proxies and the log handler in this process."""

    def __init__(self) -> None:
        self._saved: tuple[Any, Any] | None = None
        self._handler = JobLogHandler()
        self._logger = logging.getLogger("sage_jupyter.job")
        self._saved_level = self._logger.level

    def install(self) -> None:
        if self._saved is not None:
            return
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = ThreadRoutedStream("stdout", sys.stdout)
        sys.stderr = ThreadRoutedStream("stderr", sys.stderr)
        self._logger.addHandler(self._handler)
        if self._logger.level == logging.NOTSET or self._logger.level > logging.INFO:
            self._logger.setLevel(logging.INFO)

    def uninstall(self) -> None:
        if self._saved is None:
            return
        sys.stdout, sys.stderr = self._saved
        self._saved = None
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._saved_level)
