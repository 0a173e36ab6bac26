"""Multi-input operators on threads, each measured against a plain Python loop making the same
user calls in the same run.

    python benchmarks/bench_multi_input.py [--n 1000000] [--json]

Figures: comap of two sources and keyed join of two sources, as records per second and as a
fraction of the plain loop (target >= 0.5, as for linear pipelines); and the time from submit
to FINISHED of a comap whose inputs end 10 ms and 1 s apart (no quiet-period timer: the job
ends when the later input does, so the figure is about 1 s, not 1 s plus a timer).
"""

from __future__ import annotations

import argparse
import json
import time

from sage_jupyter import BaseCoMapFunction, BaseJoinFunction, BatchFunction, LocalEnvironment, SinkFunction


class Tag(BaseCoMapFunction):
    def map0(self, data):
        return data

    def map1(self, data):
        return -data


class LastPerKey(BaseJoinFunction):
    """Pairs each record with the other side's latest record of its key."""

    def __init__(self):
        super().__init__()
        self.latest = ({}, {})

    def execute(self, payload, key, tag):
        self.latest[tag][key] = payload
        other = self.latest[1 - tag].get(key)
        return [] if other is None else [(payload, other)]


class Count(SinkFunction):
    count = 0

    def execute(self, data):
        Count.count += 1


class SlowFor(BatchFunction):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.sent = seconds, False

    def execute(self):
        if self.sent:
            return None
        time.sleep(self.seconds)
        self.sent = True
        return 1


def key(x: int) -> int:
    return x % 1000


def plain_comap(n: int) -> float:
    f, s = Tag(), Count()
    Count.count = 0
    t0 = time.perf_counter()
    for x in range(n // 2):
        s.execute(f.map0(x))
        s.execute(f.map1(x))
    return time.perf_counter() - t0


def plain_join(n: int) -> float:
    f, s = LastPerKey(), Count()
    Count.count = 0
    t0 = time.perf_counter()
    for x in range(n // 2):
        for tag in (0, 1):
            for pair in f.execute(x, key(x), tag):
                s.execute(pair)
    return time.perf_counter() - t0


def pipeline_comap(n: int) -> float:
    Count.count = 0
    env = LocalEnvironment("bench-comap")
    env.from_batch(range(n // 2)).connect(env.from_batch(range(n // 2))).comap(Tag).sink(Count)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    assert Count.count == n // 2 * 2
    return time.perf_counter() - t0


def pipeline_join(n: int) -> float:
    Count.count = 0
    env = LocalEnvironment("bench-join")
    left, right = env.from_batch(range(n // 2)).keyby(key), env.from_batch(range(n // 2)).keyby(key)
    left.connect(right).join(LastPerKey).sink(Count)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    return time.perf_counter() - t0


def uneven_end() -> float:
    env = LocalEnvironment("bench-end")
    env.from_batch(SlowFor, 0.01).connect(env.from_batch(SlowFor, 1.0)).comap(Tag).sink(Count)
    t0 = time.perf_counter()
    env.submit(autostop=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records through each operator")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    n = args.n
    figures = {}
    for name, plain, run in (("comap", plain_comap, pipeline_comap), ("join", plain_join, pipeline_join)):
        loop_s, job_s = plain(n), run(n)
        figures[name] = {"records_per_s": round(n / job_s), "plain_loop_per_s": round(n / loop_s),
                         "fraction_of_plain_loop": round(loop_s / job_s, 3)}
    figures["uneven_end_s"] = round(uneven_end(), 3)
    if args.json:
        print(json.dumps(figures))
        return
    for name in ("comap", "join"):
        f = figures[name]
        print(f"{name:6s} {f['records_per_s']:>10,} records/s  plain loop {f['plain_loop_per_s']:>10,}/s  "
              f"ratio {f['fraction_of_plain_loop']:.2f} (target >= 0.5)")
    print(f"comap with inputs ending 10 ms and 1 s after submit: FINISHED after {figures['uneven_end_s']:.3f} s")


if __name__ == "__main__":
    main()
