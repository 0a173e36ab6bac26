"""Ray actors of dead kernels, through real kernels attached to the session's Ray by
RAY_ADDRESS: a kernel killed with SIGKILL, a process that leaves actors behind, and a new
kernel whose `%load_ext` notices them, whose sidebar comm lists them and kills one, and
whose `%sage_orphans --kill` kills the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kernel_harness import Kernel, wait_for

from sage_jupyter.runtime.ray.orphans import live_names, parse_name, wait_dead

pytestmark = [pytest.mark.ray, pytest.mark.kernel]
HERE = Path(__file__).parent

SERVICE = '''%%sage_service cache --remote
from sage_jupyter import BaseService
class Cache(BaseService):
    def get(self, x):
        return x'''
PIPELINE = '''%%sage_pipeline on_ray -o on_ray
import time
from sage_jupyter import MapFunction, SourceFunction
class Ticks(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1
class Look(MapFunction):
    def execute(self, x):
        return self.call_service["cache"].get(x)
env.from_source(Ticks).map(Look).sink(lambda x: None)'''


def wait_slowly(what: str, check: Any, timeout: float = 60.0) -> Any:
    return wait_for(what, check, timeout, every=0.05)


def _of_pid(pid: int) -> set[str]:
    return {n for n in live_names() if (parse_name(n) or ("", 0))[1] == pid}




def _orphan_names(data: dict[str, Any]) -> set[str]:
    return {o["name"] for o in data.get("orphans", [])}


def test_actors_of_dead_kernels_are_noticed_listed_and_killed(ray_session: Any) -> None:
    ray_env = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}

    # A kernel killed with SIGKILL: Ray ends the actors it created (they are not detached).
    killed = Kernel(env=ray_env)
    try:
        killed.ok("%load_ext sage_jupyter")
        killed.ok(SERVICE)
        killed.ok(PIPELINE, timeout=120)
        killed.ok("import time\nwhile on_ray.status().records_in == 0:\n    time.sleep(0.05)", timeout=120)
        actors = _of_pid(killed.pid)
        assert len(actors) == 1, actors  # the service actor
        os.kill(killed.pid, signal.SIGKILL)
        assert wait_dead(actors, 60.0) == [], "Ray kept the actors of a kernel killed with SIGKILL"
    finally:
        killed.shutdown()

    # A process that leaves actors behind (detached, as upstream SAGE makes them), killed.
    maker = subprocess.Popen([sys.executable, str(HERE / "orphan_maker.py"), ray_env["RAY_ADDRESS"], "lost-1"],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, **ray_env})
    try:
        cache, task = maker.stdout.readline().split()  # type: ignore[union-attr]
    finally:
        maker.kill()
        maker.wait(30)
    assert {cache, task} <= _of_pid(maker.pid)  # alive without their process

    k = Kernel(env=ray_env)
    try:
        notice = k.ok("%load_ext sage_jupyter", timeout=120).stream()
        assert "Ray actors left by dead kernels" in notice and str(maker.pid) in notice, notice
        assert "%sage_orphans --kill" in notice

        comm_id = uuid.uuid4().hex  # the sidebar's comm, opened by the frontend
        k.kc.shell_channel.send(k.kc.session.msg(
            "comm_open", {"comm_id": comm_id, "target_name": "sage_jupyter", "data": {}}))
        first = wait_slowly("the sidebar list", lambda: k.comm_data(comm_id))[0]
        assert {cache, task} <= _orphan_names(first)
        entry = next(o for o in first["orphans"] if o["name"] == cache)
        assert entry == {"name": cache, "host": entry["host"], "pid": maker.pid, "job": "lost-1", "role": "svc:cache"}

        k.kc.shell_channel.send(k.kc.session.msg(
            "comm_msg", {"comm_id": comm_id, "data": {"action": "kill_orphans", "names": [cache]}}))
        answer = wait_slowly("the answer to kill_orphans",
                       lambda: [d for d in k.comm_data(comm_id) if task in _orphan_names(d)
                                and cache not in _orphan_names(d)])[0]
        assert "error" not in answer
        assert cache not in live_names() and task in live_names()

        listed = k.ok("%sage_orphans")
        shown = listed.stream() + "".join(str(d["data"]) for d in listed.displays())
        assert task in shown and cache not in shown, shown

        run = k.ok("%sage_orphans --kill")
        assert f"killed 1 orphaned Ray actor: {task}" in run.stream(), run.stream()
        assert task not in live_names()
        wait_slowly("a push without orphans", lambda: k.comm_data(comm_id)[-1].get("orphans") == [])
        assert "No Ray actors left by dead kernels." in "".join(str(d["data"]) for d in run.displays())

        bad = k.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"action": "kill_orphans", "names": "x"}})
        k.kc.shell_channel.send(bad)
        wait_slowly("an error naming 'names'", lambda: any("'names' must be a list" in d.get("error", "")
                                                     for d in k.comm_data(comm_id)))
    finally:
        k.shutdown()


def test_load_ext_without_ray_looks_for_nothing() -> None:
    k = Kernel(env={"RAY_ADDRESS": ""})
    try:
        assert k.ok("%load_ext sage_jupyter").stream() == ""
        assert k.ok("import sys\nprint('ray' in sys.modules)").stream().strip() == "False"
        assert "no Ray to look at: Ray is not initialised in this kernel and RAY_ADDRESS is not set" in k.ok(
            "%sage_orphans").stream()
    finally:
        k.shutdown()
