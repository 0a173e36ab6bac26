"""Shared fixtures: one real Ray per test session, thread-leak checks, a JobManager daemon per
module, an IPython shell with the extension loaded, and a 2-node Ray cluster.

One process can be connected to one Ray at a time, so tests marked `cluster` run after all
others: the cluster fixture disconnects from the session's local Ray before it starts."""

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
        with_retries(lambda: ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
                                      log_to_driver=False, configure_logging=False), ray.shutdown)
    yield ray
    ray.shutdown()


def with_retries(start, undo=lambda: None, attempts: int = 3):
    """Ray gives a node 30 s to register with its GCS; on a loaded machine that can pass, so
    try again after undoing and killing the processes the failed attempt started."""
    import psutil

    for attempt in range(attempts):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            return start()
        except Exception:
            if attempt == attempts - 1:
                raise
            undo()
            for child in psutil.Process().children(recursive=True):
                if child.pid not in before:
                    child.kill()


def pytest_collection_modifyitems(items):
    """Cluster tests last (stable otherwise): the local Ray is gone once the cluster starts."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real 2-node Ray cluster on this machine (a head and a worker, 1 CPU each, custom
    resources `head_node` and `worker_node`), this process attached as its driver."""
    import ray

    if ray.is_initialized():  # the session's local Ray, used by the tests that ran before
        ray.shutdown()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="sgr"))  # short: Unix socket paths
    cluster = _start_cluster()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _start_cluster():
    from ray.cluster_utils import Cluster

    def start():
        small = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
        cluster = Cluster(initialize_head=True,
                          head_node_args={**small, "resources": {"head_node": 1}, "include_dashboard": False})
        cluster.worker = cluster.add_node(**small, resources={"worker_node": 1})
        cluster.wait_for_nodes()
        return cluster

    return with_retries(start)


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
