"""A job's output sink: text from its threads, shown in an ipywidgets `Output` area.

Writes are buffered and flushed by the widget's timer (about 10 times a second), each
flush one comm message (`hold_sync`), so a stage printing per record sends a few
messages a second, not one per line. Flushes use
`Output.append_stdout`/`append_stderr` (comm messages routed by widget, safe from any
thread), never `with out:`. Only the tail is kept, because every update of an `Output`
carries its whole content.
"""

from __future__ import annotations

import threading

import ipywidgets as widgets

MAX_CHARS = 20_000


class JobOutput:
    """Callable `(stream, text)` sink for `env.route_output`; owns the job's `Output` widget."""

    def __init__(self, output: widgets.Output | None = None, max_chars: int = MAX_CHARS) -> None:
        self.widget = output if output is not None else widgets.Output(
            layout=widgets.Layout(max_height="18em", overflow="auto"))
        self.max_chars = max_chars
        self.direct = True  # no timer flushes for us: flush on every write
        self.trimmed_chars = 0
        self._pending: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._shown_chars = 0
        self._noted = False

    def __call__(self, stream: str, text: str) -> None:
        with self._lock:
            self._pending.append(("stderr" if stream == "stderr" else "stdout", text))
        if self.direct:
            self.flush()

    def write(self, text: str, stream: str = "stdout") -> None:
        self(stream, text)

    def flush(self) -> None:
        """Move buffered text into the Output widget, one append per run of one stream."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            runs: list[list[str]] = []
            for stream, text in pending:
                if runs and runs[-1][0] == stream:
                    runs[-1][1] += text
                else:
                    runs.append([stream, text])
            with self.widget.hold_sync():  # one comm message per flush, however many runs
                for stream, text in runs:
                    if len(text) > self.max_chars:  # only the tail can be kept anyway
                        self.trimmed_chars += len(text) - self.max_chars
                        text = text[-self.max_chars:]
                    if stream == "stderr":
                        self.widget.append_stderr(text)
                    else:
                        self.widget.append_stdout(text)
                    self._shown_chars += len(text)
                if self._shown_chars > self.max_chars:
                    self._trim()

    def _trim(self) -> None:
        """Keep the last `max_chars` characters, merged by stream, behind a short note."""
        streams = [e for e in self.widget.outputs if e.get("output_type") == "stream" and e.get("text")]
        if self._noted and streams:
            streams = streams[1:]  # our previous note
        before = sum(len(e["text"]) for e in streams)
        kept: list[dict] = []
        budget = self.max_chars
        for entry in reversed(streams):
            take = entry["text"][-budget:]
            if kept and kept[0]["name"] == entry["name"]:
                kept[0] = {**kept[0], "text": take + kept[0]["text"]}
            else:
                kept.insert(0, {"output_type": "stream", "name": entry["name"], "text": take})
            budget -= len(take)
            if budget <= 0:
                break
        self._shown_chars = sum(len(e["text"]) for e in kept)
        self.trimmed_chars += before - self._shown_chars
        note = {"output_type": "stream", "name": "stdout",
                "text": f"[... {self.trimmed_chars:,} earlier characters not shown]\n"}
        self.widget.outputs = (note, *kept)
        self._noted = True

    def text(self, stream: str | None = None) -> str:
        """Everything currently shown (after a flush), for tests and notebooks."""
        self.flush()
        return "".join(e.get("text", "") for e in self.widget.outputs
                       if e.get("output_type") == "stream" and (stream is None or e.get("name") == stream))
