"""A process that leaves Ray actors behind when it is killed (no tests here).

Run as `python orphan_maker.py RAY_ADDRESS JOB`: it creates two named actors the way
sage_jupyter names them (its own pid in the name), prints their names, and sleeps until
killed. They are detached, as upstream SAGE creates its actors: a non-detached actor dies
with the process that created it (Ray ends a dead driver's actors), a detached one stays
alive without its kernel, which is what `%sage_orphans` is for.
"""

from __future__ import annotations

import sys
import time

import ray

from sage_jupyter.runtime.ray.orphans import NAMESPACE, actor_name


@ray.remote(num_cpus=0)
class Idle:
    def ping(self) -> str:
        return "pong"


def main(address: str, job: str) -> None:
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    names = [actor_name(job, "svc:cache"), actor_name(job, "task:0:0")]
    actors = [Idle.options(name=n, namespace=NAMESPACE, lifetime="detached").remote() for n in names]
    ray.get([a.ping.remote() for a in actors])
    print(" ".join(names), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
