"""A real ipykernel driven over jupyter_client, with every iopub message recorded.

Shared by the kernel tests (no tests here). Messages are collected on a background
thread because widget updates arrive between and after cells, not only during one.
`SAGE_TEST_KERNEL_PYTHON=/path/to/python` runs the kernel with another interpreter (for
example one with ipykernel 6.29 and sage_jupyter installed).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jupyter_client import KernelManager


@dataclass
class Run:
    """One executed cell: its reply and the iopub messages sent in its request."""

    msg_id: str
    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reply["content"]["status"] == "ok"

    def stream(self, name: str | None = None) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name))

    def error(self) -> dict[str, Any] | None:
        for m in self.messages:
            if m["msg_type"] == "error":
                return m["content"]
        return None

    def displays(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] in ("display_data", "execute_result")]


class Kernel:
    """Start a kernel; `run(code)` executes a cell and returns its `Run`."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        kernel_env = dict(os.environ)
        kernel_env.update(env or {})
        kernel_env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        self.km = KernelManager(kernel_name="python3")
        other_python = os.environ.get("SAGE_TEST_KERNEL_PYTHON")
        if other_python:  # e.g. a venv with ipykernel 6.29, to check the older kernel too
            self.km.kernel_spec.argv[0] = other_python
        self.km.start_kernel(env=kernel_env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._replies: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_iopub, name="test-iopub", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def _read_iopub(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - channel closed at shutdown
                return
            msg["received_at"] = time.monotonic()
            with self._lock:
                self.messages.append(msg)

    def send(self, code: str, cell_id: str | None = None) -> str:
        """Send an execute request without waiting; returns its msg_id."""
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        msg = self.kc.session.msg("execute_request", content)
        msg["metadata"]["cellId"] = cell_id or str(uuid.uuid4())
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def collect(self, msg_id: str, timeout: float = 60.0) -> Run:
        """Wait for the reply to `msg_id` and for its iopub idle status."""
        deadline = time.monotonic() + timeout
        reply = None
        while reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {msg_id} within {timeout} s")
            try:
                msg = self.kc.get_shell_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
        while time.monotonic() < deadline:
            if any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                   for m in self.of(msg_id)):
                break
            time.sleep(0.02)
        return Run(msg_id, reply, self.of(msg_id))

    def run(self, code: str, timeout: float = 60.0, cell_id: str | None = None) -> Run:
        return self.collect(self.send(code, cell_id), timeout)

    def ok(self, code: str, timeout: float = 60.0, cell_id: str | None = None) -> Run:
        """Run a cell that must succeed; fail with the kernel's error otherwise."""
        run = self.run(code, timeout, cell_id)
        err = run.error()
        assert run.ok, f"cell failed: {err and err['ename']}: {err and err['evalue']}\n" + "\n".join(
            (err or {}).get("traceback", []))
        return run

    def of(self, msg_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id]

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    # ---- widgets ----------------------------------------------------------------------

    def models(self, model_name: str, msg_id: str | None = None) -> list[str]:
        """Comm ids of widget models of this type opened (optionally in one request)."""
        return [m["content"]["comm_id"] for m in self.all()
                if m["msg_type"] == "comm_open"
                and m["content"]["data"].get("state", {}).get("_model_name") == model_name
                and (msg_id is None or m["parent_header"].get("msg_id") == msg_id)]

    def updates(self, comm_id: str) -> list[dict[str, Any]]:
        """Every state update sent for one widget model, in order."""
        return [m for m in self.all() if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
                and m["content"]["data"].get("method") == "update"]

    def comm_data(self, comm_id: str) -> list[dict[str, Any]]:
        """The data of every comm message the kernel sent on `comm_id`."""
        return [m["content"]["data"] for m in self.all() if m["msg_type"] == "comm_msg"
                and m["content"]["comm_id"] == comm_id]

    def output_text(self, comm_id: str) -> str:
        """The text of an Output widget as of its last `outputs` update."""
        states = [u["content"]["data"]["state"]["outputs"] for u in self.updates(comm_id)
                  if "outputs" in u["content"]["data"]["state"]]
        if not states:
            return ""
        return "".join(o.get("text", "") for o in states[-1] if o.get("output_type") == "stream")

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self.kc.stop_channels()
        finally:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=False)
        self._reader.join(2)


def wait_for(what: str, check: Any, timeout: float = 30.0, every: float = 0.02) -> Any:
    """Call `check` until it returns something truthy (returned), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(every)
