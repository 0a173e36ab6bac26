"""A plain script on backend="ray": it starts a quiet Ray of its own and leaves nothing
running at exit, or attaches to a cluster named by RAY_ADDRESS and leaves it running."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent("""
    import ray
    from sage_jupyter import LocalEnvironment, MapFunction
    from sage_jupyter.runtime.ray import cluster

    class Shout(MapFunction):
        def execute(self, x):
            print(f"actor says {x}")
            return x

    env = LocalEnvironment("script", backend="ray")
    env.from_batch(range(3)).map(Shout).sink(lambda x: None)
    job = env.submit(autostop=True)
    print("state", job.state.value, "started", cluster.started_ray(), "alive", ray.is_initialized())
""")


def run_script(tmp_path, **env_vars) -> subprocess.CompletedProcess:
    path = tmp_path / "pipeline.py"
    path.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(env_vars)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env,
                          timeout=240, cwd=tmp_path)


def processes_using(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_script_starts_its_own_ray_and_leaves_nothing_running(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="sgs", dir="/tmp")
    done = run_script(tmp_path, RAY_TMPDIR=ray_tmp)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("actor says")] == [f"actor says {i}" for i in range(3)]
    assert "state FINISHED started True alive True" in lines
    deadline = time.monotonic() + 30
    while processes_using(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(ray_tmp) == [], "the script's Ray outlived it"


def test_script_attaches_to_ray_address_and_leaves_the_cluster_up(tmp_path, ray_session):
    ray = ray_session
    done = run_script(tmp_path, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    assert done.returncode == 0, done.stderr
    assert "state FINISHED started False alive True" in done.stdout
    assert "actor says 2" in done.stdout
    assert ray.get(ray.put("still here")) == "still here"
