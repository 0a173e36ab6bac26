"""Physical plan: stages become chains of operators run as one task per parallel instance.

Consecutive stages with equal parallelism, a one-to-one link and no repartition are
chained (as Flink does): fewer queues and threads, same semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .graph import PipelineGraph, StageSpec


@dataclass
class EdgeSpec:
    """A link from the last stage of one chain to the first stage of another.

    mode: "pointwise" (instance i feeds instance i), "rebalance" (round robin by batch),
    "hash" (by key) or "broadcast" (every batch to every instance).
    """

    src: int
    dst: int
    mode: str
    src_parallelism: int
    key_factory: Callable[[], Callable[[Any], Any]] | None = None
    tag: int | None = None  # the consumer's input index, for multi-input stages (comap, join)

    def ends_per_consumer(self) -> int:
        """How many end markers each consumer instance receives over this edge."""
        return 1 if self.mode == "pointwise" else self.src_parallelism


@dataclass
class ChainSpec:
    id: int
    stages: list[StageSpec]
    labels: list[str]
    parallelism: int
    inputs: list[EdgeSpec] = field(default_factory=list)
    outputs: list[EdgeSpec] = field(default_factory=list)

    @property
    def is_source(self) -> bool:
        return self.stages[0].kind == "source"

    @property
    def ends_expected(self) -> int:
        return sum(e.ends_per_consumer() for e in self.inputs)

    def task_name(self, index: int) -> str:
        return f"{self.labels[0]}[{index}]" if len(self.stages) == 1 else f"{'>'.join(self.labels)}[{index}]"


@dataclass
class Plan:
    chains: list[ChainSpec]
    labels: dict[int, str]

    def instances(self) -> list[tuple[ChainSpec, int]]:
        return [(c, i) for c in self.chains for i in range(c.parallelism)]


def _chainable(up: StageSpec, down: StageSpec) -> bool:
    if down.upstream != (up.id,) or up.downstream != [down.id]:
        return False
    if up.parallelism != down.parallelism or up.ray_remote_args != down.ray_remote_args:
        return False
    return down.partition == "forward" or down.parallelism == 1


def build_plan(graph: PipelineGraph, chaining: bool = True) -> Plan:
    labels = graph.labels()
    chain_of: dict[int, int] = {}
    chains: list[ChainSpec] = []
    for stage in graph.stages:  # declaration order is a topological order
        if chaining and len(stage.upstream) == 1:
            up = graph.stages[stage.upstream[0]]
            if _chainable(up, stage):
                chain = chains[chain_of[up.id]]
                chain.stages.append(stage)
                chain.labels.append(labels[stage.id])
                chain_of[stage.id] = chain.id
                continue
        chain = ChainSpec(len(chains), [stage], [labels[stage.id]], stage.parallelism)
        chains.append(chain)
        chain_of[stage.id] = chain.id
    for chain in chains:
        head = chain.stages[0]
        for position, up_id in enumerate(head.upstream):
            src = chains[chain_of[up_id]]
            route = head.route(position)
            edge = EdgeSpec(src.id, chain.id, _mode(head.parallelism, route.partition, src.parallelism),
                            src.parallelism,
                            key_factory=route.key_factory if route.partition == "hash" else None,
                            tag=position if head.tagged else None)
            src.outputs.append(edge)
            chain.inputs.append(edge)
    return Plan(chains, labels)


def _mode(parallelism: int, partition: str, src_parallelism: int) -> str:
    if parallelism == 1:
        return "rebalance"  # every producer instance feeds the single consumer
    if partition == "hash":
        return "hash"
    if partition == "broadcast":
        return "broadcast"
    return "pointwise" if src_parallelism == parallelism else "rebalance"
