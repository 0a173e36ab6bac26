"""The logical graph: what the user's DataStream chain describes, before any planning.

The runtime is duck-typed over user code: a stage holds a `factory` that builds the user
object when the task starts, and `call` says how to drive it. The api layer validates
classes and fills these in, so the runtime never imports the api.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

KeyFactory = Callable[[], Callable[[Any], Any]]
MULTI_INPUT_KINDS = ("comap", "join")  # stages whose records carry the index of their input


@dataclass(frozen=True)
class InputRoute:
    """How the records of one input reach a stage: its partitioning and key function."""

    partition: str = "forward"
    key_factory: KeyFactory | None = None


# How a stage's object is driven (`StageSpec.call`).
#   "method": factory() returns an object; the runtime attaches `ctx` and calls `.execute`.
#   "plain":  factory() returns a plain callable used as the execute function.
#   "iter":   (sources) factory() returns an iterable; each item is a record.
@dataclass
class StageSpec:
    """One operator of the logical graph."""

    id: int
    kind: str
    name: str
    factory: Callable[[], Any]
    call: str
    parallelism: int = 1
    upstream: tuple[int, ...] = ()
    partition: str = "forward"
    key_factory: Callable[[], Callable[[Any], Any]] | None = None
    bounded: bool = True  # sources: False for from_source (runs until stopped)
    user_object: Any = None  # the class or function the user passed, for error messages
    downstream: list[int] = field(default_factory=list)
    ray_remote_args: dict[str, Any] | None = None  # checked `.options()` for each instance's actor
    # Stages fed by connected streams: one route per entry of `upstream`, in input order
    # (each input keeps its own keyby). Empty: every input uses `partition`/`key_factory`.
    inputs: tuple[InputRoute, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def function_class(self) -> Any:
        """The class (or plain function) the user passed; upstream transformations' name."""
        obj = self.user_object
        return obj if hasattr(obj, "__name__") else type(obj)

    @property
    def basename(self) -> str:
        return self.name

    def route(self, position: int) -> InputRoute:
        """How the input at `position` of `upstream` reaches this stage."""
        return self.inputs[position] if self.inputs else InputRoute(self.partition, self.key_factory)

    @property
    def tagged(self) -> bool:
        """True if each batch must say which input it came from (comap, join)."""
        return self.kind in MULTI_INPUT_KINDS


@dataclass
class ServiceSpec:
    """A registered service: built in its host (thread or Ray actor) when the job starts."""

    name: str
    cls: type
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    remote: bool = False
    ray_remote_args: dict[str, Any] | None = None  # checked `.options()` for the service's actor


@dataclass
class PipelineGraph:
    """All stages of one environment, in the order they were declared."""

    stages: list[StageSpec] = field(default_factory=list)

    def add(self, stage: StageSpec) -> StageSpec:
        self.stages.append(stage)
        for up in stage.upstream:
            self.stages[up].downstream.append(stage.id)
        return stage

    def labels(self) -> dict[int, str]:
        """Unique, readable labels: `map:Double`, `map:Double#2` for a second one."""
        seen: dict[str, int] = {}
        out: dict[int, str] = {}
        for s in self.stages:
            n = seen.get(s.label, 0) + 1
            seen[s.label] = n
            out[s.id] = s.label if n == 1 else f"{s.label}#{n}"
        return out
