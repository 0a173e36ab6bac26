"""The Ray backend on a 2-node cluster, measured in one run.

    python benchmarks/bench_cluster.py [--records 4000] [--json]

Attaches to `RAY_ADDRESS`, else starts a local 2-node `ray.cluster_utils.Cluster` (two
raylets on this machine, 1 CPU each) and shuts it down after. Prints `name=value` lines:
- spread_speedup: a CPU-bound map (about 1 ms of pure Python per record) at parallelism=2,
  its instances on two nodes and the records split evenly by key, over the same map at
  parallelism=1; each timed from the first record the map starts to the last it ends
  (actor start-up excluded). Target >= 1.6.
- chain_ratio_to_raw: the 2-actor chain of bench_ray.py over two bare actors passing the
  same batches, on this cluster. Target >= 0.9.
- cleanup_latency_ms: a job with a map spread over both nodes and a service, from the
  sink's last record until `wait()` returned, i.e. every actor on both nodes cleaned, killed
  and seen dead. Target < 500.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ray import BATCH, pipeline_run, raw_rate
from figures import print_figures

SPIN_S = 0.001


def _job_lines(env) -> list[str]:
    lines: list[str] = []
    env._output = lambda stream, text: lines.append(text)
    return lines


def spread_time(records: int, parallelism: int) -> float:
    """Seconds from the first record the map starts to the last it ends."""
    from sage_jupyter import LocalEnvironment, MapFunction, SinkFunction

    class Spin(MapFunction):
        def execute(self, n: int) -> tuple[float, float]:
            start = time.time()
            until = time.perf_counter() + SPIN_S
            while time.perf_counter() < until:  # pure Python work, holding the GIL
                pass
            return start, time.time()

    class Span(SinkFunction):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.last, self.count = float("inf"), 0.0, 0

        def execute(self, data: tuple[float, float]) -> None:
            self.first, self.last = min(self.first, data[0]), max(self.last, data[1])
            self.count += 1

        def close(self) -> None:
            print(f"span={self.last - self.first!r} count={self.count}")

    env = LocalEnvironment(f"spin-{parallelism}", backend="ray")
    lines = _job_lines(env)
    # keyby on x % 2 gives each of two instances exactly half the records (rebalancing whole
    # batches of growing size would not).
    env.from_batch(range(records)).keyby(lambda x: x % 2).map(Spin, parallelism=parallelism).sink(Span)
    job = env.submit(autostop=True)
    maps = [t for t in job.status().tasks if t.stage == "map:Spin"]
    assert len({t.node for t in maps}) == parallelism, maps  # each instance on its own node
    assert len({t.records_in for t in maps}) == 1, maps  # records shared evenly
    fields = dict(kv.split("=") for kv in "".join(lines).split() if "=" in kv)
    assert int(fields["count"]) == records, fields
    return float(fields["span"])


def spread_cleanup_latency(records: int) -> float:
    """Seconds from the sink's last record until every actor of the job was seen dead."""
    from sage_jupyter import BaseService, LocalEnvironment, SinkFunction

    class Registry(BaseService):
        def cleanup(self) -> None:
            self.closed = True

    class Last(SinkFunction):
        def __init__(self) -> None:
            super().__init__()
            self.last = 0.0

        def execute(self, data: int) -> None:
            self.last = time.time()

        def close(self) -> None:
            print(f"last={self.last!r}")

    env = LocalEnvironment("spread-cleanup", backend="ray")
    lines = _job_lines(env)
    env.register_service("registry", Registry)
    env.from_batch(range(records)).map(abs, parallelism=2).sink(Last)
    job = env.submit(autostop=True)
    done = time.time()
    assert job.cleanup_report.ok and job.cleanup_report["registry"].killed, job.cleanup_report
    assert len({t.node for t in job.status().tasks}) == 2
    fields = dict(kv.split("=") for kv in "".join(lines).split() if "=" in kv)
    return done - float(fields["last"])


def start_cluster():
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    cluster.add_node(**small)
    cluster.wait_for_nodes()
    return cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000, help="records of the CPU-bound map")
    parser.add_argument("--chain-records", type=int, default=200_000, help="records of the 2-actor chain")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import ray

    from sage_jupyter.runtime.ray.cluster import ensure_ray
    from sage_jupyter.runtime.ray.links import INFLIGHT_PER_LINK

    cluster = None
    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="sgc"))
        cluster = start_cluster()
        os.environ["RAY_ADDRESS"] = cluster.address
    try:
        ensure_ray()
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) >= 2, f"need a cluster of two nodes or more, found {len(alive)}"
        spread_time(200, 2)  # warm up: imports and code shipping in fresh workers
        one, two = spread_time(args.records, 1), spread_time(args.records, 2)
        raw = raw_rate(ray, args.chain_records, BATCH, INFLIGHT_PER_LINK)
        chain, _ = pipeline_run(args.chain_records)
        latency = spread_cleanup_latency(10_000)
        figures = {
            "nodes": len(alive),
            "map_records": args.records,
            "map_s_parallelism_1": round(one, 3),
            "map_s_parallelism_2": round(two, 3),
            "spread_speedup": round(one / two, 2),
            "chain_records_per_s": round(chain),
            "raw_records_per_s": round(raw),
            "chain_ratio_to_raw": round(chain / raw, 3),
            "cleanup_latency_ms": round(1000 * latency, 1),
        }
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
