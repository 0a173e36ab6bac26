"""Headless demo: a pipeline with two services and autostop, printing what happened.

    python -m sage_jupyter.demo [--backend thread|ray] [--n 100000]
"""

from __future__ import annotations

import argparse
import time

from . import BaseService, BatchFunction, LocalEnvironment, MapFunction, SinkFunction


class Sentences(BatchFunction):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.i = n, 0

    def execute(self):
        if self.i >= self.n:
            return None  # ends the batch
        self.i += 1
        return f"record {self.i} says hello to sage"


class WordCache(BaseService):
    """A service: counts words; its cleanup reports the total."""

    def setup(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, words: list[str]) -> int:
        for w in words:
            self.counts[w] = self.counts.get(w, 0) + 1
        return len(words)

    def cleanup(self) -> None:
        print(f"  [service word_cache] cleanup: {sum(self.counts.values())} words, {len(self.counts)} distinct")


class Tokenize(MapFunction):
    def execute(self, data: str) -> int:
        return self.call_service["word_cache"].add(data.split())


class Total(SinkFunction):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def execute(self, data: int) -> None:
        self.total += data

    def close(self) -> None:
        print(f"  [sink instance {self.ctx.parallel_index}] saw {self.total} words")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a SAGE pipeline with services and autostop.")
    parser.add_argument("--backend", choices=["thread", "ray"], default="thread")
    parser.add_argument("--n", type=int, default=100_000,
                        help="records to send (each one calls the service: on Ray that is an actor call)")
    args = parser.parse_args()

    if args.backend == "ray":  # start (or attach to) Ray first, so the timing below is the job's
        from .runtime.ray.cluster import ensure_ray

        t0 = time.perf_counter()
        ensure_ray()
        print(f"Ray ready in {time.perf_counter() - t0:.1f} s")

    env = LocalEnvironment("demo", backend=args.backend)
    env.register_service("word_cache", WordCache)
    env.from_batch(Sentences, args.n).map(Tokenize, parallelism=2).sink(Total)
    print(f"submitting {args.n} records on the {args.backend} backend, autostop=True ...")
    t0 = time.perf_counter()
    job = env.submit(autostop=True)  # blocks until finished AND services cleaned
    took = time.perf_counter() - t0
    status = job.status()
    print(f"job {status.name!r}: {status.state.value} in {took * 1e3:.0f} ms "
          f"({args.n / took:,.0f} records/s)")
    for task in status.tasks:
        print(f"  task {task.name:<28} {task.state.value:<9} in={task.records_in:<8} out={task.records_out}")
    for svc in status.services:
        print(f"  service {svc.name:<15} kind={svc.kind:<7} state={svc.state.value:<8} calls={svc.calls}")
    report = job.cleanup_report
    print(f"cleanup report ({report.reason}, {report.duration_s * 1e3:.1f} ms): "
          + ", ".join(f"{s.name}: {s.describe()}" for s in report.services))


if __name__ == "__main__":
    main()
