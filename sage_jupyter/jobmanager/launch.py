"""Start a JobManager daemon as a child process on a free loopback port (for notebooks,
tests and benchmarks), and stop it the way an operator would: SIGTERM, then SIGKILL."""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Sequence

from .protocol import TOKEN_ENV

_ANNOUNCE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")


class DaemonProcess:
    """A running `sage-jobmanager` child process."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, token: str | None) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.token = token

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the daemon stops and cleans every job), SIGKILL after `timeout`; returns
        the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> int:
        """SIGKILL: no cleanup at all (to test what clients see when a daemon dies)."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DaemonProcess pid={self.pid} {self.address} {'running' if self.alive() else 'exited'}>"


def start_daemon(token: str | None = "generate", host: str = "127.0.0.1", port: int = 0,
                 args: Sequence[str] = (), env: dict[str, str] | None = None,
                 startup_timeout: float = 30.0) -> DaemonProcess:
    """Run `python -m sage_jupyter.jobmanager` and wait until it listens.

    `token="generate"` makes a random one (read it from `.token`); `None` runs without.
    The token travels in the child's environment, not on its command line.
    """
    if token == "generate":
        token = secrets.token_urlsafe(24)
    child_env = dict(os.environ if env is None else env)
    child_env.pop(TOKEN_ENV, None)
    if token is not None:
        child_env[TOKEN_ENV] = token
    cmd = [sys.executable, "-m", "sage_jupyter.jobmanager", "--host", host, "--port", str(port), *args]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=child_env)
    assert process.stdout is not None
    line = _read_line(process, process.stdout, startup_timeout)
    match = _ANNOUNCE.search(line)
    if match is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"sage-jobmanager did not start (exit code {process.returncode}); "
                           f"it said: {line.strip()!r:.300}")
    # Keep draining its stdout, so a stray print in the daemon can never block it on a full pipe.
    threading.Thread(target=_drain, args=(process.stdout,), name=f"jobmanager-stdout-{process.pid}",
                     daemon=True).start()
    return DaemonProcess(process, match.group(1), int(match.group(2)), token)


def _read_line(process: subprocess.Popen, stream: IO[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            process.kill()
            process.wait()
            raise TimeoutError(f"sage-jobmanager did not announce its port within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # exited
                break
            buf += chunk
    return buf.decode(errors="replace")


def _drain(stream: IO[bytes]) -> None:
    try:
        while os.read(stream.fileno(), 65536):
            pass
    except (OSError, ValueError):
        pass
