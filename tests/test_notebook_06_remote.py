"""notebooks/06_remote.ipynb through a real kernel: it starts a JobManager daemon, runs a
job with autostop and a service on it, watches a stream in the widget, and shuts the
daemon down. The notebook asserts its own results in its cells."""

from __future__ import annotations

import os
import pathlib

import nbformat
import psutil
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "06_remote.ipynb"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def daemons() -> set[int]:
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "sage_jupyter.jobmanager" in " ".join(proc.info["cmdline"] or ()):
            found.add(proc.info["pid"])
    return found


def test_notebook_06_remote(tmp_path):
    before = daemons()
    book = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("SAGE_JOBMANAGER_TOKEN", "RAY_ADDRESS")}
    client = NotebookClient(book, kernel_name="python3", timeout=120, startup_timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)

    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "<DaemonProcess pid=" in streams and "sage_jupyter.jobmanager" not in streams  # quiet daemon
    # The blocking job's prints were forwarded from the daemon into the cell.
    assert "0\n4\n16\n36\n64\n" in streams and "cache cleaned, 10 entries" in streams
    assert "FINISHED on 127.0.0.1:" in streams
    # The remote stream was shown in the live widget, whose saved rendering has its final state.
    shown = [o for o in outputs if o.get("output_type") == "display_data" and VIEW_MIME in o.get("data", {})]
    assert any("remote_stream" in o["data"].get("text/plain", "") for o in shown)
    assert daemons() <= before, "the notebook left its JobManager daemon running"
