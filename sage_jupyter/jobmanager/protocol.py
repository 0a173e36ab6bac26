"""The JobManager wire protocol, version 1: REST over HTTP, JSON everywhere, one pickle.

Every request carries `Authorization: token <T>` and is authenticated before its body is
read. Paths start with `/api/v1/`; errors are JSON `{"error": {"code", "message", "status"}}`.
A submission is a JSON envelope: validated options (plain JSON) plus a base64 cloudpickle
of the pipeline graph and its services, unpickled only after every other check passed.
A job's output is read in pages (`GET /jobs/ID/output?since=N`, or along with its status:
`GET /jobs/ID?output_since=N`); a page says whether more follows (`more`) and how many
chunks the daemon dropped before they were read (`missed`). `/info` announces the body limit.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import io
import ipaddress
import json
import pickle
import socket
import sys
from dataclasses import Field, asdict, dataclass, fields, is_dataclass
from typing import Any

import cloudpickle

from ..runtime.graph import PipelineGraph, ServiceSpec
from ..runtime.job import JobStatus
from ..runtime.limits import check_limits
from ..runtime.policy import CleanupPolicy
from ..runtime.shipping import local_modules

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
API_PREFIX = f"/api/v{PROTOCOL_VERSION}"
DEFAULT_PORT = 19001
DEFAULT_MAX_BODY_BYTES = 32 * 2**20  # a pipeline is kilobytes; data belongs in its sources
TOKEN_ENV = "SAGE_JOBMANAGER_TOKEN"
BACKENDS = ("thread", "ray")
LONG_POLL_MAX_S = 30.0  # the daemon caps every long-poll, so no request waits forever
DEFAULT_HEARTBEAT_TIMEOUT_S = 5.0
DEFAULT_MAX_CONNECTIONS = 256  # the daemon's connection table
DEFAULT_IDLE_TIMEOUT_S = 20.0  # idle connections, slow headers and slow bodies are closed after this


class ProtocolError(Exception):
    """A request the daemon refuses: `status` is the HTTP status, `code` a stable word."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def is_loopback(host: str) -> bool:
    """True if every address `host` resolves to is a loopback address (a name such as
    "127.evil.example.com" is judged by what it resolves to, not by how it looks)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # cannot tell: treat it as reachable from elsewhere
    addresses = {str(info[4][0]) for info in infos}
    try:
        return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    except ValueError:
        return False


def auth_header(token: str | None) -> dict[str, str]:
    return {"Authorization": f"token {token}"} if token else {}


def parse_auth_header(value: str | None) -> str | None:
    """The token of an `Authorization: token <T>` header (`Bearer` is accepted too)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not rest.strip():
        return None
    return rest.strip()


