"""sage_jupyter: SAGE dataflow pipelines and services, run from Jupyter or plain Python.

Importing this package starts nothing: no threads, ports, signal handlers or Ray.
"""

from __future__ import annotations

import logging
from typing import Any

from .api import (BaseEnvironment, BaseFunction, BaseService, BatchFunction, DataStream, FilterFunction,
                  FlatMapFunction, KeyByFunction, LocalEnvironment, MapFunction, SinkFunction,
                  SourceFunction)
from .api import BaseCoMapFunction, BaseJoinFunction, ConnectedStreams
from .runtime.errors import PipelineError, ServiceCallError
from .runtime.job import (CleanupReport, JobHandle, JobState, JobStatus, ServiceCleanup, ServiceState,
                          ServiceStatus, TaskState, TaskStatus)
from .runtime.policy import CleanupPolicy

__version__ = "0.1.0"

# Silent by default: applications choose where runtime logs go.
logging.getLogger("sage_jupyter").addHandler(logging.NullHandler())

__all__ = [
    "LocalEnvironment", "RemoteEnvironment", "BaseEnvironment", "DataStream", "BaseService",
    "BaseFunction", "BatchFunction", "SourceFunction", "MapFunction", "FilterFunction",
    "FlatMapFunction", "SinkFunction", "KeyByFunction", "CleanupPolicy", "CleanupReport",
    "ServiceCleanup", "JobHandle", "JobState", "JobStatus", "TaskState", "TaskStatus",
    "ServiceState", "ServiceStatus", "PipelineError", "ServiceCallError",
    "ConnectedStreams", "BaseCoMapFunction", "BaseJoinFunction",
]


def __getattr__(name: str) -> Any:
    # RemoteEnvironment pulls in the JobManager client; load it only when asked for.
    if name == "RemoteEnvironment":
        from .api.remote_environment import RemoteEnvironment

        return RemoteEnvironment
    raise AttributeError(f"module 'sage_jupyter' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext sage_jupyter`: register the magics and the sidebar comm target."""
    from .jupyter.extension import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext sage_jupyter`: stop every job and unregister everything."""
    from .jupyter.extension import unload

    unload(ipython)
