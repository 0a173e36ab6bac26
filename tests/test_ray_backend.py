"""The Ray backend and Ray services: delivery, services in actors, output, failures,
and no actor left alive in Ray's actor table however a job ends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import ray

from ray_pipelines import (BrokenSetup, FileSink, Journal, SlowSink, Stuck, job_actors, journal,
                           live_actors, read_sinks, sink_pids, wait_for)
from tests.pipelines import Ticks
import sage_jupyter
from sage_jupyter import JobState, LocalEnvironment, MapFunction, PipelineError
from sage_jupyter.runtime.ray import cluster as ray_cluster, orphans
from sage_jupyter.runtime.policy import CleanupPolicy

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


class UseJournal(MapFunction):
    """Calls the journal service both ways, and reports what a failing call raised."""

    def execute(self, data):
        if data == 0:
            try:
                self.call_service["journal"].fail()
            except KeyError as exc:
                return f"{type(exc).__name__}: {exc}"
        return self.call_service["journal"].add(data, y=10)


class Loud(MapFunction):
    def execute(self, data):
        print(f"stage saw {data}")
        if data == 2:
            print(self.call_service["journal"].shout("hello"))
        return data


def test_parallel_keyed_pipeline_delivers_exactly_once(tmp_path, no_thread_leak):
    env = LocalEnvironment("parallel", backend="ray")
    (env.from_batch(range(6000))
        .map(lambda x: x + 1, parallelism=2)
        .filter(lambda x: x % 3 != 0, parallelism=2)
        .keyby(lambda x: x % 7)
        .sink(FileSink, str(tmp_path), parallelism=2))
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    per_instance = read_sinks(tmp_path)
    got = sorted(r for rs in per_instance.values() for r in rs)
    assert got == [x for x in range(1, 6001) if x % 3 != 0]
    for key in range(7):
        assert sum(1 for rs in per_instance.values() if any(r % 7 == key for r in rs)) == 1
    status = job.status()
    assert status.records_in == len(got) and status.records_out == 6000
    workers = {t.worker for t in status.tasks}
    assert len(workers) == 5 and "thread" not in workers  # source, 2 map>filter, 2 sinks
    assert os.getpid() not in sink_pids(tmp_path)
    assert len(job_actors(job)) == 5 and live_actors(job) == []


def test_thread_backend_calls_a_remote_service(tmp_path, no_thread_leak):
    log = tmp_path / "journal.jsonl"
    out: list = []
    env = LocalEnvironment("remote-svc", backend="thread")
    env.register_service("journal", Journal, str(log), remote=True)
    env.from_batch(range(20)).map(UseJournal).sink(lambda x: out.append(x))
    job = env.submit(autostop=True)
    assert out[0] == "KeyError: \"[service 'journal'.fail()] no such key\""
    assert out[1:] == [x + 10 for x in range(1, 20)]
    entry = job.cleanup_report["journal"]
    assert entry.kind == "ray" and entry.killed is True and entry.ok
    events = journal(log)
    assert [e["event"] for e in events] == ["stop", "cleanup"]
    assert {e["pid"] for e in events} != {os.getpid()}  # the hooks ran inside the actor
    assert events[-1]["calls"] == 19
    assert live_actors(job) == [] and len(job_actors(job)) == 1
    assert ray.is_initialized()


def test_ray_tasks_call_service_actors(tmp_path, no_thread_leak):
    log = tmp_path / "journal.jsonl"
    env = LocalEnvironment("ray-svc", backend="ray")
    env.register_service("journal", Journal, str(log))  # remote by default on backend="ray"
    env.from_batch(range(10)).map(UseJournal).sink(FileSink, str(tmp_path))
    job = env.submit(autostop=True)
    records = read_sinks(tmp_path)[0]
    assert records[0] == "KeyError: \"[service 'journal'.fail()] no such key\""
    assert records[1:] == [x + 10 for x in range(1, 10)]
    assert job.status().service("journal").calls >= 9
    assert journal(log)[-1] == {"event": "cleanup", "pid": journal(log)[0]["pid"], "calls": 9}
    assert live_actors(job) == []


def test_print_in_ray_stage_and_service_reaches_the_job_output(tmp_path, no_thread_leak):
    texts: list[tuple[str, str]] = []
    lock = threading.Lock()

    def output(stream: str, text: str) -> None:
        with lock:
            texts.append((stream, text))

    env = LocalEnvironment("loud", backend="ray")
    env._output = output
    env.register_service("journal", Journal, str(tmp_path / "j.jsonl"))
    env.from_batch(range(2000)).map(Loud).sink(FileSink, str(tmp_path))
    env.submit(autostop=True)
    stdout = "".join(t for s, t in texts if s == "stdout")
    seen = [line for line in stdout.splitlines() if line.startswith("stage saw")]
    assert seen == [f"stage saw {i}" for i in range(2000)]  # all of it, in order
    assert "service says hello\nHELLO\n" in stdout  # the service's print came back with the call


def test_actor_killed_from_outside_fails_the_job(tmp_path, no_thread_leak):
    env = LocalEnvironment("victim", backend="ray")
    env.register_service("journal", Journal, str(tmp_path / "j.jsonl"))
    env.from_source(Ticks, 0.002).sink(FileSink, str(tmp_path))
    job = env.submit(autostop=True, block=False)
    wait_for(lambda: job.status().records_out > 10, what="records to flow")
    task_actor = next(a for a in live_actors(job) if ":task:" in a["name"])
    ray.kill(ray.get_actor(task_actor["name"], namespace=orphans.NAMESPACE), no_restart=True)
    with pytest.raises(PipelineError) as info:
        job.wait(timeout=60)
    assert "died" in str(info.value) and "source:Ticks>sink:FileSink[0]" in info.value.stage
    assert job.state is JobState.FAILED
    assert job.cleanup_report["journal"].killed is True
    assert [e["event"] for e in journal(tmp_path / "j.jsonl")] == ["stop", "cleanup"]
    assert live_actors(job) == []


def test_hanging_service_cleanup_times_out_and_the_actor_is_killed(tmp_path, no_thread_leak):
    log = tmp_path / "journal.jsonl"
    env = LocalEnvironment("hang", backend="thread")
    env.register_service("journal", Journal, str(log), hang_in_cleanup=60.0, remote=True)
    env.from_batch(range(3)).sink(lambda x: None)
    job = env.submit(autostop=True, cleanup=CleanupPolicy(graceful_timeout=0.5, kill_timeout=2.0))
    entry = job.cleanup_report["journal"]
    assert entry.stop.outcome == "ok"
    assert entry.cleanup.outcome == "timeout" and "0.5" in entry.cleanup.error
    assert entry.killed is True and not job.cleanup_report.ok
    assert [e["event"] for e in journal(log)] == ["stop"]  # cleanup never finished
    assert live_actors(job) == []


def test_unpicklable_code_is_rejected_at_submit_naming_it():
    lock = threading.Lock()
    env = LocalEnvironment("unpicklable", backend="ray")
    env.from_batch(range(3)).map(lambda x: (lock, x)[1]).sink(print)
    with pytest.raises(TypeError, match=r"stage 'map:lambda'.*cannot be sent to Ray.*lock"):
        env.submit(autostop=True)
    assert env.job is None

    env = LocalEnvironment("unpicklable-svc", backend="thread")
    env.register_service("locked", Journal, lock, remote=True)
    env.from_batch(range(3)).sink(print)
    with pytest.raises(TypeError, match=r"service 'locked' \(Journal\).*cannot be sent to a Ray actor"):
        env.submit(autostop=True)


def test_attaches_to_a_user_initialised_ray_and_leaves_it_running():
    address = ray.get_runtime_context().gcs_address
    assert ray_cluster.ensure_ray() is ray
    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == address
    assert ray_cluster.started_ray() is False


def test_service_setup_failure_fails_the_job_and_kills_its_actor(tmp_path, no_thread_leak):
    env = LocalEnvironment("broken", backend="ray")
    env.register_service("db", BrokenSetup)
    env.from_batch(range(3)).sink(FileSink, str(tmp_path))
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    assert "service 'db' setup" in info.value.stage
    assert "ConnectionError" in str(info.value) and "database unreachable" in info.value.traceback
    assert env.job.cleanup_report["db"].killed is True
    assert env.job.status().service("db").state.value == "failed"  # never "cleaned"
    assert not env.job.cleanup_report["db"].cleaned
    package = os.path.dirname(sage_jupyter.__file__)
    assert f'File "{package}' not in info.value.traceback  # the user's frames only, the actor's too
    assert read_sinks(tmp_path) == {}  # no task ran
    assert live_actors(env.job) == [] and len(job_actors(env.job)) == 1


def test_stop_kills_a_stage_stuck_in_user_code(tmp_path, no_thread_leak):
    env = LocalEnvironment("stuck", backend="ray")
    env.from_source(Ticks, 0.002).map(Stuck).sink(FileSink, str(tmp_path))
    policy = CleanupPolicy(graceful_timeout=0.3, kill_timeout=0.5)
    job = env.submit(autostop=True, block=False, cleanup=policy)
    wait_for(lambda: job.status().records_out > 0 and len(job_actors(job)) == 1, what="the stage to start")
    assert job.stop(timeout=60) is JobState.STOPPED
    assert job.cleanup_report.tasks_left_running == ()
    assert live_actors(job) == []


@ray.remote(num_cpus=0)
class Idle:
    def ping(self) -> int:
        return os.getpid()


def test_orphans_of_dead_processes_are_found_and_killed():
    host = orphans.actor_prefix("x").split(":")[1]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid, live_pid = int(gone.stdout), os.getppid()
    orphan = f"sage:{host}:{dead_pid}:lost-1:svc:cache"
    kept = f"sage:{host}:{live_pid}:busy-1:svc:cache"
    actors = [Idle.options(name=n, namespace=orphans.NAMESPACE).remote() for n in (orphan, kept)]
    ray.get([a.ping.remote() for a in actors])
    assert orphans.kill_orphans() == [orphan]  # its kernel is gone
    states = {a["name"]: a["state"] for a in orphans.sage_actors()}
    assert orphan not in states and states[kept] == "ALIVE"  # dead actors are not listed
    # the command line, from another process, by prefix
    cli = subprocess.run(
        [sys.executable, "-m", "sage_jupyter.runtime.ray.orphans", "--kill-orphans",
         "--prefix", f"sage:{host}:{live_pid}:", "--address", ray.get_runtime_context().gcs_address],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert f"killed {kept}" in cli.stdout
    assert orphans.wait_dead([orphan, kept], 10.0) == []
    assert kept not in {a["name"] for a in orphans.sage_actors()}


def test_a_slow_consumer_holds_the_source_back(no_thread_leak):
    from sage_jupyter.runtime.operators import MAX_BATCH
    from sage_jupyter.runtime.ray.links import INFLIGHT_PER_LINK

    total = 200_000
    env = LocalEnvironment("backpressure", backend="ray")
    env.from_batch(range(total)).keyby(lambda x: x % 2).sink(SlowSink, 5000, parallelism=2)
    policy = CleanupPolicy(graceful_timeout=0.3, kill_timeout=2.0)
    job = env.submit(autostop=True, block=False, cleanup=policy)

    def consumed() -> int:
        return job.status().records_in

    wait_for(lambda: consumed() > 5000, what="the sinks to consume")
    produced = job.status().records_out
    # Per sink: the source's calls in flight (the batch the sink runs is one of them: a push
    # returns once its batch went through), plus what the sinks consumed since their last poll.
    bound = 2 * INFLIGHT_PER_LINK * MAX_BATCH + 5000
    assert produced - consumed() <= bound < total - 5000
    assert job.stop(timeout=60) is JobState.STOPPED  # stop with records still in flight
    assert live_actors(job) == []


def test_without_autostop_task_actors_go_and_the_service_stays_until_stop(tmp_path, no_thread_leak):
    log = tmp_path / "journal.jsonl"
    env = LocalEnvironment("keep", backend="ray")
    env.register_service("journal", Journal, str(log))
    env.from_batch(range(5)).map(UseJournal).sink(FileSink, str(tmp_path))
    job = env.submit(autostop=False)
    assert job.wait(timeout=120) is JobState.RUNNING  # tasks done, services kept up
    wait_for(lambda: [a["name"].split(":")[-2] for a in live_actors(job)] == ["svc"],
             what="the task actor to go while the service stays")
    assert journal(log) == []
    assert job.stop(timeout=60) is JobState.STOPPED
    assert [e["event"] for e in journal(log)] == ["stop", "cleanup"]
    assert live_actors(job) == []
