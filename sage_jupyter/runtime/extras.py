"""Optional parts of sage_jupyter, checked where they are used: a missing one raises
`MissingExtraError`, naming the pip extra that installs it, instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Top-level module -> the extra of sage-jupyter that brings it.
EXTRAS: dict[str, str] = {"ray": "ray", "tornado": "jobmanager"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def require_extra(module: str, feature: str) -> ModuleType:
    """Import `module` for `feature` (e.g. "backend='ray'"), or raise `MissingExtraError`.

    Only the module itself being absent is translated: if it is installed but one of its own
    imports fails, that original error propagates, since installing the extra would not help.
    """
    extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        # `from None`: the hint is the whole story, said once rather than under a second traceback.
        raise MissingExtraError(
            f"{feature} needs {module}, which is not installed: pip install 'sage-jupyter[{extra}]'",
            name=module,
        ) from None
