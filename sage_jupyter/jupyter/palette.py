"""The one palette of state colours, shared by the widget, `%sage_status` and the sidebar.

Each state is a badge: a background and a text colour taken from JupyterLab's theme
variables, so a badge follows the light and dark themes, with the light theme's values as
fallbacks where no Lab variables exist (static HTML, other frontends). Every pair keeps a
text contrast of at least 4.5:1 in both of Lab's themes; the pairs were picked for that
(e.g. white on `--jp-success-color1` is only 4.1:1 in the light theme, so success uses
colour 0, which Lab makes darker in light and lighter in dark).
"""

from __future__ import annotations

from typing import Any

# (background, text) as CSS values.
_INVERSE_TEXT = "var(--jp-ui-inverse-font-color0,#fff)"  # white in light, black in dark
_SUCCESS = ("var(--jp-success-color0,#1b5e20)", _INVERSE_TEXT)
_ERROR = ("var(--jp-error-color1,#d32f2f)", _INVERSE_TEXT)
_ACTIVE = ("var(--jp-brand-color1,#1976d2)", _INVERSE_TEXT)
_WARN = ("var(--jp-warn-color1,#f57c00)", "#000")  # orange is light in both themes
_IDLE = ("var(--jp-layout-color3,#bdbdbd)", "var(--jp-ui-font-color0,#000)")
_ENDED = ("var(--jp-inverse-layout-color3,#616161)", _INVERSE_TEXT)

PALETTE: dict[str, tuple[str, str]] = {
    # jobs and tasks
    "CREATED": _IDLE, "RUNNING": _ACTIVE, "STOPPING": _WARN, "FINISHED": _SUCCESS,
    "STOPPED": _ENDED, "FAILED": _ERROR,
    # services
    "created": _IDLE, "starting": _ACTIVE, "running": _ACTIVE, "stopping": _WARN,
    "cleaned": _SUCCESS, "failed": _ERROR,
    # outcomes (cleanup report)
    "ok": _SUCCESS, "error": _ERROR, "incomplete": _ERROR,
    # marks
    "full": _WARN,  # a stage's input channel is full
}


def colours(state: Any) -> tuple[str, str]:
    """(background, text) of a state; unknown states look like CREATED."""
    return PALETTE.get(str(state), _IDLE)


def background(state: Any) -> str:
    """The state's colour alone, for markers that carry no text (graph borders, dots)."""
    return colours(state)[0]


def badge_style(state: Any) -> str:
    bg, fg = colours(state)
    return f"background:{bg};color:{fg}"


def palette_css() -> dict[str, str]:
    """Every state's badge style, for frontends that draw badges themselves (the sidebar)."""
    return {state: badge_style(state) for state in PALETTE}
