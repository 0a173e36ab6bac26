"""The JobManager's wire protocol against a real daemon: authentication before anything
is read or unpickled, size limit, and clear JSON errors for every malformed request."""

from __future__ import annotations

import base64
import http.client
import json
import os
import pickle
import random
import socket
import subprocess
import sys

import pytest

from sage_jupyter import RemoteEnvironment
from sage_jupyter.jobmanager import JobManagerClient, JobManagerError
from sage_jupyter.jobmanager.launch import start_daemon
from sage_jupyter.jobmanager.protocol import client_info, is_loopback

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def daemon():
    proc = start_daemon(args=["--max-body-mb", "1"])
    yield proc
    assert proc.stop() == 0


def call(daemon, method: str, path: str, body: bytes | None = None, token: str | None = "daemon",
         headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"token {daemon.token if token == 'daemon' else token}"
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def raw(daemon, data: bytes, half_close: bool = True) -> bytes:
    """Send bytes on a fresh socket; return whatever comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def still_serving(daemon) -> bool:
    client = JobManagerClient(port=daemon.port, token=daemon.token)
    try:
        return client.info()["server"] == "sage-jobmanager"
    finally:
        client.close()


class MakesDirectory:
    """Unpickling this creates a directory: proof of whether a payload was deserialised."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def envelope(payload: bytes, **overrides) -> bytes:
    env = {"protocol": 1, "client": client_info(), "options": {"name": "probe", "autostop": True},
           "pipeline": base64.b64encode(payload).decode()}
    env.update(overrides)
    return json.dumps(env).encode()


def test_missing_or_wrong_token_is_refused_before_anything_is_unpickled(daemon, tmp_path):
    target = tmp_path / "created-by-unpickling"
    body = envelope(pickle.dumps(MakesDirectory(str(target))))

    status, reply = call(daemon, "POST", "/api/v1/jobs", body, token=None)
    assert status == 401 and reply["error"]["code"] == "missing_token"
    status, reply = call(daemon, "POST", "/api/v1/jobs", body, token="wrong-token")
    assert status == 403 and reply["error"]["code"] == "bad_token"
    status, reply = call(daemon, "POST", "/api/v1/jobs", body, token=None,
                         headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401
    status, reply = call(daemon, "GET", "/api/v1/jobs", token="wrong-token")  # reads are guarded too
    assert status == 403
    assert not target.exists()

    # The same body with the right token is unpickled (so the checks above did prove something),
    # and then refused because it is not a pipeline.
    status, reply = call(daemon, "POST", "/api/v1/jobs", body)
    assert target.exists()
    assert status == 400 and reply["error"]["code"] == "bad_payload"
    assert "not a sage_jupyter pipeline" in reply["error"]["message"]
    assert still_serving(daemon)


@pytest.mark.parametrize("method,path,body,status,code", [
    ("GET", "/api/v1/nothing-here", None, 404, "unknown_endpoint"),
    ("GET", "/", None, 404, "unknown_endpoint"),
    ("GET", "/api/v2/info", None, 400, "bad_version"),
    ("POST", "/api/v0/jobs", b"{}", 400, "bad_version"),
    ("DELETE", "/api/v1/info", None, 405, "method_not_allowed"),
    ("GET", "/api/v1/jobs/no-such-job", None, 404, "unknown_job"),
    ("POST", "/api/v1/jobs/no-such-job/stop", b"", 404, "unknown_job"),
    ("GET", "/api/v1/jobs/x?wait=soon", None, 400, "bad_request"),
    ("POST", "/api/v1/jobs", b"", 400, "malformed_body"),
    ("POST", "/api/v1/jobs", b"\x80\x03random bytes \xff", 400, "malformed_body"),
    ("POST", "/api/v1/jobs", b'{"protocol": 1, "client": {"python": "3.', 400, "malformed_body"),
    ("POST", "/api/v1/jobs", b"[1, 2]", 400, "malformed_body"),
    ("POST", "/api/v1/jobs", b'{"protocol": 1}', 400, "malformed_body"),
])
def test_malformed_requests_get_clear_json_errors(daemon, method, path, body, status, code):
    got, reply = call(daemon, method, path, body)
    assert got == status and reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert still_serving(daemon)


def test_bad_submissions_name_what_is_wrong(daemon):
    pickled = pickle.dumps({"graph": None})
    cases = [
        (envelope(pickled, protocol=9), 400, "bad_version", "protocol 9"),
        (envelope(pickled, client={"python": "2.7"}), 409, "incompatible_client", "Python '2.7'"),
        (envelope(pickled, options={"name": "x", "backend": "spark"}), 400, "bad_options", "'backend'"),
        (envelope(pickled, options={"name": "x", "autostop": "yes"}), 400, "bad_options", "'autostop'"),
        (envelope(pickled, options={"name": "x", "colour": 1}), 400, "bad_options", "colour"),
        (envelope(pickled, options={"name": ""}), 400, "bad_options", "'name'"),
        (envelope(pickled, options={"name": "x", "cleanup": {"graceful_timeout": -1}}), 400, "bad_options",
         "graceful_timeout"),
        (envelope(pickled, pipeline="not base64!"), 400, "malformed_body", "base64"),
        (envelope(pickled[: len(pickled) // 2]), 400, "bad_payload", "could not be unpickled"),  # truncated
        (envelope(b"\x80\x05garbage"), 400, "bad_payload", "could not be unpickled"),
    ]
    for body, status, code, words in cases:
        got, reply = call(daemon, "POST", "/api/v1/jobs", body)
        assert (got, reply["error"]["code"]) == (status, code), reply
        assert words in reply["error"]["message"], reply
    assert still_serving(daemon)


def test_oversized_bodies_are_refused_without_being_read(daemon):
    # Announced by Content-Length: refused from the headers alone.
    reply = raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: token " + daemon.token.encode()
                + b"\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 1000, half_close=False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "too_large"
    # Chunked, with no length up front: refused once it passes the limit.
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    reply = raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: token " + daemon.token.encode()
                + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * (MAX_BODY // 0x10000 + 2) + b"0\r\n\r\n",
                half_close=False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body.split(b"}}")[0] + b"}}")["error"]["code"] == "too_large"
    # Without a token the size does not matter: authentication comes first.
    reply = raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
                half_close=False)
    assert reply.startswith(b"HTTP/1.1 401")
    assert still_serving(daemon)


def test_random_bytes_and_truncated_requests_leave_the_daemon_serving(daemon):
    rng = random.Random(5)
    for size in (1, 17, 300, 5000):
        raw(daemon, bytes(rng.randrange(256) for _ in range(size)))
    # Random bytes that end like an HTTP head get tornado's plain 400 (asked on an open
    # connection: after a half-close tornado may see the end of input before it answers).
    assert raw(daemon, b"\x16\x03\x01garbage\r\n\r\n", half_close=False).startswith(b"HTTP/1.1 400")
    token = daemon.token.encode()
    # A body cut short by a client that went away.
    raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: token " + token
        + b"\r\nContent-Length: 5000\r\n\r\n" + b'{"protocol": 1, "opt')
    # A head cut short.
    raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthoriz")
    # A connection opened and dropped.
    socket.create_connection(("127.0.0.1", daemon.port), timeout=5).close()
    assert still_serving(daemon)
    assert call(daemon, "GET", "/api/v1/jobs")[0] == 200


def test_non_loopback_host_requires_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SAGE_JOBMANAGER_TOKEN"}
    cmd = [sys.executable, "-m", "sage_jupyter.jobmanager", "--port", "0"]
    done = subprocess.run(cmd + ["--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "a token is required" in done.stderr
    done = subprocess.run(cmd + ["--token-file", str(tmp_path / "missing")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--token-file" in done.stderr and "No such file" in done.stderr


def test_a_daemon_that_cannot_start_is_reported_by_the_launcher():
    with pytest.raises(RuntimeError, match="exited with code 2"):
        start_daemon(token=None, host="0.0.0.0")


def test_token_from_a_file_is_enforced(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    proc = start_daemon(token=None, args=["--token-file", str(token_file)])
    try:
        with pytest.raises(JobManagerError) as info:
            JobManagerClient(port=proc.port).info()
        assert info.value.code == "missing_token"
        assert JobManagerClient(port=proc.port, token="from-a-file").info()["protocol"] == 1
    finally:
        assert proc.stop() == 0


def test_status_on_the_wire_is_exactly_job_status_to_dict():
    from sage_jupyter import BaseService, LocalEnvironment, PipelineError
    from sage_jupyter.jobmanager.protocol import to_wire
    from sage_jupyter.runtime.job import status_from_dict

    class Svc(BaseService):
        def cleanup(self):
            raise RuntimeError("cleanup broke")

    def boom(x):
        raise ValueError("no")

    env = LocalEnvironment("wire")
    env.register_service("svc", Svc)
    env.from_batch([1, 2]).map(boom).sink(lambda x: None)
    with pytest.raises(PipelineError):
        env.submit(autostop=True)
    status = env.job.status()
    assert status.error is not None and status.cleanup_report is not None and status.tasks
    assert to_wire(status) == status.to_dict()
    assert to_wire(status)["terminal"] is True and to_wire(status)["records_out"] == status.records_out
    assert status_from_dict(json.loads(json.dumps(to_wire(status)))) == status


def test_a_port_in_use_is_a_clear_startup_error(daemon, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SAGE_JOBMANAGER_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "sage_jupyter.jobmanager", "--port", str(daemon.port),
                           "--token", "t", "--state-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{daemon.port}" in done.stderr
    assert still_serving(daemon)


def test_a_submission_over_the_limit_names_the_limit_before_sending(daemon):
    env = RemoteEnvironment("big", port=daemon.port, token=daemon.token, config={"forward_output": False})
    env.from_batch([b"x" * (16 * MAX_BODY)]).sink(lambda x: None)  # the data rides inside the pipeline
    with pytest.raises(JobManagerError) as err:
        env.submit(autostop=True)
    assert err.value.status == 413 and err.value.code == "too_large"
    assert f"limit of {MAX_BODY:,} bytes" in str(err.value) and "--max-body-mb" in str(err.value)
    assert still_serving(daemon)


def test_deeply_nested_json_is_a_json_400(daemon):
    status, reply = call(daemon, "POST", "/api/v1/jobs", body=b"[" * 200_000 + b"]" * 200_000)
    assert status == 400 and reply["error"]["code"] == "malformed_body"
    assert "deeply" in reply["error"]["message"]
    assert still_serving(daemon)


@pytest.mark.parametrize("length", ["-5", "+40000000", "12abc", "1e3"])
def test_a_malformed_content_length_is_a_json_400(daemon, length):
    reply = raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: token " + daemon.token.encode()
                + b"\r\nContent-Length: " + length.encode() + b"\r\n\r\n", half_close=False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and "Content-Length" in error["message"] and length in error["message"]
    assert still_serving(daemon)


def test_a_chunked_upload_over_the_limit_in_one_chunk_is_a_json_413(daemon):
    size = 2 * MAX_BODY  # one chunk announcing more than the limit at once
    reply = raw(daemon, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: token " + daemon.token.encode()
                + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{size:x}\r\n".encode() + b"x" * size + b"\r\n0\r\n\r\n",
                half_close=False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(body.split(b"}}")[0] + b"}}")["error"]["code"] == "too_large"
    assert still_serving(daemon)


def test_loopback_is_decided_on_the_resolved_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("127.evil.example.com")  # looks like loopback, is a name elsewhere
    assert not is_loopback("0.0.0.0")
    env = {k: v for k, v in os.environ.items() if k != "SAGE_JOBMANAGER_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "sage_jupyter.jobmanager", "--port", "0",
                           "--host", "127.evil.example.com"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "a token is required" in done.stderr


def test_query_strings_never_reach_the_log(tmp_path):
    log_file = tmp_path / "daemon.log"
    proc = start_daemon(args=["-v", "--log-file", str(log_file)])
    try:
        secret = "s3cr3t-in-the-url"
        status, reply = call(proc, "GET", f"/api/v1/jobs?token={secret}&x=1", token=None)
        assert status == 401 and reply["error"]["code"] == "missing_token"
    finally:
        assert proc.stop() == 0
    text = log_file.read_text()
    assert "401 GET /api/v1/jobs?<redacted>" in text  # refused, logged at WARNING, without the query
    assert secret not in text
