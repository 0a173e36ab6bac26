"""Core runtime figures, each measured against its reference in the same run.

    python benchmarks/bench_core.py [--n 1000000] [--json]
    SAGE_PEER_PYTHON=/path/to/venv/bin/python python benchmarks/bench_core.py   # adds upstream SAGE

Figures: pipeline throughput as a fraction of a plain Python loop making the same calls
(target >= 0.5), autostop latency with 3 services (target median < 20 ms), service calls
per second from a map (target > 1,000,000), a map calling `self.call_service["acc"].add(x)`
per record as a fraction of a plain loop making the same calls directly (target >= 0.5),
RSS growth over 3,000,000 int records and over 300 records of 1 MB through a slow sink
(target < 150 MB each), the throughput with peek sampling on as a fraction of the same
pipeline with it switched off (target >= 0.98), and, with SAGE_PEER_PYTHON set, the same figures from upstream
SAGE (`benchmarks/peer_sage.py`, run in that interpreter).
"""

from __future__ import annotations

import argparse
import gc
import contextlib
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from sage_jupyter import (BaseService, FilterFunction, LocalEnvironment, MapFunction, SinkFunction)
from sage_jupyter.runtime import peek as peek_sampling

from figures import print_figures


class Double(MapFunction):
    def execute(self, data):
        return data * 2


class ThirdOnly(FilterFunction):
    def execute(self, data):
        return data % 3 == 0


class Count(SinkFunction):
    count = 0

    def execute(self, data):
        Count.count += 1


def plain_loop(n: int) -> float:
    m, f, s = Double(), ThirdOnly(), Count()
    Count.count = 0
    t0 = time.perf_counter()
    for x in range(n):
        y = m.execute(x)
        if f.execute(y):
            s.execute(y)
    return time.perf_counter() - t0