def to_wire(value: Any) -> Any:
    """`JobStatus.to_dict()` without its deep copies: status replies are the daemon's
    most frequent work (views poll them). Same result for any frozen dataclass tree."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_wire(getattr(value, f.name)) for f in _fields(type(value))}
        if isinstance(value, JobStatus):
            out.update(value.derived())
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


@functools.cache
def _fields(cls: type) -> tuple[Field[Any], ...]:
    return fields(cls)


# ---- job options --------------------------------------------------------------------


@dataclass(frozen=True)
class JobOptions:
    """How the daemon runs one submitted job (the JSON half of a submission)."""

    name: str
    autostop: bool = False
    backend: str = "thread"
    cleanup: dict[str, float] | None = None  # CleanupPolicy fields
    cancel_on_disconnect: bool = False
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    max_records: int | None = None  # submit(max_records=...): the sources' record budget
    max_duration: float | None = None  # submit(max_duration=...): seconds the sources run
    placement_timeout: float | None = None  # seconds Ray may take to place an actor; None: the default (60)

    def policy(self) -> CleanupPolicy:
        return CleanupPolicy(**self.cleanup) if self.cleanup else CleanupPolicy()

    def backend_config(self) -> dict[str, Any]:
        """What the dispatcher hands the Ray backend and Ray service hosts."""
        return {} if self.placement_timeout is None else {"placement_timeout": self.placement_timeout}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, "bad_options", message)


def parse_options(raw: Any) -> JobOptions:
    """Validate the options of a submission, naming the first bad field."""
    if not isinstance(raw, dict):
        raise _bad(f"'options' must be a JSON object, got {type(raw).__name__}")
    known = set(JobOptions.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _bad(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 200:
        raise _bad(f"option 'name' must be a non-empty string of at most 200 characters, got {name!r:.80}")
    for flag in ("autostop", "cancel_on_disconnect"):
        if not isinstance(raw.get(flag, False), bool):
            raise _bad(f"option {flag!r} must be true or false, got {raw[flag]!r:.80}")
    backend = raw.get("backend", "thread")
    if backend not in BACKENDS:
        raise _bad(f"option 'backend' must be one of {', '.join(BACKENDS)}, got {backend!r:.80}")
    cleanup = raw.get("cleanup")
    if cleanup is not None:
        if not isinstance(cleanup, dict):
            raise _bad(f"option 'cleanup' must be an object or null, got {type(cleanup).__name__}")
        try:
            CleanupPolicy(**cleanup)
        except (TypeError, ValueError) as exc:
            raise _bad(f"option 'cleanup': {exc}") from None
    hb = raw.get("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_S)
    if isinstance(hb, bool) or not isinstance(hb, (int, float)) or not 0.5 <= hb <= 3600:
        raise _bad(f"option 'heartbeat_timeout' must be a number of seconds in [0.5, 3600], got {hb!r:.80}")
    try:
        limits = check_limits(raw.get("max_records"), raw.get("max_duration"), "option")
    except ValueError as exc:
        raise _bad(str(exc)) from None
    placement = raw.get("placement_timeout")
    if placement is not None and (isinstance(placement, bool) or not isinstance(placement, (int, float))
                                  or not 0 < placement <= 86400):
        raise _bad(f"option 'placement_timeout' must be null or a number of seconds in (0, 86400], "
                   f"got {placement!r:.80}")
    return JobOptions(name, bool(raw.get("autostop", False)), backend, cleanup,
                      bool(raw.get("cancel_on_disconnect", False)), float(hb),
                      max_records=limits.max_records, max_duration=limits.max_duration,
                      placement_timeout=None if placement is None else float(placement))


# ---- the submission envelope --------------------------------------------------------


def client_info() -> dict[str, str]:
    """What the daemon checks before unpickling: by-value code needs the same Python."""
    from .. import __version__

    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__,
        "sage_jupyter": __version__,
    }


def encode_submission(options: JobOptions, graph: PipelineGraph, services: list[ServiceSpec]) -> bytes:
    payload = dump_pipeline(graph, services)
    envelope = {
        "protocol": PROTOCOL_VERSION,
        "client": client_info(),
        "options": options.to_dict(),
        "pipeline": base64.b64encode(payload).decode("ascii"),
    }
    return json.dumps(envelope).encode()


def decode_submission(body: bytes) -> tuple[JobOptions, bytes]:
    """Check the envelope and options; return them with the still-pickled pipeline."""
    if not body:
        raise ProtocolError(400, "malformed_body", "empty body; POST a JSON submission envelope")
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(400, "malformed_body", f"body is not valid JSON (truncated?): {exc}") from None
    except RecursionError:
        raise ProtocolError(400, "malformed_body", "body nests JSON arrays or objects too deeply") from None
    if not isinstance(envelope, dict):
        raise ProtocolError(400, "malformed_body", "body must be a JSON object")
    missing = [k for k in ("protocol", "client", "options", "pipeline") if k not in envelope]
    if missing:
        raise ProtocolError(400, "malformed_body", f"submission lacks field(s): {', '.join(missing)}")
    if envelope["protocol"] not in SUPPORTED_VERSIONS:
        raise ProtocolError(400, "bad_version", f"submission protocol {envelope['protocol']!r:.40} is not "
                            f"supported; this JobManager speaks {list(SUPPORTED_VERSIONS)}")
    client = envelope["client"]
    here = client_info()
    if not isinstance(client, dict) or client.get("python") != here["python"]:
        theirs = client.get("python") if isinstance(client, dict) else None
        raise ProtocolError(409, "incompatible_client",
                            f"client runs Python {theirs!r:.20} but the JobManager runs Python {here['python']}; "
                            "functions shipped by value need the same Python minor version")
    options = parse_options(envelope["options"])
    pipeline = envelope["pipeline"]
    if not isinstance(pipeline, str):
        raise ProtocolError(400, "malformed_body", "'pipeline' must be a base64 string")
    try:
        payload = base64.b64decode(pipeline.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ProtocolError(400, "malformed_body", f"'pipeline' is not valid base64 (truncated?): {exc}") from None
    return options, payload


# ---- the pickled pipeline -----------------------------------------------------------


def dump_pipeline(graph: PipelineGraph, services: list[ServiceSpec]) -> bytes:
    """cloudpickle the graph and services. Code from `__main__`, a notebook or a module
    that is not installed (a file next to the notebook) travels by value."""
    modules = local_modules(graph, services)
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:  # already registered by the user
                pass
        try:
            data: bytes = cloudpickle.dumps({"graph": graph, "services": services}, protocol=pickle.HIGHEST_PROTOCOL)
            return data
        except Exception as exc:
            raise TypeError(f"cannot ship the pipeline to the JobManager: {_culprit(graph, services)}"
                            f"{type(exc).__name__}: {exc}") from exc
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def _culprit(graph: PipelineGraph, services: list[ServiceSpec]) -> str:
    """Name the first stage or service that does not pickle, for the error message."""
    for stage in graph.stages:
        try:
            cloudpickle.dumps((stage.factory, stage.key_factory))
        except Exception:  # noqa: BLE001 - probing
            return f"stage {stage.label!r} does not pickle: "
    for spec in services:
        try:
            cloudpickle.dumps((spec.cls, spec.args, spec.kwargs))
        except Exception:  # noqa: BLE001 - probing
            return f"service {spec.name!r} does not pickle: "
    return ""


def load_pipeline(payload: bytes) -> tuple[PipelineGraph, list[ServiceSpec]]:
    """Unpickle a pipeline; call only after the request was authenticated."""
    try:
        data = pickle.load(io.BytesIO(payload))
    except Exception as exc:  # noqa: BLE001 - anything the client sent
        hint = " (define it in the notebook or install it on the JobManager host)" \
            if isinstance(exc, ImportError) else ""
        raise ProtocolError(400, "bad_payload",
                            f"the pipeline could not be unpickled: {type(exc).__name__}: {exc}{hint}") from None
    graph = data.get("graph") if isinstance(data, dict) else None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(graph, PipelineGraph) or not isinstance(services, list) \
            or not all(isinstance(s, ServiceSpec) for s in services):
        raise ProtocolError(400, "bad_payload", "the payload is not a sage_jupyter pipeline "
                            f"(got {type(data).__name__}); submit with RemoteEnvironment")
    return graph, services
