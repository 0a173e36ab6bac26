"""Processes going away: a client killed mid-job, the daemon killed mid-job, and the
daemon's SIGTERM shutdown (every job stopped, every service cleaned, nothing left)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from sage_jupyter import BaseService, JobState, RemoteEnvironment
from sage_jupyter.jobmanager import JobManagerConnectionError
from sage_jupyter.jobmanager.launch import start_daemon
from tests.pipelines import Ticks

# The client process defines its classes in __main__, as a script or a notebook does.
CLIENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sage_jupyter import BaseService, RemoteEnvironment

    port, token, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

    class Marker(BaseService):
        def cleanup(self):
            Path(marker).write_text("cleaned")

    def slow_numbers():
        for i in range(40):
            time.sleep(0.05)
            yield i

    def ticks():
        time.sleep(0.01)
        return 1

    env = RemoteEnvironment("client-" + mode, port=int(port), token=token,
                            config={"heartbeat_timeout": 1.0, "forward_output": False})
    env.register_service("marker", Marker)
    if mode == "autostop":
        env.from_batch(slow_numbers).sink(lambda x: None)
        job = env.submit(autostop=True, block=False)
    else:
        env.from_source(ticks).sink(lambda x: None)
        job = env.submit(block=False, cancel_on_disconnect=True)
    print(job.job_id, flush=True)
    time.sleep(600)
""")


def run_client_then_kill(daemon, tmp_path: Path, mode: str) -> str:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = subprocess.Popen([sys.executable, str(script), str(daemon.port), daemon.token,
                               str(tmp_path / "cleaned"), mode], stdout=subprocess.PIPE, text=True)
    try:
        job_id = client.stdout.readline().strip()
        assert job_id, "the client process did not submit"
    finally:
        client.kill()  # SIGKILL: no atexit, no goodbye
        client.wait()
        client.stdout.close()
    return job_id


def test_autostop_job_outlives_its_killed_client_and_cleans_up(daemon, tmp_path):
    job_id = run_client_then_kill(daemon, tmp_path, "autostop")
    env = RemoteEnvironment("observer", port=daemon.port, token=daemon.token)
    job = env.attach(job_id)
    assert not job.done  # 40 records at 50 ms: still running when its client died
    assert job.wait(timeout=60) is JobState.FINISHED
    assert job.status().records_in == 40
    assert (tmp_path / "cleaned").read_text() == "cleaned" and job.cleanup_report.ok


def test_cancel_on_disconnect_job_is_stopped_when_its_client_dies(daemon, tmp_path):
    job_id = run_client_then_kill(daemon, tmp_path, "cancel")
    env = RemoteEnvironment("observer", port=daemon.port, token=daemon.token)
    job = env.attach(job_id)
    # Unbounded: only the missed heartbeats can end it.
    assert job.wait(timeout=60) is JobState.STOPPED
    assert job.cleanup_report.reason == "stopped" and job.cleanup_report.ok
    assert (tmp_path / "cleaned").read_text() == "cleaned"


def test_cancel_on_disconnect_job_lives_while_its_client_sends_heartbeats(daemon, no_thread_leak):
    env = RemoteEnvironment("alive", port=daemon.port, token=daemon.token, config={"heartbeat_timeout": 2.0})
    env.from_source(Ticks, 0.01).sink(lambda x: None)
    job = env.submit(block=False, cancel_on_disconnect=True)
    time.sleep(5.0)  # two and a half heartbeat timeouts
    assert job.state is JobState.RUNNING
    env.close()
    assert job.state is JobState.STOPPED


class ChildProcessService(BaseService):
    """Owns an OS process, as real services do; cleanup() ends it and leaves a marker."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.child: subprocess.Popen | None = None

    def setup(self) -> None:
        self.child = subprocess.Popen(["sleep", "600"])

    def pid(self) -> int:
        return self.child.pid

    def cleanup(self) -> None:
        self.child.terminate()
        self.child.wait(5)
        Path(self.marker).write_text("cleaned")


def submit_unbounded(daemon, name: str, marker: Path, **submit) -> tuple[RemoteEnvironment, object]:
    env = RemoteEnvironment(name, port=daemon.port, token=daemon.token, config={"forward_output": False})
    env.register_service("child", ChildProcessService, str(marker))
    env.from_source(Ticks, 0.01).sink(lambda x: None)
    job = env.submit(block=False, **submit)
    deadline = time.monotonic() + 30
    while job.status().service("child").state.value != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return env, job


def wait_in_thread(job) -> tuple[threading.Thread, list]:
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(job.wait())
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_daemon_killed_mid_job_gives_clients_a_clear_error_not_a_hang(tmp_path):
    daemon = start_daemon()
    orphans: list[int] = []
    try:
        env, job = submit_unbounded(daemon, "doomed", tmp_path / "cleaned", autostop=True)
        orphans = _service_children(daemon.pid)  # SIGKILL leaves them behind: we end them below
        waiter, outcome = wait_in_thread(job)
        time.sleep(0.3)  # the waiter is inside a long-poll
        daemon.kill()
        waiter.join(30)
        assert not waiter.is_alive(), "wait() hung after the daemon died"
        err = outcome[0]
        assert isinstance(err, JobManagerConnectionError) and isinstance(err, ConnectionError)
        assert daemon.address in str(err)
        with pytest.raises(ConnectionError, match=daemon.address):
            job.status()
        with pytest.raises(ConnectionError, match=daemon.address):
            job.stop()
    finally:
        daemon.kill()
        for pid in orphans:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_sigterm_stops_every_job_cleans_every_service_and_exits(tmp_path):
    daemon = start_daemon()
    env1, streaming = submit_unbounded(daemon, "streaming", tmp_path / "a", autostop=True)
    env2, idle = submit_unbounded(daemon, "no-autostop", tmp_path / "b")
    service_pids = _service_children(daemon.pid)
    assert len(service_pids) == 2
    waiter, outcome = wait_in_thread(streaming)
    time.sleep(0.3)

    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(5) == 0  # the contract: out within 5 s (jupyter_client's SIGKILL point)
    assert daemon.stop() == 0  # already gone: this only reaps its pipe
    assert (tmp_path / "a").read_text() == "cleaned" and (tmp_path / "b").read_text() == "cleaned"
    assert not psutil.pid_exists(daemon.pid)  # reaped by wait(): nothing of it is left
    assert not [p for p in service_pids if psutil.pid_exists(p)], "a service's process survived"
    waiter.join(30)
    assert not waiter.is_alive()
    # The waiter got the final state, or (if the daemon was gone first) a clear error.
    assert outcome[0] is JobState.STOPPED or isinstance(outcome[0], ConnectionError), outcome
    for env in (env1, env2):
        env.job.close()


def _service_children(daemon_pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(daemon_pid).children() if p.name() == "sleep"]


def test_sigint_shuts_down_like_sigterm(tmp_path):
    daemon = start_daemon()
    env, job = submit_unbounded(daemon, "interrupted", tmp_path / "c", autostop=True)
    service_pids = _service_children(daemon.pid)
    daemon.process.send_signal(signal.SIGINT)  # Ctrl-C in the daemon's terminal
    assert daemon.process.wait(5) == 0 and daemon.stop() == 0
    assert (tmp_path / "c").read_text() == "cleaned"
    assert not [p for p in service_pids if psutil.pid_exists(p)]
    env.job.close()