def pipeline(n: int, parallelism: int = 1) -> float:
    Count.count = 0
    env = LocalEnvironment("bench")
    env.from_batch(range(n)).map(Double, parallelism=parallelism).filter(ThirdOnly, parallelism=parallelism).sink(Count)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    dt = time.perf_counter() - t0
    assert Count.count == len(range(0, 2 * n, 6)), Count.count
    return dt


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """This thread, and the threads it starts, on one CPU: the first it may use (Linux). A
    figure comparing a loop on this thread with a pipeline on a task thread is like for like
    only so: on a 2-core VM the two CPUs' speeds differ by a third from one second to the next."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@one_cpu()
def throughput(n: int, runs: int = 5) -> dict:
    """Held to one CPU (see one_cpu); the parallel run's threads share it, as the GIL has
    them take turns anyway."""
    loops, chains, parallels = [], [], []
    for _ in range(runs):  # interleaved: a change of load hits all three alike
        loops.append(plain_loop(n))
        chains.append(pipeline(n))
        parallels.append(pipeline(n, 2))
    loop, chained, parallel = min(loops), min(chains), min(parallels)
    return {
        "records": n,
        "plain_loop_records_per_s": n / loop,
        "pipeline_records_per_s": n / chained,
        "pipeline_vs_loop": loop / chained,
        "pipeline_parallelism2_records_per_s": n / parallel,
        "pipeline_parallelism2_vs_loop": loop / parallel,
    }


@one_cpu()
def peek_cost(n: int, runs: int = 21) -> dict:
    """The throughput pipeline with peek sampling on, as a fraction of the same pipeline with
    sampling switched off (the runtime's internal switch), best of `runs`, interleaved so load
    changes hit both alike; chained (one task) and with parallelism 2 (channels in between).
    Wall time and this process's CPU time both: on a shared machine the CPU time is the steadier.
    Held to one CPU (see one_cpu): the threads of every run share it alike."""
    figures = {}
    for parallelism, key in ((1, "peek"), (2, "peek_parallelism2")):
        wall: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(runs):
            for sampling in (True, False):
                peek_sampling.SAMPLING = sampling
                try:
                    c0 = time.process_time()
                    wall[sampling].append(pipeline(n, parallelism))
                    cpu[sampling].append(time.process_time() - c0)
                finally:
                    peek_sampling.SAMPLING = True
        figures[f"{key}_on_records_per_s"] = n / min(wall[True])
        figures[f"{key}_off_records_per_s"] = n / min(wall[False])
        figures[f"{key}_on_vs_off"] = min(wall[False]) / min(wall[True])
        figures[f"{key}_on_vs_off_cpu"] = min(cpu[False]) / min(cpu[True])
    return figures


class Svc(BaseService):
    def ping(self, x):
        return x


def autostop_latency(runs: int = 30) -> dict:
    """Last sink record -> blocking submit returned, with 3 services cleaned."""
    samples = []
    for _ in range(runs):
        last = [0.0]

        def sink(x, last=last):
            last[0] = time.perf_counter()

        env = LocalEnvironment("latency")
        for i in range(3):
            env.register_service(f"svc{i}", Svc)
        env.from_batch(range(20)).map(lambda x: x + 1).sink(sink)
        env.submit(autostop=True)
        done = time.perf_counter()
        assert env.job.cleanup_report.ok and len(env.job.cleanup_report.services) == 3
        samples.append(done - last[0])
    return {"autostop_latency_median_ms": statistics.median(samples) * 1e3,
            "autostop_latency_max_ms": max(samples) * 1e3}


class CallsService(MapFunction):
    def execute(self, data):
        return self.call_service["svc"].ping(data)


def service_calls(n: int) -> dict:
    env = LocalEnvironment("calls")
    env.register_service("svc", Svc)
    env.from_batch(range(n)).map(CallsService).sink(lambda x: None)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    dt = time.perf_counter() - t0
    assert env.job.status().service("svc").calls == n
    return {"service_calls_per_s": n / dt}


class Acc(BaseService):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def add(self, x):
        self.total += x
        return x


class AddViaService(MapFunction):
    def execute(self, data):
        return self.call_service["acc"].add(data)


class AddDirectly(MapFunction):
    def __init__(self, acc: Acc) -> None:
        super().__init__()
        self.acc = acc

    def execute(self, data):
        return self.acc.add(data)


def ignore(x) -> None:
    pass


@one_cpu()
def service_call_path(n: int, runs: int = 9) -> dict:
    """The same map and sink, once as a plain loop calling the service object directly, once
    as a pipeline calling it through `call_service`; best of `runs`, interleaved, on one CPU.
    `service_path_vs_loop_paired` is the median of each loop/pipeline pair's own ratio: the two
    measured back to back see the same machine, while best-of pairs runs from different moments
    (this VM's speed drifts by tens of per cent between seconds)."""
    loops, pipes = [], []
    for _ in range(runs):
        direct = AddDirectly(Acc())
        t0 = time.perf_counter()
        for x in range(n):
            ignore(direct.execute(x))
        loops.append(time.perf_counter() - t0)
        env = LocalEnvironment("service_path")
        env.register_service("acc", Acc)
        env.from_batch(range(n)).map(AddViaService).sink(ignore)
        t0 = time.perf_counter()
        env.submit(autostop=True)
        pipes.append(time.perf_counter() - t0)
        assert env.job.status().service("acc").calls == n
    return {"service_path_records_per_s": n / min(pipes), "service_path_direct_loop_records_per_s": n / min(loops),
            "service_path_vs_loop": min(loops) / min(pipes),
            "service_path_vs_loop_paired": statistics.median(lp / pp for lp, pp in zip(loops, pipes, strict=True))}


class SlowSink(SinkFunction):
    def execute(self, data):
        sum(range(150))  # slower than the source, so backpressure has to hold memory flat


class SlowBigSink(SinkFunction):
    def execute(self, data):
        time.sleep(0.003)  # far slower than the source makes 1 MB records


def big_records(n: int):
    for i in range(n):
        yield bytes([i % 256]) * 2**20  # a fresh 1 MB object each


def memory_big(n: int) -> dict:
    """RSS growth while `n` records of 1 MB each queue ahead of a slow sink."""
    growth, dt = _peak_rss_growth(lambda env: env.from_batch(big_records, n).map(Same, parallelism=2)
                                  .sink(SlowBigSink))
    return {"memory_big_records": n, "memory_big_rss_growth_mb": growth, "memory_big_records_per_s": n / dt}


class Same(MapFunction):
    def execute(self, data):
        return data


def _peak_rss_growth(build) -> tuple[float, float]:
    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    env = LocalEnvironment("memory")
    build(env)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    dt = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return (peak[0] - base) / 2**20, dt


def memory(n: int) -> dict:
    """RSS growth while `n` ints queue ahead of a slow sink."""
    # parallelism 2 then 1: not chained, so records queue in channels ahead of the slow sink
    growth, dt = _peak_rss_growth(lambda env: env.from_batch(range(n)).map(Double, parallelism=2).sink(SlowSink))
    return {"memory_records": n, "memory_rss_growth_mb": growth, "memory_slow_sink_records_per_s": n / dt}


def peer() -> dict:
    python = os.environ.get("SAGE_PEER_PYTHON")
    if not python:
        return {}
    script = Path(__file__).with_name("peer_sage.py")
    out = subprocess.run([python, str(script), "--json", "--runs", "3"], capture_output=True, text=True,
                         timeout=900, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {f"peer_{k}": v for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records for the throughput run")
    parser.add_argument("--memory-n", type=int, default=3_000_000)
    parser.add_argument("--memory-big-n", type=int, default=300, help="records of 1 MB for the memory run")
    parser.add_argument("--only", default="", help="comma-separated figure groups: throughput, peek, latency, "
                        "calls, path, memory, memory_big, peer (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    groups = {
        "throughput": lambda: throughput(args.n),
        "peek": lambda: peek_cost(args.n),
        "latency": autostop_latency,
        "calls": lambda: service_calls(args.n),
        "path": lambda: service_call_path(args.n),
        "memory": lambda: memory(args.memory_n),
        "memory_big": lambda: memory_big(args.memory_big_n),
        "peer": peer,
    }
    chosen = [g for g in args.only.split(",") if g] or list(groups)
    unknown = [g for g in chosen if g not in groups]
    if unknown:
        parser.error(f"--only: unknown group(s) {', '.join(unknown)}; use {', '.join(groups)}")
    figures: dict = {}
    for group in chosen:
        figures.update(groups[group]())
    if "peer_throughput_stock_records_per_s" in figures:
        figures["vs_peer_stock"] = figures["pipeline_records_per_s"] / figures["peer_throughput_stock_records_per_s"]
        figures["vs_peer_patched"] = (figures["pipeline_records_per_s"]
                                      / figures["peer_throughput_patched_records_per_s"])
        figures["autostop_vs_peer"] = (figures["peer_autostop_latency_median_s"] * 1e3
                                       / figures["autostop_latency_median_ms"])
    print_figures(figures, args.json, short_floats=True)


if __name__ == "__main__":
    main()
