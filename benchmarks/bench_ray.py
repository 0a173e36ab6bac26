"""Ray backend speed, measured in one run against raw Ray actor calls.

    python benchmarks/bench_ray.py [--records 200000] [--repeat 2] [--json]

Prints `name=value` lines (or one JSON object):
- pipeline_records_per_s: a source actor pushing small records to a sink actor through
  the Ray backend (chaining off, so the two stages are two actors), timed from the sink's
  first record to its last (actor start-up excluded, as for the raw pair below);
- raw_records_per_s: two bare actors passing batches of the same size with the same
  number of calls in flight, timed from the consumer's first record to its last; the
  consumer hands each record to the same kind of per-record sink object the pipeline's sink
  is (like for like: the user's work per record is on both sides, so the ratio measures
  what the framework adds);
- ratio_to_raw: the first over the second;
- raw_counting_records_per_s, ratio_to_raw_counting: the same with a consumer that only adds
  up batch lengths and calls nothing per record (the transport alone; the pipeline's
  per-record sink call then counts against it);
- cleanup_latency_ms: from the sink's last record until `wait()` returned, that is until
  every task actor and the job's service actor were cleaned, killed and seen dead;
- service_calls_per_s, service_call_ms: a map actor calling `self.call_service["acc"].add(x)`
  on a service actor once per record (each call a Ray actor round trip), measured in the map.
Targets: >= 100,000 records/s, ratio >= 0.5, cleanup latency < 500 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import deque

from figures import print_figures

BATCH = 1024  # operators.MAX_BATCH: what a fast source's batches grow to


def pinned(node: str | None) -> dict:
    """`.options()` / `ray_remote_args` that put an actor on `node` (None: Ray's choice)."""
    if node is None:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def raw_rate(ray, n: int, batch: int, inflight: int, per_record: bool = True,
             nodes: tuple[str | None, str | None] = (None, None)) -> float:
    """Records/s of a producer actor pushing batches to a consumer actor. With `per_record`,
    the consumer calls a sink object once per record, as the pipeline's sink actor does.
    `nodes`: where the producer and the consumer run (None: where Ray puts them)."""

    class Tally:
        """The pipeline's `Counter` sink without the framework: a plain object (Ray wraps an
        actor's own methods, which would make `self.method(x)` per record cost several times more)."""

        def __init__(self) -> None:
            self.count, self.first = 0, 0.0

        def execute(self, data: int) -> None:
            if not self.count:
                self.first = time.time()
            self.count += 1

    @ray.remote
    class Consumer:
        def __init__(self) -> None:
            self.count = 0
            self.first = self.last = 0.0
            self.sink = Tally()

        def push(self, items: list) -> None:
            if not self.first:
                self.first = time.time()
            if per_record:
                execute = self.sink.execute
                for x in items:
                    execute(x)
            else:
                self.count += len(items)
            self.last = time.time()

        def result(self) -> tuple[int, float, float]:
            return self.count + self.sink.count, self.first, self.last

    @ray.remote
    class Producer:
        def run(self, consumer, n: int, batch: int, inflight: int) -> None:
            pending: deque = deque()
            for lo in range(0, n, batch):
                if len(pending) >= inflight:
                    ray.get(pending.popleft())
                pending.append(consumer.push.remote(list(range(lo, min(n, lo + batch)))))
            ray.get(list(pending))

    consumer = Consumer.options(**pinned(nodes[1])).remote()
    producer = Producer.options(**pinned(nodes[0])).remote()
    ray.get([consumer.result.remote(), producer.__ray_ready__.remote()])
    ray.get(producer.run.remote(consumer, n, batch, inflight))
    count, first, last = ray.get(consumer.result.remote())
    for actor in (consumer, producer):
        ray.kill(actor, no_restart=True)
    assert count == n, (count, n)
    return n / (last - first)


def pipeline_run(n: int, nodes: tuple[str | None, str | None] = (None, None)) -> tuple[float, float]:
    """(records/s, last record -> cleaned and killed, in s) for one Ray-backend job.
    `nodes`: where the source and the sink actor run (None: where Ray puts them)."""
    from sage_jupyter import BaseService, LocalEnvironment, SinkFunction
    from sage_jupyter.runtime.dispatcher import Dispatcher
    from sage_jupyter.runtime.graph import ServiceSpec
    from sage_jupyter.runtime.plan import build_plan

    class Counter(SinkFunction):
        """Counts per record, as the raw consumer's `Tally` does; the clock is read at the
        first record and when the end marker closes it (right after the last batch), not per
        record: that read alone costs about a fifth of the raw consumer's time per record."""

        def __init__(self) -> None:
            super().__init__()
            self.count, self.first = 0, 0.0

        def execute(self, data: int) -> None:
            if not self.count:
                self.first = time.time()
            self.count += 1

        def close(self) -> None:
            print(f"count={self.count} first={self.first!r} last={time.time()!r}")

    class Registry(BaseService):
        def cleanup(self) -> None:
            self.closed = True

    env = LocalEnvironment("bench_ray", backend="ray")
    env.from_batch(range(n), ray_remote_args=pinned(nodes[0]) or None).sink(
        Counter, ray_remote_args=pinned(nodes[1]) or None)
    lines: list[str] = []
    services = [ServiceSpec("registry", Registry, (), {}, True)]
    job = Dispatcher("bench_ray", env._graph, services, backend="ray", autostop=True,
                     output=lambda stream, text: lines.append(text))
    job.plan = build_plan(env._graph, chaining=False)  # two stages, two actors
    job.start()
    job.wait()
    done = time.time()
    fields = dict(kv.split("=") for line in "".join(lines).split() for kv in [line] if "=" in kv)
    assert int(fields["count"]) == n, fields
    assert job.cleanup_report.ok and job.cleanup_report["registry"].killed, job.cleanup_report
    first, last = float(fields["first"]), float(fields["last"])
    return n / (last - first), done - last


def service_call_run(n: int) -> float:
    """Calls/s of a map actor calling a service actor once per record, timed in the map."""
    from sage_jupyter import BaseService, LocalEnvironment, MapFunction
    from sage_jupyter.runtime.dispatcher import Dispatcher
    from sage_jupyter.runtime.graph import ServiceSpec

    class Acc(BaseService):
        def __init__(self) -> None:
            super().__init__()
            self.total = 0

        def add(self, x: int) -> int:
            self.total += x
            return x

    class AddViaService(MapFunction):
        def __init__(self) -> None:
            super().__init__()
            self.count, self.first, self.last = 0, 0.0, 0.0

        def execute(self, data: int) -> int:
            if self.count == 1:  # the first call also finds the actor: time from the second on
                self.first = time.perf_counter()
            out = self.call_service["acc"].add(data)
            self.count += 1
            self.last = time.perf_counter()
            return out

        def close(self) -> None:
            print(f"calls_per_s={(self.count - 2) / (self.last - self.first)!r}")

    env = LocalEnvironment("bench_ray_calls", backend="ray")
    env.from_batch(range(n)).map(AddViaService).sink(lambda x: None)
    lines: list[str] = []
    job = Dispatcher("bench_ray_calls", env._graph, [ServiceSpec("acc", Acc, (), {}, True)], backend="ray",
                     autostop=True, output=lambda stream, text: lines.append(text))
    job.start()
    job.wait()
    assert job.snapshot().service("acc").calls == n and job.cleanup_report.ok, job.cleanup_report
    fields = dict(kv.split("=") for kv in "".join(lines).split() if "=" in kv)
    return float(fields["calls_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument("--calls", type=int, default=3000, help="records of the service-call run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="sgb", dir="/tmp"))
    import ray

    from sage_jupyter.runtime.ray.links import INFLIGHT_PER_LINK
    from sage_jupyter.runtime.ray.cluster import ensure_ray

    if not ray.is_initialized() and "RAY_ADDRESS" not in os.environ:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
                 log_to_driver=False, configure_logging=False)
    ensure_ray()
    raw, counting, rates, latencies, calls = [], [], [], [], []
    for _ in range(args.repeat):
        raw.append(raw_rate(ray, args.records, BATCH, INFLIGHT_PER_LINK))
        counting.append(raw_rate(ray, args.records, BATCH, INFLIGHT_PER_LINK, per_record=False))
        rate, latency = pipeline_run(args.records)
        rates.append(rate)
        latencies.append(latency)
        calls.append(service_call_run(args.calls))
    figures = {
        "records": args.records,
        "pipeline_records_per_s": round(max(rates)),
        "raw_records_per_s": round(max(raw)),
        "ratio_to_raw": round(max(rates) / max(raw), 3),
        "raw_counting_records_per_s": round(max(counting)),
        "ratio_to_raw_counting": round(max(rates) / max(counting), 3),
        "cleanup_latency_ms": round(1000 * min(latencies), 1),
        "cleanup_latency_ms_worst": round(1000 * max(latencies), 1),
        "service_calls_per_s": round(max(calls)),
        "service_call_ms": round(1000 / max(calls), 3),
    }
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
