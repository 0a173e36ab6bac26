"""notebooks/06_remote.ipynb through a real kernel: it starts a JobManager daemon, runs a
job with autostop and a service on it, watches a stream in the widget, and shuts the
daemon down; Run All twice in one kernel. The notebook asserts its own results in its cells."""

from __future__ import annotations

import os
import pathlib
import re

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from notebook_runner import run_all

pytestmark = pytest.mark.kernel

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "06_remote.ipynb"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def test_notebook_06_remote(tmp_path):
    book = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("SAGE_JOBMANAGER_TOKEN", "RAY_ADDRESS")}
    client = NotebookClient(book, kernel_name="python3", timeout=120, startup_timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})
    run_all(client, book, env)

    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    # stdout only: the kernel's own start-up warning on stderr may land between two prints
    streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"
                      and o.get("name") == "stdout")
    errors = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"
                     and o.get("name") == "stderr")
    assert "<DaemonProcess pid=" in streams and "sage_jupyter.jobmanager" not in errors  # a quiet daemon
    # The blocking job's prints were forwarded from the daemon into the cell.
    assert "0\n4\n16\n36\n64\n" in streams and "cache cleaned, 10 entries" in streams
    assert "FINISHED on 127.0.0.1:" in streams
    # The remote stream was shown in the live widget, whose saved rendering has its final state.
    shown = [o for o in outputs if o.get("output_type") == "display_data" and VIEW_MIME in o.get("data", {})]
    (stream,) = [o["data"] for o in shown if "remote_stream" in o["data"].get("text/plain", "")]
    assert "STOPPED" in stream["text/plain"] and "127.0.0.1:" in stream["text/html"]
    assert "cache cleaned" in stream["text/plain"]  # the daemon's output reached the widget's area
    pid = int(re.search(r"<DaemonProcess pid=(\d+)", streams).group(1))
    assert not psutil.pid_exists(pid), "the notebook left its JobManager daemon running"
