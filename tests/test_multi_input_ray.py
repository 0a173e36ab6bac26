"""Connected streams on Ray actors and through the JobManager: a comap and a keyed join in one
job (few actors), records back from the sinks' files."""

from __future__ import annotations

import pytest

from sage_jupyter import JobState, LocalEnvironment, RemoteEnvironment
from tests.connected import InnerJoin, Tag, expected_join, read_json_sinks
from tests.ray_pipelines import FileSink


def build(env, directory: str) -> None:
    """Two sources shared by a comap, a keyed join and a self-connected comap (5 tasks when chained)."""
    a = env.from_batch(range(200))
    b = env.from_batch(range(0, 300, 7))
    a.connect(b).comap(Tag).sink(FileSink, directory, "comap")
    b.connect(b).comap(Tag).sink(FileSink, directory, "self")  # one producer feeds both inputs
    a.keyby(lambda x: x % 10).connect(b.keyby(lambda x: x % 10)).join(InnerJoin).sink(FileSink, directory, "join")


def check(directory) -> None:
    comapped = read_json_sinks(directory, "comap")
    assert [x for t, x in comapped if t == "a"] == list(range(200))  # exactly once, in order per input
    assert [x for t, x in comapped if t == "b"] == list(range(0, 300, 7))
    selfed = read_json_sinks(directory, "self")
    for tag in "ab":  # each input exactly once and in order
        assert [x for t, x in selfed if t == tag] == list(range(0, 300, 7))
    joined = read_json_sinks(directory, "join")
    assert sorted(joined) == expected_join(range(200), range(0, 300, 7), lambda x: x % 10)


@pytest.mark.ray
def test_comap_and_join_on_ray_actors(ray_session, tmp_path):
    env = LocalEnvironment("ray-multi", backend="ray")
    build(env, str(tmp_path))
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    check(tmp_path)
    stages = {t.stage for t in job.status().tasks}
    assert {"comap:Tag", "join:InnerJoin"} <= stages


def test_comap_and_join_through_the_jobmanager(daemon, tmp_path):
    env = RemoteEnvironment("remote-multi", port=daemon.port, token=daemon.token)
    build(env, str(tmp_path))
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    check(tmp_path)
    assert env.platform == "remote" and env.env_uuid == job.job_id and not env.is_running
    assert (env.jobmanager_host, env.jobmanager_port) == ("127.0.0.1", daemon.port)
    env.close()
