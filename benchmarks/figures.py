"""How every benchmark script prints its figures: one JSON line (`--json`), or `key=value` lines."""

from __future__ import annotations

import json
from typing import Any


def print_figures(figures: dict[str, Any], as_json: bool, short_floats: bool = False) -> None:
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key}={value:.4g}" if short_floats and isinstance(value, float) else f"{key}={value}")
