"""What a job's code prints, routed to that job wherever it runs: a kernel, the JobManager
daemon or a Ray actor process. Written once and used by all three.

- `RoutedStream` stands in for sys.stdout or sys.stderr. Text written on a thread that
  carries a job's output sink (`sage_output`, see threads.py) goes to that sink; other
  text goes to the process's default sink if it has one (an actor, where every print
  belongs to the job), else to the original stream, exactly as before.
- `install()` / `uninstall()` put it in front of both streams and take it away again
  without breaking a wrapper someone put in front of it since.
- `OutputBuffer` is a ring of sequenced chunks bounded in characters: the daemon keeps
  one per job, an actor keeps one between drains.
- `JobLogHandler` copies log records emitted on a job's threads into the job's output.
"""

from __future__ import annotations

import collections
import itertools
import logging
import sys
import threading
from typing import Any, Callable, TextIO

from .threads import OutputSink, current_output

MAX_BUFFER_CHARS = 1_000_000  # per job; older text is dropped first and counted
MAX_CHUNK_CHARS = 64 * 1024  # a long write is stored as several chunks, so a page can stop between them
CHUNK_OVERHEAD_CHARS = 100  # what one chunk costs beyond its text (tuple, ints): a million 1-char writes count
PAGE_CHARS = 256 * 1024  # the most text one page of output carries

Chunk = tuple[int, str, str]  # (seq, stream, text)


class RoutedStream:
    """Wraps `sys.stdout` or `sys.stderr`; everything but writing is the original's."""

    def __init__(self, original: TextIO, stream_name: str, default: OutputSink | None = None) -> None:
        self._original = original
        self._stream_name = stream_name
        self._active = True
        self.default = default  # where text of threads without a job's sink goes (None: the original)

    @property
    def original(self) -> TextIO:
        return self._original

    def write(self, text: str) -> int:
        sink = (current_output() or self.default) if self._active else None
        if sink is None:
            return self._original.write(text)
        if text:
            try:
                sink(self._stream_name, str(text))
            except Exception:  # noqa: BLE001 - a closed view must not break the user's print
                return self._original.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._active or (current_output() or self.default) is None:
            self._original.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def __repr__(self) -> str:
        return f"<RoutedStream {self._stream_name} over {self._original!r}>"


def install(default: OutputSink | None = None) -> None:
    """Put the proxy in front of sys.stdout and sys.stderr (idempotent). `default` takes
    the text of threads that carry no job's sink (None: the original streams)."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if isinstance(current, RoutedStream):
            current._active = True
            current.default = default
        elif current is not None:
            setattr(sys, name, RoutedStream(current, name, default))


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


class OutputBuffer:
    """A ring of sequenced chunks `(seq, stream, text)` bounded in characters: O(1) per
    write, the oldest chunks go first (counted in `dropped_chars`); a single write larger
    than half the bound keeps its end, after a line that says how much was cut."""

    def __init__(self, on_write: Callable[[], None] | None = None, limit: int = MAX_BUFFER_CHARS) -> None:
        if limit < MAX_CHUNK_CHARS:
            raise ValueError(f"an output buffer holds at least {MAX_CHUNK_CHARS} characters, got limit={limit}")
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._next = 0
        self._size = 0
        self.limit = limit
        self.dropped_chars = 0
        self._evicted = 0  # chars the ring dropped since the last drain (cut writes say so inline)
        self._lock = threading.Lock()
        self.on_write = on_write  # wakes readers

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
                self._evicted += len(old)
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
        """Drop every kept chunk, leaving one line saying why."""
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

    def drain(self) -> list[tuple[str, str]]:
        """Take everything kept as (stream, text), consecutive writes to one stream merged,
        after a line saying how much was dropped since the last drain."""
        with self._lock:
            chunks = list(self._chunks)
            self._chunks.clear()
            self._size = 0
            dropped, self._evicted = self._evicted, 0
        out: list[tuple[str, str]] = []
        if dropped:
            out.append(("stderr", f"[sage_jupyter: {dropped:,} characters of output dropped]\n"))
        for _, stream, text in chunks:
            if out and out[-1][0] == stream:
                out[-1] = (stream, out[-1][1] + text)
            else:
                out.append((stream, text))
        return out


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
