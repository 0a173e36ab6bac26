"""The Ray backend on a real 2-node cluster (`ray_cluster`): placement over nodes, pinning by
resources, unplaceable requests, node loss, the JobManager attached to the cluster, and the
example notebooks run against it."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import ray
from cluster_pipelines import AskLocator, Locator, Pace, Where
from ray_pipelines import FileSink, live_actors, read_sinks, wait_for

from sage_jupyter import JobState, LocalEnvironment, PipelineError, RemoteEnvironment
from sage_jupyter.jupyter import templates

pytestmark = [pytest.mark.cluster, pytest.mark.ray]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def node_ids(names: tuple[str, ...] = ("head_node", "worker_node")) -> dict[str, str]:
    """Custom resource -> node id, for the cluster's alive nodes."""
    out = {}
    for n in ray.nodes():
        if n["Alive"]:
            for name in names:
                if name in n["Resources"]:
                    out[name] = n["NodeID"]
    return out


def test_a_parallel_map_runs_on_both_nodes(ray_cluster, tmp_path, no_thread_leak):
    env = LocalEnvironment("spread", backend="ray")
    env.from_batch(range(400)).map(Where, parallelism=2).sink(FileSink, str(tmp_path))
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    records = read_sinks(tmp_path)[0]
    assert sorted(r[0] for r in records) == list(range(400))
    nodes = node_ids()
    seen = {(index, node) for _, node, index in records}
    assert {node for _, node in seen} == set(nodes.values())  # the records say both nodes mapped them
    maps = {t.index: t for t in job.status().tasks if t.stage == "map:Where"}
    assert {(i, t.node) for i, t in maps.items()} == seen  # and the statuses agree, after the end
    for t in maps.values():  # two nodes on one machine share an address: the short id tells them apart
        assert t.node_label == f"{ray.util.get_node_ip_address()} ({t.node[:8]})"
    # every view shows each task's node: the widget's task table, %sage_status, the sidebar's row
    status = job.status()
    labels = {t.node_label for t in maps.values()}
    assert all(label in templates.tasks_html(status) for label in labels)
    text = templates.job_text(status)
    assert all(f"task {t.name}: FINISHED" in text and f"on {t.node_label}" in text for t in maps.values())
    assert labels <= set(templates.job_nodes(status))  # the sidebar entry's "nodes"
    assert live_actors(job) == []


def test_resources_pin_a_stage_and_a_service(ray_cluster, tmp_path, no_thread_leak):
    nodes = node_ids()
    env = LocalEnvironment("pinned", backend="ray")
    env.register_service("locator", Locator, ray_remote_args={"resources": {"head_node": 0.1}})
    (env.from_batch(range(50))
        .map(Where, parallelism=2, ray_remote_args={"resources": {"worker_node": 0.1}})
        .map(AskLocator).sink(FileSink, str(tmp_path)))
    job = env.submit(autostop=True)
    records = read_sinks(tmp_path)[0]
    assert len(records) == 50
    assert {where for (_, where, _), _ in records} == {nodes["worker_node"]}
    assert {service_node for _, service_node in records} == {nodes["head_node"]}
    status = job.status()
    assert {t.node for t in status.tasks if t.stage == "map:Where"} == {nodes["worker_node"]}
    assert status.service("locator").node == nodes["head_node"]
    assert job.cleanup_report["locator"].killed is True and live_actors(job) == []


def test_a_stage_no_node_can_host_fails_naming_it_and_leaves_nothing(ray_cluster, tmp_path, no_thread_leak):
    env = LocalEnvironment("unplaceable", backend="ray", config={"ray": {"placement_timeout": 3}})
    (env.from_batch(range(10)).map(Where, parallelism=2, ray_remote_args={"resources": {"gpu_box": 1}})
        .sink(FileSink, str(tmp_path)))
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    message = str(info.value)
    assert "map:Where" in message and "gpu_box" in message and "placement_timeout=3 s" in message
    assert env.job.state is JobState.FAILED and live_actors(env.job) == []
    assert env.job.cleanup_report.tasks_left_running == ()


def test_a_service_no_node_can_host_fails_naming_it_and_leaves_nothing(ray_cluster, tmp_path, no_thread_leak):
    env = LocalEnvironment("unplaceable-svc", backend="ray", config={"ray": {"placement_timeout": 3}})
    env.register_service("locator", Locator, ray_remote_args={"num_cpus": 64})
    env.from_batch(range(10)).map(AskLocator).sink(FileSink, str(tmp_path))
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    assert "service 'locator'" in str(info.value) and "num_cpus=64" in str(info.value)
    assert read_sinks(tmp_path) == {} and live_actors(env.job) == []


def test_the_jobmanager_attached_to_the_cluster_spreads_a_job_and_cleans_it(ray_cluster, tmp_path):
    from sage_jupyter.jobmanager.launch import start_daemon
    from sage_jupyter.runtime.ray.orphans import sage_actors

    env_vars = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    daemon = start_daemon(args=["--ray-address", ray_cluster.address], env=env_vars, startup_timeout=90)
    prefix = f"sage:{socket.gethostname().replace(':', '_')}:{daemon.pid}:"
    try:
        env = RemoteEnvironment("remote-spread", port=daemon.port, token=daemon.token,
                                config={"forward_output": False})
        env.register_service("locator", Locator)
        env.from_batch(range(200)).map(Where, parallelism=2).map(AskLocator).sink(lambda x: None)
        job = env.submit(autostop=True, backend="ray")
        assert job.state is JobState.FINISHED
        status = job.status()
        assert {t.node for t in status.tasks if t.stage == "map:Where"} == set(node_ids().values())
        assert status.service("locator").node in node_ids().values()  # the protocol carries the field
        assert job.cleanup_report["locator"].killed is True
        assert sage_actors(prefix) == []
    finally:
        assert daemon.stop() == 0


@pytest.mark.kernel
def test_the_ray_notebook_runs_unchanged_against_the_cluster(ray_cluster):
    from test_notebooks import execute

    execute("03_ray.ipynb", {"RAY_ADDRESS": ray_cluster.address})


@pytest.mark.kernel
def test_the_cluster_notebook(ray_cluster):
    from test_notebooks import execute

    execute("07_cluster.ipynb", {"RAY_ADDRESS": ray_cluster.address})


def test_losing_a_node_fails_the_job_naming_it_and_kills_the_survivors(ray_cluster, tmp_path, no_thread_leak):
    doomed = ray_cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20, resources={"doomed_node": 1})
    ray_cluster.wait_for_nodes()
    doomed_id = node_ids(("doomed_node",))["doomed_node"]
    env = LocalEnvironment("node-loss", backend="ray")
    on_head = {"resources": {"head_node": 0.01}}  # so only a map instance lives on the doomed node
    (env.from_source(Pace, ray_remote_args=on_head).map(Where, parallelism=3)
        .sink(FileSink, str(tmp_path), ray_remote_args=on_head))
    job = env.submit(autostop=True, block=False)
    wait_for(lambda: job.status().records_in > 100, timeout=60, what="records to flow over three nodes")
    maps = {t.node for t in job.status().tasks if t.stage == "map:Where"}
    assert doomed_id in maps and len(maps) == 3  # one instance on each node
    ray_cluster.remove_node(doomed)
    with pytest.raises(PipelineError) as info:
        job.wait(timeout=90)
    message = info.value.summary
    assert f"its node {doomed_id} ({ray.util.get_node_ip_address()}) died" in message
    assert info.value.stage.startswith("task 'map:Where[")
    assert job.state is JobState.FAILED and live_actors(job) == []
    assert job.cleanup_report.tasks_left_running == ()
