"""Tracebacks as users want them: their own frames only, the way IPython hides its own.

The runtime's frames (thread loops, operator chains, service hosts) say nothing about the
user's bug; `ErrorInfo.full_traceback` keeps them for bug reports about sage_jupyter itself.
"""

from __future__ import annotations

import os
import traceback

from .job import ErrorInfo
from .proxies import unknown_method

# The package's own folder: frames from files under it are the runtime's, not the user's.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


# Code the runtime generates (fused loops, service proxies) is compiled under such a name.
GENERATED_PREFIX = "<sage "


def is_own_frame(filename: str) -> bool:
    return filename.startswith(GENERATED_PREFIX) or os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _drop_own_frames(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:  # exception chains may loop
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not is_own_frame(f.filename)])
    for linked in (te.__cause__, te.__context__):
        if linked is not None:
            _drop_own_frames(linked, seen)


def user_traceback(exc: BaseException) -> str:
    """The traceback text of `exc` (and its chain) without any frame of sage_jupyter."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_own_frames(te, set())
    return "".join(te.format())


def full_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def error_info(where: str, exc: BaseException) -> ErrorInfo:
    """The `ErrorInfo` of an exception raised at `where` (a stage, a service hook, ...)."""
    said = unknown_method(exc) or exc  # `call_service[name].nope()` is an AttributeError at first
    return ErrorInfo(where=where, type=type(said).__name__, message=str(said),
                     traceback=user_traceback(exc), full_traceback=full_traceback(exc))
