"""The remote mode: a JobManager daemon that runs shipped pipelines with the same
dispatcher as local mode, its HTTP wire protocol, and the client side.

The daemon needs tornado (`pip install sage-jupyter[jobmanager]`); the client needs only
the standard library and cloudpickle.
"""

from .client import JobManagerClient, JobManagerConnectionError, JobManagerError, RemoteJobHandle
from .protocol import DEFAULT_PORT, PROTOCOL_VERSION

__all__ = ["JobManagerClient", "JobManagerConnectionError", "JobManagerError", "RemoteJobHandle",
           "DEFAULT_PORT", "PROTOCOL_VERSION"]
