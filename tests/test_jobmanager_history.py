"""The JobManager's job history in SQLite under its state directory: a restarted daemon lists
past jobs, jobs running when it died are FAILED "jobmanager restarted", the last 1,000 kept."""

from __future__ import annotations

import time

import pytest

from sage_jupyter import JobState, JobStatus, RemoteEnvironment
from sage_jupyter.jobmanager.history import KEEP_JOBS, JobHistory, StateDirError
from sage_jupyter.jobmanager.launch import start_daemon
from sage_jupyter.jobmanager.protocol import JobOptions
from tests.pipelines import Ticks


def test_a_restarted_daemon_lists_past_jobs_and_fails_the_ones_it_was_running(tmp_path):
    state = tmp_path / "state"
    daemon = start_daemon(state_dir=state)
    try:
        env = RemoteEnvironment("finished-before", port=daemon.port, token=daemon.token,
                                config={"forward_output": False})
        env.from_batch([1, 2, 3]).sink(lambda x: None)
        done = env.submit(autostop=True)
        assert done.state is JobState.FINISHED
        running_env = RemoteEnvironment("running-at-crash", port=daemon.port, token=daemon.token,
                                        config={"forward_output": False})
        running_env.from_source(Ticks, 0.01).sink(lambda x: None)
        running = running_env.submit(autostop=True, block=False)
        assert running.state is JobState.RUNNING
        running.close()
    finally:
        daemon.kill()  # SIGKILL mid-job: no cleanup, no last write
    assert (state / "jobmanager.sqlite3").exists()

    daemon = start_daemon(state_dir=state, token=daemon.token)
    try:
        env = RemoteEnvironment("observer", port=daemon.port, token=daemon.token)
        jobs = {s.job_id: s for s in env.list_jobs()}
        assert set(jobs) == {done.job_id, running.job_id}
        finished = jobs[done.job_id]
        assert finished.state is JobState.FINISHED and finished.name == "finished-before"
        assert finished.cleanup_report is not None and finished.cleanup_report.ok
        assert finished.records_in == 3 and finished.ended_at is not None
        crashed = jobs[running.job_id]
        assert crashed.state is JobState.FAILED and crashed.ended_at is not None
        assert crashed.error is not None and crashed.error.message == "jobmanager restarted"
        # A past job reads like any other: attach, status, wait, stop.
        past = env.attach(running.job_id)
        assert past.state is JobState.FAILED and past.stop() is JobState.FAILED
        assert env.attach(done.job_id).wait(timeout=5) is JobState.FINISHED
        # its stages are known, its records went with the old process
        assert env.attach(done.job_id).peek() == {"source:list": [], "sink:lambda": []}
    finally:
        assert daemon.stop() == 0
    assert (state / "jobmanager.sqlite3").exists()  # a state dir it was given is the caller's to keep


def snapshot(i: int, state: JobState = JobState.FINISHED) -> JobStatus:
    now = time.time()
    return JobStatus(job_id=f"job-{i:05d}", name=f"n{i}", state=state, backend="thread", autostop=True,
                     created_at=now, started_at=now, ended_at=now if state.terminal else None, tasks=(), services=())


def test_the_history_keeps_the_last_1000_jobs(tmp_path):
    history = JobHistory(tmp_path)
    options = JobOptions(name="n")
    for i in range(KEEP_JOBS + 5):
        history.save(snapshot(i, JobState.RUNNING), options)
        history.save(snapshot(i), options)
    assert len(history.replies()) == KEEP_JOBS
    history.close()
    reopened = JobHistory(tmp_path)
    ids = [r["status"]["job_id"] for r in reopened.replies()]
    assert len(ids) == KEEP_JOBS and ids[0] == "job-00005" and ids[-1] == f"job-{KEEP_JOBS + 4:05d}"
    assert all(r["status"]["state"] == "FINISHED" for r in reopened.replies())
    reopened.close()


def test_one_daemon_per_state_dir(tmp_path):
    first = JobHistory(tmp_path)
    try:
        with pytest.raises(StateDirError, match="in use by another sage-jobmanager"):
            JobHistory(tmp_path)
    finally:
        first.close()
    JobHistory(tmp_path).close()  # free again once the first closed
