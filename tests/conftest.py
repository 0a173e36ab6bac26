"""Shared fixtures: one real Ray per test session, thread-leak checks, a JobManager daemon per
module, an IPython shell with the extension loaded."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, started once per test session (2 CPUs, no dashboard, small store)."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="sgr", dir="/tmp"))
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def sage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sage")]


@pytest.fixture
def no_thread_leak():
    """Fails the test if a sage thread is still alive shortly after it."""
    yield
    deadline = time.monotonic() + 2.0
    while sage_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    left = sage_threads()
    assert not left, f"threads left running: {[t.name for t in left]}"


@pytest.fixture(scope="module")
def daemon():
    """A real JobManager process on a free loopback port, one per test module."""
    from sage_jupyter.jobmanager.launch import start_daemon

    proc = start_daemon()
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def ip(no_thread_leak):
    """The IPython shell with `%load_ext sage_jupyter`, unloaded (every job stopped) after."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "sage_jupyter")
    yield shell
    shell.run_line_magic("unload_ext", "sage_jupyter")
    for name in ("Cache", "results", "env", "h"):
        shell.user_ns.pop(name, None)
