"""`ray_remote_args` is checked where it is written, on every backend, before anything runs."""

from __future__ import annotations

import pytest

from sage_jupyter import BaseService, LocalEnvironment, RemoteEnvironment
from sage_jupyter.runtime.plan import build_plan


class Cache(BaseService):
    def get(self, key):
        return key


def test_unknown_key_is_refused_at_the_call_naming_it_and_the_accepted_ones():
    env = LocalEnvironment("keys", backend="ray")
    stream = env.from_batch(range(3))
    with pytest.raises(ValueError, match=r"map\(lambda\).*'num_cpu' is not accepted.*num_cpus.*resources"):
        stream.map(lambda x: x, ray_remote_args={"num_cpu": 1})
    with pytest.raises(ValueError, match=r"register_service\('cache'\).*'max_restarts' is not accepted"):
        env.register_service("cache", Cache, remote=True, ray_remote_args={"max_restarts": 3})
    with pytest.raises(ValueError, match=r"from_source.*'name' is not accepted"):
        env.from_source(lambda: 1, ray_remote_args={"name": "mine"})


@pytest.mark.parametrize("args, key", [
    ({"num_cpus": "2"}, "num_cpus"), ({"num_gpus": -1}, "num_gpus"), ({"num_cpus": True}, "num_cpus"),
    ({"resources": {"gpu_box": "one"}}, "resources"), ({"resources": ["gpu_box"]}, "resources"),
    ({"scheduling_strategy": "PACK"}, "scheduling_strategy"), ({"runtime_env": "env"}, "runtime_env"),
    ({"accelerator_type": 3}, "accelerator_type"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(args, key):
    env = LocalEnvironment("types", backend="thread")
    with pytest.raises(ValueError, match=rf"ray_remote_args\[{key!r}\] must be .*accepted keys: num_cpus"):
        env.from_batch(range(3)).sink(print, ray_remote_args=args)


def test_the_thread_backend_validates_and_ignores_the_dict():
    out: list[int] = []
    env = LocalEnvironment("ignored", backend="thread")
    (env.from_batch(range(5), ray_remote_args={"num_cpus": 1})
        .map(lambda x: x * 2, parallelism=2, ray_remote_args={"resources": {"nowhere": 1}})
        .sink(out.append))
    env.submit(autostop=True)
    assert sorted(out) == [0, 2, 4, 6, 8]
    status = env.job.status()
    assert {t.node for t in status.tasks} == {None} and {t.node_label for t in status.tasks} == {None}


def test_a_thread_service_with_ray_remote_args_is_refused():
    env = LocalEnvironment("thread-svc", backend="thread")
    with pytest.raises(ValueError, match=r"register_service\('cache'.*runs on a thread.*remote=True"):
        env.register_service("cache", Cache, ray_remote_args={"num_cpus": 1})
    env.register_service("cache", Cache, remote=True, ray_remote_args={"num_cpus": 1})  # an actor: fine
    # On backend="ray" every service is an actor; remotely the backend is chosen at submit.
    LocalEnvironment("ray-svc", backend="ray").register_service("c", Cache, ray_remote_args={"num_cpus": 1})
    RemoteEnvironment("remote-svc", port=1).register_service("c", Cache, ray_remote_args={"num_cpus": 1})


def test_stages_with_different_ray_remote_args_are_not_chained():
    env = LocalEnvironment("chains", backend="ray")
    (env.from_batch(range(3)).map(abs).map(abs, ray_remote_args={"num_cpus": 1})
        .sink(print, ray_remote_args={"num_cpus": 1}))
    plan = build_plan(env._graph)
    assert [c.labels for c in plan.chains] == [["source:range", "map:abs"], ["map:abs#2", "sink:print"]]


def test_placement_timeout_is_checked():
    env = LocalEnvironment("cfg", backend="ray", config={"ray": {"placement_timeout": 0}})
    env.from_batch(range(3)).sink(print)
    with pytest.raises(ValueError, match=r"placement_timeout.*> 0"):
        env.submit(autostop=True)
    env = LocalEnvironment("cfg2", backend="ray", config={"ray": {"placement": 3}})
    env.from_batch(range(3)).sink(print)
    with pytest.raises(ValueError, match=r"unknown key.*placement.*placement_timeout"):
        env.submit(autostop=True)
