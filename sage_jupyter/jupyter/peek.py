"""The widget's "peek" row: a toggle per stage and the newest records of the toggled ones.

The records come from `handle.peek()`; the job widget's updater asks for them on its own
throttled updates (at most about 10 a second), so a fast pipeline never floods the comm.
Toggles can be clicked while a cell runs (their comm messages are then handled on another
thread): the click only marks what to show and wakes the updater, under a lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import ipywidgets as widgets

from ..runtime.handle import JobHandleLike
from . import templates

log = logging.getLogger("sage_jupyter.jupyter")
PEEK_RECORDS = 5


class PeekPanel:
    """Toggles and the peeked records of one job."""

    def __init__(self, stages: list[str], on_toggle: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._on_toggle = on_toggle
        self.toggles: dict[str, widgets.ToggleButton] = {}
        for stage in stages:
            toggle = widgets.ToggleButton(value=False, description=stage, icon="eye",
                                          tooltip=f"show the newest records {stage} emitted, live",
                                          layout=widgets.Layout(width="auto"), _dom_classes=("sage-peek-toggle",))
            toggle.observe(self._toggled, names="value")
            self.toggles[stage] = toggle
        self.updates = 0  # peek views sent, for tests
        self.html = widgets.HTML(value="", _dom_classes=("sage-peek-records",))  # classes set at creation:
        # they travel in the model's first message, so a frontend (or a test) can tell the models apart
        label = widgets.Label(value="peek:")
        self.view = widgets.VBox([widgets.HBox([label, *self.toggles.values()]), self.html])
        if not stages:
            self.view.layout.display = "none"

    @property
    def peeked(self) -> list[str]:
        """The stages whose toggle is on, in pipeline order."""
        with self._lock:
            return [stage for stage, toggle in self.toggles.items() if toggle.value]

    def _toggled(self, _change: Any) -> None:
        if not self.peeked:
            with self._lock:
                self.html.value = ""
        self._on_toggle()

    def refresh(self, handle: JobHandleLike) -> bool:
        """Show the newest records of the peeked stages; True if the view changed."""
        stages = self.peeked
        if not stages:
            return False
        try:
            samples = handle.peek(None, PEEK_RECORDS)
            body = templates.peek_html({stage: list(samples.get(stage, [])) for stage in stages})
        except Exception as exc:  # e.g. a remote job out of reach: say so in the view
            log.debug("peek failed", exc_info=True)
            body = f"<div>peek unavailable: {templates.esc(type(exc).__name__)}: {templates.esc(exc)}</div>"
        with self._lock:
            if body == self.html.value:
                return False
            with self.html.hold_sync():
                self.html.value = body
            self.updates += 1
        return True
