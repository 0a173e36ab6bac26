"""Start a JobManager daemon as a child process on a free loopback port (for notebooks,
tests and benchmarks), and stop it the way an operator would: SIGTERM, then SIGKILL."""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from .protocol import TOKEN_ENV

_ANNOUNCE = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")


class DaemonProcess:
    """A running `sage-jobmanager` child process."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, token: str | None,
                 state_dir: str, owns_state_dir: bool = False) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.token = token
        self.state_dir = state_dir  # its job history
        self._owns_state_dir = owns_state_dir

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
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        code = self.process.wait()
        self._remove_state_dir()
        return code

    def kill(self) -> int:
        """SIGKILL: no cleanup at all (to test what clients see when a daemon dies). A state
        directory given by the caller keeps the history for a restart; a temporary one goes."""
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait()
        self._remove_state_dir()
        return code

    def _remove_state_dir(self) -> None:
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DaemonProcess pid={self.pid} {self.address} {'running' if self.alive() else 'exited'}>"


def start_daemon(token: str | None = "generate", host: str = "127.0.0.1", port: int = 0,
                 args: Sequence[str] = (), env: dict[str, str] | None = None,
                 startup_timeout: float = 30.0, state_dir: str | os.PathLike[str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> DaemonProcess:
    """Run `python -m sage_jupyter.jobmanager` and wait until it listens.

    `token="generate"` makes a random one (read it from `.token`); `None` runs without.
    The token travels in the child's environment, not on its command line. The daemon
    tells its port through a pipe of its own (`--announce-fd`); its stdout and stderr
    are this process's. Its job history goes to `state_dir`, by default a temporary
    directory that `stop()` removes (a throwaway daemon leaves nothing behind).
    `preexec_fn` runs in the child before it starts (e.g. to lower its resource limits).
    """
    if token == "generate":
        token = secrets.token_urlsafe(24)
    child_env = dict(os.environ if env is None else env)
    child_env.pop(TOKEN_ENV, None)
    if token is not None:
        child_env[TOKEN_ENV] = token
    owns_state_dir = state_dir is None
    state = tempfile.mkdtemp(prefix="sage-jobmanager-") if state_dir is None else os.fspath(state_dir)
    read_end, write_end = os.pipe()
    cmd = [sys.executable, "-m", "sage_jupyter.jobmanager", "--host", host, "--port", str(port),
           "--announce-fd", str(write_end), "--state-dir", state, *args]
    try:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=child_env, pass_fds=(write_end,),
                                   preexec_fn=preexec_fn)
    finally:
        os.close(write_end)  # the child holds its copy; EOF here means it exited or announced
    try:
        line = _read_line(read_end, startup_timeout)
    finally:
        os.close(read_end)
    match = _ANNOUNCE.search(line) if line else None
    if match is None:
        if process.poll() is None:
            process.kill()
        process.wait()
        if owns_state_dir:
            shutil.rmtree(state, ignore_errors=True)
        why = "did not announce its port in time" if line is None else f"exited with code {process.returncode}"
        raise RuntimeError(f"sage-jobmanager {why} (see its messages on stderr)")
    return DaemonProcess(process, match.group(1), int(match.group(2)), token, state, owns_state_dir)


def _read_line(fd: int, timeout: float) -> str | None:
    """The first line from `fd`, "" at EOF, None after `timeout`."""
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")
