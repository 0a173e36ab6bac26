"""Captured output of the daemon's jobs: a bounded per-job buffer, and a thread-aware
stdout/stderr proxy that sends what a job's threads print to that job's buffer."""

from __future__ import annotations

import collections
import io
import itertools
import logging
import sys
import threading
from typing import Any, Callable, TextIO

from ..runtime.threads import current_output

MAX_BUFFER_CHARS = 1_000_000  # per job; older text is dropped first and counted
MAX_CHUNK_CHARS = 64 * 1024  # a long write is stored as several chunks, so a page can stop between them
CHUNK_OVERHEAD_CHARS = 100  # what one chunk costs beyond its text (tuple, ints): a million 1-char writes count
PAGE_CHARS = 256 * 1024  # the most text one output reply carries

Chunk = tuple[int, str, str]  # (seq, stream, text)


class OutputBuffer:
    """A ring of sequenced chunks `(seq, stream, text)` bounded in characters: O(1) per
    write, the oldest chunks go first (counted in `dropped_chars`); a single write larger
    than the whole bound keeps its end, after a line that says how much was cut."""

    def __init__(self, on_write: Callable[[], None] | None = None, limit: int = MAX_BUFFER_CHARS) -> None:
        if limit < MAX_CHUNK_CHARS:
            raise ValueError(f"an output buffer holds at least {MAX_CHUNK_CHARS} characters, got limit={limit}")
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._next = 0
        self._size = 0
        self.limit = limit
        self.dropped_chars = 0
        self._lock = threading.Lock()
        self.on_write = on_write  # wakes readers; set by the daemon's job record

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        if len(text) > self.limit // 2:
            keep = self.limit // 2
            cut = len(text) - keep
            text = (f"[sage_jupyter: {cut:,} characters of one write were cut here; a job's output keeps at most "
                    f"{self.limit:,}]\n") + text[-keep:]
            with self._lock:
                self.dropped_chars += cut
        with self._lock:
            for start in range(0, len(text), MAX_CHUNK_CHARS):
                piece = text[start:start + MAX_CHUNK_CHARS]
                self._chunks.append((self._next, stream, piece))
                self._next += 1
                self._size += len(piece) + CHUNK_OVERHEAD_CHARS
            while self._size > self.limit and len(self._chunks) > 1:
                _, _, old = self._chunks.popleft()
                self._size -= len(old) + CHUNK_OVERHEAD_CHARS
                self.dropped_chars += len(old)
        if self.on_write is not None:
            self.on_write()

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def size(self) -> int:
        """What the kept chunks count against the bound (text plus per-chunk overhead)."""
        return self._size

    def clear(self, why: str) -> None:
        """Drop every kept chunk (the daemon's bound over ended jobs), leaving one line saying why."""
        with self._lock:
            self.dropped_chars += sum(len(text) for _, _, text in self._chunks)
            self._chunks.clear()
            notice = f"[sage_jupyter: this job's output was dropped: {why}]\n"
            self._chunks.append((self._next, "stderr", notice))
            self._next += 1
            self._size = len(notice) + CHUNK_OVERHEAD_CHARS

    def since(self, seq: int, max_chars: int = PAGE_CHARS) -> tuple[list[Chunk], int, int]:
        """A page of the chunks numbered `seq` and later that are still kept (at least one,
        then up to `max_chars` of text), the seq to ask for next, and how many chunks
        before the page were dropped unread. Read together, so nothing slips between."""
        with self._lock:
            if not self._chunks or seq >= self._next:
                return [], self._next, 0
            first = self._chunks[0][0]
            start = max(0, seq - first)
            missed = max(0, first - seq)
            page: list[Chunk] = []
            chars = 0
            # At most limit / CHUNK_OVERHEAD_CHARS chunks are kept, so skipping to `start` stays cheap.
            for chunk in itertools.islice(self._chunks, start, None):
                if page and chars + len(chunk[2]) > max_chars:
                    break
                page.append(chunk)
                chars += len(chunk[2])
            return page, page[-1][0] + 1, missed


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
