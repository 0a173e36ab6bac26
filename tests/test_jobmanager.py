"""RemoteEnvironment against a real JobManager daemon process on a free loopback port."""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import sage_jupyter
from sage_jupyter import (BaseService, JobHandle, JobState, JobStatus, MapFunction, PipelineError, RemoteEnvironment,
                          SinkFunction)
from sage_jupyter.jobmanager import JobManagerError, RemoteJobHandle
from sage_jupyter.runtime.job import TaskState
from tests.pipelines import Ticks


def make_env(daemon, name: str, **config) -> RemoteEnvironment:
    return RemoteEnvironment(name, port=daemon.port, token=daemon.token, config=config or None)


class Marker(BaseService):
    """Counts calls; its cleanup writes a file, from whichever process runs it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.calls = 0

    def bump(self) -> int:
        self.calls += 1
        return self.calls

    def cleanup(self) -> None:
        Path(self.path).write_text(f"{self.calls} {os.getpid()}")


class Bump(MapFunction):
    def execute(self, x):
        self.call_service["marker"].bump()
        return x * 10


class AppendTo(SinkFunction):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def execute(self, x) -> None:
        with open(self.path, "a") as f:
            f.write(f"{x}\n")


class Logs(MapFunction):
    def execute(self, x):
        self.logger.info("logged %s", x)
        return x


class Boom(MapFunction):
    def execute(self, x):
        if x == 3:
            raise ValueError(f"bad record {x}")
        return x


def cleaned_by(path: Path) -> tuple[int, int]:
    calls, pid = path.read_text().split()
    return int(calls), int(pid)


def test_remote_handle_has_the_job_handle_interface():
    public = [n for n in vars(JobHandle) if not n.startswith("_")]
    assert {"job_id", "state", "status", "wait", "stop", "subscribe", "cleanup_report", "error"} <= set(public)
    for name in public:
        local, remote = vars(JobHandle)[name], getattr(RemoteJobHandle, name)
        if isinstance(local, property):
            assert isinstance(remote, property), name
        else:
            assert inspect.signature(remote) == inspect.signature(local), name


def test_autostop_runs_remotely_and_cleans_services_on_the_server(daemon, tmp_path):
    marker, out = tmp_path / "cleaned", tmp_path / "records"
    env = make_env(daemon, "e2e")
    env.register_service("marker", Marker, str(marker))
    env.from_batch(range(20)).map(Bump).sink(AppendTo, str(out))
    job = env.submit(autostop=True)  # blocks until finished and cleaned on the daemon

    assert isinstance(job, RemoteJobHandle)
    assert job.state is JobState.FINISHED and job.done
    assert sorted(int(x) for x in out.read_text().split()) == [x * 10 for x in range(20)]
    assert cleaned_by(marker) == (20, daemon.pid)  # cleanup() ran in the daemon process
    report = job.cleanup_report
    assert report is not None and report.ok and report.reason == "finished"
    assert report["marker"].cleanup.outcome == "ok"
    status = job.status()
    assert isinstance(status, JobStatus) and status.location == daemon.address
    assert status.service("marker").state.value == "cleaned" and status.records_in == 20
    env.close()


def test_failure_in_a_remote_stage_raises_pipeline_error_naming_it(daemon, tmp_path):
    marker = tmp_path / "cleaned"
    env = make_env(daemon, "fails")
    env.register_service("marker", Marker, str(marker))
    env.from_batch(range(10)).map(Boom).sink(lambda x: None)
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    err = info.value
    assert "map:Boom" in err.stage and "bad record 3" in str(err)
    assert "ValueError: bad record 3" in err.traceback and "in execute" in err.traceback  # remote traceback
    # the protocol carries both texts: the user's frames, and every frame of the daemon's runtime
    package = f'File "{os.path.dirname(sage_jupyter.__file__)}'
    assert package not in err.traceback and package in err.error.full_traceback
    assert [t.stage for t in env.job.status().tasks if t.state is TaskState.FAILED] == ["map:Boom"]
    assert env.job.state is JobState.FAILED
    assert marker.exists() and env.job.cleanup_report.reason == "failed"  # still cleaned on failure
    env.close()


def test_stop_ends_an_unbounded_remote_source_and_cleans(daemon, tmp_path):
    marker = tmp_path / "cleaned"
    env = make_env(daemon, "ticks")
    env.register_service("marker", Marker, str(marker))
    env.from_source(Ticks, 0.01).map(Bump).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    deadline = time.monotonic() + 30
    while job.status().records_in < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state is JobState.RUNNING and not marker.exists()
    assert job.stop() is JobState.STOPPED
    assert job.cleanup_report.reason == "stopped" and job.cleanup_report.ok
    calls, pid = cleaned_by(marker)
    assert calls >= 5 and pid == daemon.pid
    env.close()


def test_nonblocking_handle_works_over_the_wire(daemon, tmp_path, no_thread_leak):
    marker = tmp_path / "cleaned"
    env = make_env(daemon, "handle", forward_output=False)
    env.register_service("marker", Marker, str(marker))

    def shout(x):
        print(f"record {x}")
        return x

    env.from_batch(range(5)).map(shout).map(Bump).map(Logs).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    seen: list[JobStatus] = []
    unsubscribe = job.subscribe(seen.append)
    assert seen, "subscribe() delivers the current snapshot at once, as a local handle does"
    assert job.wait(timeout=60) is JobState.FINISHED
    assert job.cleanup_report.ok and cleaned_by(marker)[0] == 5
    assert job.output("stdout").splitlines() == [f"record {i}" for i in range(5)]
    assert "INFO" in job.output("stderr") and "logged 40" in job.output("stderr")  # self.logger too
    deadline = time.monotonic() + 10
    while not (seen and seen[-1].state.terminal) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen[-1].state is JobState.FINISHED and seen[-1].location == daemon.address
    unsubscribe()
    assert job.job_id in {s.job_id for s in env.list_jobs()}
    attached = env.attach(job.job_id)
    assert attached.status().cleanup_report == job.cleanup_report
    env.close()


def test_job_without_autostop_keeps_services_until_stop(daemon, tmp_path):
    marker = tmp_path / "cleaned"
    env = make_env(daemon, "manual")
    env.register_service("marker", Marker, str(marker))
    env.from_batch(range(3)).map(Bump).sink(lambda x: None)
    job = env.submit(block=False)
    # wait() returns once the tasks ended; the service stays up until stop().
    assert job.wait(timeout=60) is JobState.RUNNING
    assert job.status().service("marker").state.value == "running" and not marker.exists()
    env.stop()
    assert job.state is JobState.STOPPED and cleaned_by(marker)[0] == 3
    env.close()


def test_wait_with_timeout_raises_and_job_is_still_stoppable(daemon):
    env = make_env(daemon, "timeout")
    env.from_source(Ticks, 0.01).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    with pytest.raises(TimeoutError, match="did not end within"):
        job.wait(timeout=0.3)
    assert job.stop(wait=True, timeout=30) is JobState.STOPPED
    env.close()


def test_code_from_a_module_the_daemon_cannot_import_is_shipped_by_value(daemon, tmp_path, monkeypatch):
    module_dir = tmp_path / "userlib"
    module_dir.mkdir()
    (module_dir / "jm_local_functions.py").write_text(textwrap.dedent("""
        from sage_jupyter import MapFunction

        class Triple(MapFunction):
            def execute(self, x):
                return 3 * x
    """))
    monkeypatch.syspath_prepend(str(module_dir))
    import jm_local_functions

    out = tmp_path / "records"
    env = make_env(daemon, "byvalue")
    env.from_batch([1, 2]).map(jm_local_functions.Triple).sink(AppendTo, str(out))
    assert env.submit(autostop=True).state is JobState.FINISHED
    assert out.read_text().split() == ["3", "6"]
    sys.modules.pop("jm_local_functions")
    env.close()


def test_printed_output_is_forwarded_to_the_submitting_process(daemon, capsys):
    env = make_env(daemon, "forward")
    env.from_batch(["a", "b"]).sink(lambda x: print(f"got {x}"))
    env.submit(autostop=True)
    assert "got a\ngot b\n" in capsys.readouterr().out
    env.close()


def test_refused_submissions_are_clear_errors(daemon, tmp_path):
    env = make_env(daemon, "nosink")
    env.from_batch([1]).map(lambda x: x)
    with pytest.raises(ValueError, match="no sink"):
        env.submit(autostop=True)

    env = make_env(daemon, "badbackend")
    env.from_batch([1]).sink(lambda x: None)
    with pytest.raises(ValueError, match="backend"):
        env.submit(backend="spark")

    env = RemoteEnvironment("badtoken", port=daemon.port, token="not-the-token")
    env.from_batch([1]).sink(lambda x: None)
    with pytest.raises(JobManagerError) as info:
        env.submit(autostop=True)
    assert info.value.status == 403 and info.value.code == "bad_token"

    env = make_env(daemon, "twice")
    env.from_batch([1]).sink(lambda x: None)
    env.submit(autostop=True)
    with pytest.raises(RuntimeError, match="already submitted"):
        env.submit(autostop=True)

    with pytest.raises(ValueError, match="unknown key"):
        make_env(daemon, "cfg", colour="red")
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        make_env(daemon, "cfg", heartbeat_timeout="soon")
    with pytest.raises(ValueError, match="forward_output"):
        make_env(daemon, "cfg", forward_output="yes")
    with pytest.raises(ValueError, match="port"):
        RemoteEnvironment("port", port=70000)

    lock = threading.Lock()  # a lock does not pickle: named at submit, nothing sent
    env = make_env(daemon, "unpicklable")
    env.from_batch([1]).map(lambda x: lock).sink(lambda x: None)
    with pytest.raises(TypeError, match="map:lambda"):
        env.submit(autostop=True)


def test_no_daemon_at_the_address_is_a_quick_connection_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = RemoteEnvironment("nobody", port=port, token="t")
    env.from_batch([1]).sink(lambda x: None)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*refused"):
        env.submit(autostop=True)
    assert env.job is None


def test_forward_output_gives_a_new_sink_everything_from_the_start(daemon):
    env = make_env(daemon, "sinks", forward_output=False)
    env.from_batch(range(3)).sink(lambda x: print(x))
    job = env.submit(autostop=True)
    got: list[tuple[str, str]] = []
    job.forward_output(lambda stream, text: got.append((stream, text)))
    deadline = time.monotonic() + 10
    while "".join(t for _, t in got) != "0\n1\n2\n" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "".join(t for _, t in got) == "0\n1\n2\n" and {s for s, _ in got} == {"stdout"}
    env.close()


def test_one_poller_per_remote_job_feeds_its_subscribers_and_its_output(daemon):
    env = RemoteEnvironment("one-poller", port=daemon.port, token=daemon.token, config={"forward_output": False})
    env.from_source(Ticks, 0.01).map(lambda x: print(f"tick {x}") or x).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    states: list[JobState] = []
    printed = threading.Event()
    job.subscribe(lambda s: states.append(s.state))
    job.forward_output(lambda stream, text: printed.set())
    assert printed.wait(30)
    threads = [t.name for t in threading.enumerate() if t.name.startswith(f"sage-remote:{job.job_id}")]
    assert threads == [f"sage-remote:{job.job_id}:poll"]
    assert job.stop() is JobState.STOPPED
    deadline = time.monotonic() + 30
    while (not states or states[-1] is not JobState.STOPPED) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states[0] is JobState.RUNNING and states[-1] is JobState.STOPPED
    job.close()
