"""Captured output of the daemon's jobs: each job writes into an `OutputBuffer`, and the
proxies of runtime/output.py send what a job's threads print (and log) to that buffer."""

from __future__ import annotations

import logging

from ..runtime import output
from ..runtime.output import JobLogHandler


class OutputCapture:
    """Install (and later remove) the stream proxies and the log handler in the daemon."""

    def __init__(self) -> None:
        self._installed = False
        self._handler = JobLogHandler()
        self._logger = logging.getLogger("sage_jupyter.job")
        self._saved_level = self._logger.level

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        output.install()
        self._logger.addHandler(self._handler)
        if self._logger.level == logging.NOTSET or self._logger.level > logging.INFO:
            self._logger.setLevel(logging.INFO)

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        output.uninstall()
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._saved_level)
