"""The live job widget: state, tasks, services, Stop button, cleanup report, job output.

It reads only `JobStatus` snapshots from a `JobHandleLike` (local or remote) and renders
them with `templates`. Updates are throttled: a daemon timer thread renders the snapshot
`subscribe` pushed (state changes; a remote handle's poller) and, between pushes, asks
`status()` at most about 10 times a second while the job runs (2 Hz for handles whose
status travels over the wire), so each update renders exactly one snapshot, in one
batched (`hold_sync`) state message.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

import ipywidgets as widgets

from ..runtime.handle import JobHandleLike
from ..runtime.job import JobStatus
from . import busy_stop, templates
from .output import JobOutput
from .peek import PeekPanel
from .progress import ProgressTracker

log = logging.getLogger("sage_jupyter.jupyter")

LOCAL_INTERVAL = 0.1  # s between updates while tasks run (local snapshots are cheap)
POLLED_INTERVAL = 0.5  # s between polls of a handle whose status travels over the wire
IDLE_INTERVAL = 1.0  # s between updates once every task ended but the job has not
MAX_POLL_FAILURES = 60


class JobWidget:
    """Shows one job. `display(widget)` renders it; the display data also carries a
    text/html and text/plain rendering of the current state for static viewers."""

    def __init__(self, handle: JobHandleLike, output: JobOutput | None = None,
                 interval: float | None = None) -> None:
        self.handle = handle
        self.output = output if output is not None else JobOutput()
        snapshot = handle.status()
        # A job elsewhere (a JobManager), or a handle that cannot push, is followed gently.
        polled = snapshot.location != "local" or not callable(getattr(handle, "subscribe", None))
        self.interval = interval if interval is not None else (POLLED_INTERVAL if polled else LOCAL_INTERVAL)
        self._rates = _Rates()
        self._progress = ProgressTracker()
        self._note = ""
        self._lock = threading.Lock()
        self._wake = threading.Event()  # something changed
        self._urgent = threading.Event()  # the job ended, or someone waits: skip the throttle
        self._closed = threading.Event()
        self._finished = threading.Event()
        self._updater: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._display: Any = None
        self._final_published = False
        self.updates = 0  # rendered state messages, for tests and benchmarks
        self.listeners: list[Callable[[JobStatus], None]] = []  # told of every shown snapshot
        self.snapshot: JobStatus = snapshot
        self._pushed: JobStatus | None = None  # the newest snapshot `subscribe` delivered, not yet shown
        self._pushed_lock = threading.Lock()  # apart from `_lock`: a runtime thread never waits on a render

        self.html = widgets.HTML(value=self._render(snapshot))
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                          tooltip="stop the job and clean its services",
                                          disabled=snapshot.state.terminal,
                                          layout=widgets.Layout(width="90px"))
        self.stop_button.on_click(self.request_stop)
        # The labextension sends clicks on these over its own comm (busy_stop.py).
        self.stop_button.add_class(busy_stop.STOP_CLASS)
        self.stop_button.add_class(busy_stop.job_class(snapshot.job_id))
        self.stop_hint = widgets.Label(value=self._hint(snapshot), style={"font_size": "11px"})
        self.stop_hint.add_class("sage-stop-hint")  # says when Stop waits for a running cell
        self.peek = PeekPanel([stage.name for stage in snapshot.stages], self._peek_toggled)
        self.view = widgets.VBox([self.html, self.peek.view, widgets.HBox([self.stop_button, self.stop_hint]),
                                  self.output.widget])

    # ---- life cycle -----------------------------------------------------------------

    def start(self) -> "JobWidget":
        """Follow the job until it ends: subscribe to state changes, start the timer."""
        if self._updater is not None:
            return self
        subscribe = getattr(self.handle, "subscribe", None)
        if callable(subscribe):
            self._unsubscribe = subscribe(self._on_change)
        self.output.direct = False
        self._updater = threading.Thread(target=self._run, name=f"sage-widget:{self.snapshot.name}", daemon=True)
        self._updater.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        """Stop following the job (the job itself keeps running); the view stays."""
        self._closed.set()
        self._urgent.set()
        self._wake.set()
        if self._updater is not None and self._updater is not threading.current_thread():
            self._updater.join(timeout)
        self._drop_subscription()
        self.output.direct = True
        self.output.flush()

    def wait_final(self, timeout: float | None = 2.0) -> bool:
        """Block until the widget has shown the job's final state (or `timeout` passed)."""
        if self._updater is None:
            return self.snapshot.state.terminal
        self._urgent.set()
        self._wake.set()
        return self._finished.wait(timeout)

    @property
    def following(self) -> bool:
        return self._updater is not None and self._updater.is_alive()

    # ---- updates --------------------------------------------------------------------

    def _on_change(self, snapshot: JobStatus) -> None:
        # Runs on a runtime thread: keep the snapshot and wake the timer, which coalesces changes.
        with self._pushed_lock:
            if self._pushed is None or snapshot.taken_at >= self._pushed.taken_at:
                self._pushed = snapshot
        if snapshot.state.terminal:
            self._urgent.set()
        self._wake.set()

    def _next_snapshot(self) -> JobStatus:
        """The pushed snapshot if one came since the last update, else a fresh `status()`."""
        with self._pushed_lock:
            pushed, self._pushed = self._pushed, None
        if pushed is not None and pushed.taken_at >= self.snapshot.taken_at:
            return pushed
        return self.handle.status()

    def _run(self) -> None:
        last = 0.0
        failures = 0
        try:
            while not self._closed.is_set():
                running = any(t.state.value == "RUNNING" for t in self.snapshot.tasks) or not self.snapshot.tasks
                self._wake.wait(self.interval if running else max(self.interval, IDLE_INTERVAL))
                self._wake.clear()
                delay = last + self.interval - time.monotonic()
                if delay > 0 and not self._urgent.is_set():
                    self._urgent.wait(delay)
                if self._closed.is_set():
                    break
                try:
                    snapshot = self._next_snapshot()
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - a lost connection must not kill the view
                    failures += 1
                    self._note = f"status unavailable: {type(exc).__name__}: {exc}"
                    self.show(self.snapshot)
                    if failures >= MAX_POLL_FAILURES:
                        break
                    self._closed.wait(min(5.0, self.interval * 2 ** min(failures, 4)))
                    continue
                last = time.monotonic()
                self._note = ""
                self.show(snapshot)
                self.peek.refresh(self.handle)  # on the same throttled beat as the job view
                if snapshot.state.terminal:
                    break
        except Exception:  # e.g. the comm went away at kernel shutdown
            log.exception("job widget updater stopped")
        finally:
            self._drop_subscription()
            self.output.direct = True
            try:
                self.output.flush()
                if self.snapshot.state.terminal:
                    self.peek.refresh(self.handle)  # the records the job ended with
                    self.publish_final()
            except Exception:
                log.exception("job widget final update failed")
            self._finished.set()

    def show(self, snapshot: JobStatus) -> None:
        """Render one snapshot (from the timer thread, or once from the caller)."""
        with self._lock:
            self.snapshot = snapshot
            body = self._render(snapshot)
            ended = snapshot.state.terminal
            self.output.flush()
            if body != self.html.value:
                with self.html.hold_sync():
                    self.html.value = body
                self.updates += 1
            button = self.stop_button
            if ended and (not button.disabled or button.description != "Stop"):  # also after "Stopping"
                with self.stop_button.hold_sync():
                    self.stop_button.disabled = True
                    self.stop_button.description = "Stop"
            hint = self._hint(snapshot)
            if hint != self.stop_hint.value:
                self.stop_hint.value = hint
        for listener in list(self.listeners):
            try:
                listener(snapshot)
            except Exception:  # another view's bug must not stop this one
                log.exception("widget listener failed")

    @staticmethod
    def _hint(snapshot: JobStatus) -> str:
        return "" if snapshot.state.terminal else busy_stop.hint()

    def _render(self, snapshot: JobStatus) -> str:
        return templates.job_html(snapshot, self._rates.update(snapshot), self._note,
                                  self._progress.update(snapshot))

    def _peek_toggled(self) -> None:
        # May run on a comm's subshell thread while a cell executes: wake the updater, or,
        # once it has ended, show the job's last records from here (a quick local read).
        if self.following:
            self._wake.set()  # (not `_urgent`: that ends the throttle for good)
        else:
            self.peek.refresh(self.handle)

    def _drop_subscription(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            try:
                unsubscribe()
            except Exception:  # remote handles may have lost their connection
                log.debug("unsubscribe failed", exc_info=True)

    # ---- Stop button ----------------------------------------------------------------

    def request_stop(self, _button: Any = None) -> None:
        """What the Stop button does: ask the job to stop, without waiting."""
        if self.snapshot.state.terminal:  # a click that waited behind a busy cell for a job stopped since
            return
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping"
        try:
            self.handle.stop(wait=False)
        except Exception as exc:  # noqa: BLE001 - shown in the view rather than lost in a log
            self._note = f"stop failed: {type(exc).__name__}: {exc}"
            self.stop_button.disabled = False
            self.stop_button.description = "Stop"
        self._wake.set()

    # ---- display --------------------------------------------------------------------

    def display(self) -> "JobWidget":
        """Display the widget in the current cell, keeping a handle to update its
        static fallback with the final state when the job ends."""
        from IPython import get_ipython
        from IPython.display import display

        handle = display(self, display_id=True)
        # Only a kernel's frontends replace a display on update; a terminal would print
        # the whole job again, so there the final state is not re-published.
        if getattr(get_ipython(), "kernel", None) is not None:
            self._display = handle
        return self

    def publish_final(self) -> bool:
        """Refresh the displayed data (its text/html and text/plain) with the job's final
        state, so a saved notebook shows how the job ended. Once per job and caller."""
        if self._display is None or not self.snapshot.state.terminal:
            return False
        self._display.update(self)
        return True

    def publish_final_once(self) -> None:
        """From the kernel's main thread after a cell: publish the final state once, in
        the request of that cell (frontends such as nbclient route updates by it)."""
        if self._final_published:
            return
        snapshot = self.snapshot
        if not snapshot.state.terminal and snapshot.location == "local" and self.handle.done:
            snapshot = self.handle.status()
            self.snapshot = snapshot
        if snapshot.state.terminal and self.publish_final():
            self._final_published = True

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = dict(self.view._repr_mimebundle_() or {})
        snapshot = self.snapshot
        data["text/html"] = self._render_static(snapshot)
        data["text/plain"] = templates.job_text(snapshot, self._progress.rows(snapshot)) + self._output_tail()
        return data

    def _render_static(self, snapshot: JobStatus) -> str:
        body = templates.job_html(snapshot, self._rates.final(snapshot) if snapshot.state.terminal else None,
                                  progress=self._progress.rows(snapshot))
        tail = self._output_tail()
        if tail:
            body += (f'<pre style="font-size:11px;max-height:12em;overflow:auto;margin:4px 0">'
                     f'{templates.esc(tail.strip())}</pre>')
        return body

    def _output_tail(self, chars: int = 2000) -> str:
        text = self.output.text()
        if not text:
            return ""
        return "\n" + (text if len(text) <= chars else "..." + text[-chars:])

    def __repr__(self) -> str:
        return f"<JobWidget {templates.job_text(self.snapshot).splitlines()[0]}>"


class _Rates:
    """Records per second of each task over roughly the last second of snapshots."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.history: collections.deque[tuple[float, dict[str, int]]] = collections.deque()

    @staticmethod
    def counts(snapshot: JobStatus) -> dict[str, int]:
        return {t.name: (t.records_out if t.stage.startswith("source") else t.records_in) for t in snapshot.tasks}

    def update(self, snapshot: JobStatus) -> dict[str, float]:
        if snapshot.state.terminal:
            return self.final(snapshot)
        now, counts = snapshot.taken_at, self.counts(snapshot)
        self.history.append((now, counts))
        while len(self.history) > 2 and now - self.history[1][0] >= self.window:
            self.history.popleft()
        then, old = self.history[0]
        if now - then <= 0:
            return {}
        return {name: max(0, n - old.get(name, 0)) / (now - then) for name, n in counts.items()}

    @staticmethod
    def final(snapshot: JobStatus) -> dict[str, float]:
        elapsed = snapshot.elapsed_s
        if elapsed <= 0:
            return {}
        return {name: n / elapsed for name, n in _Rates.counts(snapshot).items()}
