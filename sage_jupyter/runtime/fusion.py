"""Map and filter stages that end in a sink, run as one loop over a batch.

Run one stage at a time, a chain `map -> sink` builds the map's output list and loops over
the batch twice. Fused, each record goes through every stage in one generated loop, with no
list in between:

    def run(batch, f0=f0, f1=f1):
        d0 = 0
        for x in batch:
            x = f0(x)          # the map
            if x is None:
                d0 += 1        # counted only when a record is dropped
                continue
            f1(x)              # the sink
        return (d0,)

The chain runner fuses all but the last records of a batch and runs those one stage at a
time, so every stage's newest records (peek) stay exact. An exception is blamed on the
stage whose line of the loop raised it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

FUSABLE = ("map", "filter")  # before the sink that ends the run


class Fusable(Protocol):
    fn: Callable[[Any], Any]
    records_in: int
    records_out: int


class Fused:
    """The loop of a run of map/filter stages ending in a sink (see the module docstring)."""

    def __init__(self, ops: Sequence[Fusable], kinds: Sequence[str]) -> None:
        self.ops = list(ops)
        # the stages' functions are default arguments: locals, the cheapest name to load
        lines = ["def run(batch, " + ", ".join(f"f{i}=f{i}" for i in range(len(ops))) + "):"]
        dropping = list(range(len(kinds) - 1))  # every stage but the sink may drop records
        lines.append("    " + " = ".join(f"d{i}" for i in dropping) + " = 0")
        lines.append("    for x in batch:")
        self._line_of: dict[int, int] = {}  # line of the loop -> index of the stage it calls
        for i, kind in enumerate(kinds):
            self._line_of[len(lines) + 1] = i
            if kind == "map":
                lines += [f"        x = f{i}(x)", "        if x is None:", f"            d{i} += 1",
                          "            continue"]
            elif kind == "filter":
                lines += [f"        if not f{i}(x):", f"            d{i} += 1", "            continue"]
            else:  # the sink
                lines.append(f"        f{i}(x)")
        lines.append("    return (" + "".join(f"d{i}, " for i in dropping) + ")")
        namespace: dict[str, Any] = {f"f{i}": op.fn for i, op in enumerate(ops)}
        exec(compile("\n".join(lines), f"<sage fused {'>'.join(kinds)}>", "exec"), namespace)
        self._run: Callable[[list[Any]], tuple[int, ...]] = namespace["run"]

    def __call__(self, batch: list[Any]) -> None:
        """Run the batch through every stage, then count what each stage took and passed on."""
        dropped = self._run(batch)
        n = len(batch)
        for op, gone in zip(self.ops, dropped, strict=False):
            op.records_in += n
            n -= gone
            op.records_out += n
        self.ops[-1].records_in += n

    def culprit(self, exc: BaseException) -> int | None:
        """The index of the stage whose call raised `exc` in the loop, if it came from there."""
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code is self._run.__code__:
                return self._line_of.get(tb.tb_lineno)
            tb = tb.tb_next
        return None


def fusable(kinds: Sequence[str]) -> bool:
    """Whether the stages after a chain's first (its source or input) can run as one loop."""
    return len(kinds) >= 2 and kinds[-1] == "sink" and all(kind in FUSABLE for kind in kinds[:-1])
