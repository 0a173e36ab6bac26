"""The sink behind `DataStream.print()`: one line per record, formatted as upstream SAGE does."""

from __future__ import annotations

from typing import Any

from .functions import SinkFunction

_COLOUR, _RESET = "\x1b[1;36m", "\x1b[0m"  # bold cyan prefix; Jupyter renders ANSI colours
_PREVIEW = 5


def format_record(data: Any) -> str:
    """Readable text for a record: dicts as `k=v`, long lists shortened, objects by their fields."""
    if isinstance(data, str):
        return data
    if data is None or isinstance(data, (int, float, bool)):
        return str(data)
    if isinstance(data, dict):
        return ", ".join(f"{k}={v}" for k, v in data.items())
    if isinstance(data, (list, tuple)):
        if len(data) <= _PREVIEW:
            return str(data)
        preview = ", ".join(str(x) for x in data[:_PREVIEW])
        return f"[{preview}, ... (+{len(data) - _PREVIEW} more)]"
    fields = getattr(data, "__dict__", None)
    if isinstance(fields, dict) and not callable(data):
        shown = ", ".join(f"{k}={v}" for k, v in list(fields.items())[:3])
        return f"{type(data).__name__}({shown})"
    return str(data)


class PrintSink(SinkFunction):
    """Prints each record as `prefix | record` (the prefix coloured when `colored`)."""

    def __init__(self, prefix: str = "", separator: str = " | ", colored: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self.separator = separator
        self.colored = colored

    def line(self, data: Any) -> str:
        text = format_record(data)
        if not self.prefix:
            return text
        prefix = f"{_COLOUR}{self.prefix}{_RESET}" if self.colored else self.prefix
        return f"{prefix}{self.separator}{text}"

    def execute(self, data: Any) -> None:
        # One write per record, so lines of parallel printers never interleave mid-line.
        print(self.line(data) + "\n", end="")
