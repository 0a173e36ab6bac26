"""The Ray backend on a 2-node cluster, measured in one run.

    python benchmarks/bench_cluster.py [--records 4000] [--json]

Attaches to `RAY_ADDRESS`, else starts a local 2-node `ray.cluster_utils.Cluster` (two
raylets on this machine, 1 CPU each) and shuts it down after. Prints `name=value` lines:
- spread_speedup: a CPU-bound map (about 1 ms of pure Python per record) at parallelism=2,
  its instances on two nodes and the records split evenly by key, over the same map at
  parallelism=1; each timed from the first record the map starts to the last it ends
  (actor start-up excluded). Target >= 1.6. With it, to tell why it falls short:
  map_cpu_share_* (the map's CPU time over its wall time: below 1.0 it waited for a core,
  the machine being busy elsewhere), map_overlap_parallelism_2 (1.0: both instances busy
  from the first record to the last) and the 1-minute load when the run began.
- chain_ratio_to_raw: the 2-actor chain of bench_ray.py over two bare actors passing the
  same batches, on this cluster, the raw consumer calling a per-record sink object as the
  chain's sink actor does (best of `--repeat` runs of each, interleaved). Target >= 0.9.
  Both pairs are placed alike, producer on the head node and consumer on the other (left
  to Ray, either pair landed on one node or on two by chance, run by run).
  chain_ratio_to_raw_paired: the median over the runs of chain / raw of the same run (the
  two measured back to back see the same machine; on this shared one single runs swing).
  chain_ratio_to_raw_counting: the same over a raw consumer that only adds up batch lengths.
- cleanup_latency_ms: a job with a map spread over both nodes and a service, from the
  sink's last record until `wait()` returned, i.e. every actor on both nodes cleaned, killed
  and seen dead. Target < 500.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def spread_time(records: int, parallelism: int) -> tuple[float, float, float]:
    """(seconds from the first record the map starts to the last it ends, the CPU share its
    instances got: their CPU time over their wall time spinning, 1.0 when each had a core,
    and how much they overlapped: the mean of each instance's own first-to-last span over the
    whole span, 1.0 when all ran from the start to the end)."""
    from sage_jupyter import LocalEnvironment, MapFunction, SinkFunction

    class Spin(MapFunction):
        def execute(self, n: int) -> tuple[float, float, float, int]:
            start, cpu = time.time(), time.thread_time()
            until = time.perf_counter() + SPIN_S
            while time.perf_counter() < until:  # pure Python work, holding the GIL
                pass
            return start, time.time(), time.thread_time() - cpu, self.ctx.parallel_index

    class Span(SinkFunction):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.last, self.count, self.cpu, self.wall = float("inf"), 0.0, 0, 0.0, 0.0
            self.spans: dict[int, tuple[float, float]] = {}

        def execute(self, data: tuple[float, float, float, int]) -> None:
            self.first, self.last = min(self.first, data[0]), max(self.last, data[1])
            self.cpu += data[2]
            self.wall += data[1] - data[0]
            self.count += 1
            first, last = self.spans.get(data[3], (data[0], data[1]))
            self.spans[data[3]] = (min(first, data[0]), max(last, data[1]))

        def close(self) -> None:
            span = self.last - self.first
            overlap = sum(last - first for first, last in self.spans.values()) / len(self.spans) / span
            print(f"span={span!r} count={self.count} cpu_share={self.cpu / self.wall!r} overlap={overlap!r}")

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
    return float(fields["span"]), float(fields["cpu_share"]), float(fields["overlap"])


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


def start_cluster(attempts: int = 3):
    """Ray gives a node 30 s to register; on a busy machine that can pass: kill what the
    failed attempt started and try again."""
    import psutil
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    for attempt in range(attempts):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
            cluster.add_node(**small)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            if attempt == attempts - 1:
                raise
            for child in psutil.Process().children(recursive=True):
                if child.pid not in before:
                    child.kill()
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000, help="records of the CPU-bound map")
    # a million records: each run about a second, so one lucky or unlucky tenth of a second
    # on this shared machine does not decide the best of five
    parser.add_argument("--chain-records", type=int, default=1_000_000, help="records of the 2-actor chain")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the raw pair and of the chain; the best is kept")
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
        load = os.getloadavg()[0]
        (one, share_one, _), (two, share_two, overlap) = spread_time(args.records, 1), spread_time(args.records, 2)
        head = ray.get_runtime_context().get_node_id()
        other = next(n["NodeID"] for n in alive if n["NodeID"] != head)
        nodes = (head, other)  # producer, consumer: the same for the raw pair and the chain
        raws, countings, chains = [], [], []
        for _ in range(args.repeat):  # interleaved, so all see the same machine
            raws.append(raw_rate(ray, args.chain_records, BATCH, INFLIGHT_PER_LINK, nodes=nodes))
            countings.append(raw_rate(ray, args.chain_records, BATCH, INFLIGHT_PER_LINK, per_record=False,
                                      nodes=nodes))
            chains.append(pipeline_run(args.chain_records, nodes)[0])
        raw, counting, chain = max(raws), max(countings), max(chains)
        paired = statistics.median(c / r for c, r in zip(chains, raws, strict=True))
        latency = spread_cleanup_latency(10_000)
        figures = {
            "nodes": len(alive),
            "map_records": args.records,
            "map_s_parallelism_1": round(one, 3),
            "map_s_parallelism_2": round(two, 3),
            "spread_speedup": round(one / two, 2),
            # below 1.0: the map's instances waited for a core (the machine was busy elsewhere)
            "map_cpu_share_parallelism_1": round(share_one, 2),
            "map_cpu_share_parallelism_2": round(share_two, 2),
            "map_overlap_parallelism_2": round(overlap, 2),  # 1.0: both instances busy from start to end
            "load_1min_at_start": round(load, 2),
            "chain_records_per_s": round(chain),
            "raw_records_per_s": round(raw),
            "chain_ratio_to_raw": round(chain / raw, 3),
            "chain_ratio_to_raw_paired": round(paired, 3),
            "raw_counting_records_per_s": round(counting),
            "chain_ratio_to_raw_counting": round(chain / counting, 3),
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
