"""Ray tests for the remote mode: a daemon that attaches to a running Ray (here the test
session's, through RAY_ADDRESS) runs a backend="ray" job, and leaves no actor alive after
autostop or after SIGTERM; the environment's `config["ray"]["placement_timeout"]` reaches
the daemon's job."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from sage_jupyter import BaseService, JobState, MapFunction, PipelineError, RemoteEnvironment
from sage_jupyter.jobmanager.launch import start_daemon
from sage_jupyter.jobmanager.protocol import ProtocolError, parse_options
from sage_jupyter.runtime.ray.orphans import sage_actors
from tests.pipelines import Ticks

pytestmark = pytest.mark.ray


class Marker(BaseService):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.calls = 0

    def bump(self) -> int:
        self.calls += 1
        return self.calls

    def cleanup(self) -> None:
        Path(self.path).write_text(f"{self.calls} {os.getpid()}")
        print("marker cleaned")


class Bump(MapFunction):
    def execute(self, x):
        if self.call_service["marker"].bump() == 1:
            print("first bump")
        return x


def live(prefix: str) -> list[dict]:
    """The daemon's actors Ray still lists as alive."""
    return sage_actors(prefix)


def test_ray_job_on_the_daemon_leaves_no_actor_after_autostop_or_sigterm(ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    daemon = start_daemon(env={**os.environ, "RAY_ADDRESS": address})
    prefix = f"sage:{socket.gethostname().replace(':', '_')}:{daemon.pid}:"
    try:
        env = RemoteEnvironment("ray-batch", port=daemon.port, token=daemon.token,
                                config={"forward_output": False})
        env.register_service("marker", Marker, str(tmp_path / "batch"))
        env.from_batch(range(10)).map(Bump).sink(lambda x: None)
        job = env.submit(autostop=True, backend="ray")
        assert job.state is JobState.FINISHED and job.status().backend == "ray"
        cleanup = job.cleanup_report["marker"]
        assert cleanup.kind == "ray" and cleanup.killed is True and cleanup.ok
        calls, pid = (tmp_path / "batch").read_text().split()
        assert calls == "10" and int(pid) != daemon.pid  # cleanup() ran inside the service's actor
        status = job.status()
        made = {t.worker for t in status.tasks} | {s.actor_id for s in status.services}
        assert len(made) == 2 and "thread" not in made and live(prefix) == []  # one task, one service
        # What the actors printed came back to the daemon and is kept with the job.
        assert "first bump" in job.output() and "marker cleaned" in job.output()

        env = RemoteEnvironment("ray-stream", port=daemon.port, token=daemon.token)
        env.register_service("marker", Marker, str(tmp_path / "stream"))
        env.from_source(Ticks, 0.01).map(Bump).sink(lambda x: None)
        stream = env.submit(autostop=True, block=False, backend="ray")
        deadline = time.monotonic() + 60
        while stream.status().records_in < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live(prefix), "the streaming job's actors should be running"
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(10) == 0
        assert (tmp_path / "stream").exists()  # its service was cleaned before the daemon exited
        deadline = time.monotonic() + 10
        while live(prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live(prefix) == []
        assert ray_session.is_initialized()  # the session's Ray was attached to, not shut down
    finally:
        daemon.stop()


def test_the_placement_timeout_of_a_remote_environment_reaches_the_daemons_job(ray_session):
    with pytest.raises(ValueError, match=r"config\['ray'\]\['placement_timeout'\] must be a finite number"):
        RemoteEnvironment("bad", config={"ray": {"placement_timeout": float("inf")}})
    with pytest.raises(ProtocolError, match="option 'placement_timeout' must be null or a number"):
        parse_options({"name": "x", "placement_timeout": -1})
    address = ray_session.get_runtime_context().gcs_address
    daemon = start_daemon(env={**os.environ, "RAY_ADDRESS": address})
    prefix = f"sage:{socket.gethostname().replace(':', '_')}:{daemon.pid}:"
    try:
        env = RemoteEnvironment("unplaceable", port=daemon.port, token=daemon.token,
                                config={"forward_output": False, "ray": {"placement_timeout": 1.5}})
        env.from_batch(range(3)).map(lambda x: x, ray_remote_args={"resources": {"no_such_node": 1}}) \
            .sink(lambda x: None)
        with pytest.raises(PipelineError) as failed:
            env.submit(autostop=True, backend="ray")
        # the daemon's job waited 1.5 s (the default is 60 s), named the stage and its demand
        assert "placement_timeout=1.5 s" in str(failed.value) and "no_such_node" in str(failed.value)
        assert env.job.state is JobState.FAILED and live(prefix) == []
    finally:
        daemon.stop()
