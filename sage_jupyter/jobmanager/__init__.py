"""The remote mode: a JobManager daemon that runs shipped pipelines with the same
dispatcher as local mode, its HTTP wire protocol, and the client side.

The daemon needs tornado (`pip install sage-jupyter[jobmanager]`); the client needs only
the standard library and cloudpickle.
"""

from .protocol import DEFAULT_PORT, PROTOCOL_VERSION
from .remote_handle import RemoteJobHandle
from .transport import JobManagerClient, JobManagerConnectionError, JobManagerError

__all__ = [
           "DEFAULT_PORT",
           "PROTOCOL_VERSION",
           "JobManagerClient",
           "JobManagerConnectionError",
           "JobManagerError",
           "RemoteJobHandle",
]
