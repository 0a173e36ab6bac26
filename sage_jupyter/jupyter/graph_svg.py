"""The pipeline as a DAG picture: one column per depth, a box per stage coloured by its state,
and an arrow per edge, so fan-out (one stream, several stages) and fan-in (connected streams)
show as they run. Inline SVG: it renders in the live widget and in saved notebooks alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..runtime.job import StageInfo

BOX_H, ROW_GAP, COL_GAP, PAD = 22, 10, 48, 4
CHAR_W, MIN_W, MAX_W = 7, 60, 240
MULTI_INPUT_KINDS = ("comap", "join")  # their edges are numbered: input 0, 1, ...


@dataclass(frozen=True)
class Placed:
    stage: StageInfo
    column: int
    row: int


def layout(stages: tuple[StageInfo, ...]) -> list[Placed]:
    """Columns by longest path from a source; within a column, stages sit near the mean
    row of their upstreams (fewer crossings), in declaration order on ties."""
    depth: dict[str, int] = {}
    for st in stages:  # declaration order is a topological order
        depth[st.name] = 1 + max((depth.get(u, 0) for u in st.upstream), default=-1)
    row_of: dict[str, float] = {}
    placed: list[Placed] = []
    for column in range(max(depth.values(), default=-1) + 1):
        members = [st for st in stages if depth[st.name] == column]

        def weight(st: StageInfo, order: int) -> tuple[float, int]:
            ups = [row_of[u] for u in st.upstream if u in row_of]
            return (sum(ups) / len(ups) if ups else float(order), order)

        ranked = sorted(enumerate(members), key=lambda pair: weight(pair[1], pair[0]))
        for row, (_, st) in enumerate(ranked):
            row_of[st.name] = float(row)
            placed.append(Placed(st, column, row))
    return placed


def graph_svg(stages: tuple[StageInfo, ...], state_of: Callable[[str], str], colour: Callable[[str], str],
              esc: Callable[[object], str]) -> str:
    """The SVG markup for `stages`; `state_of(stage)` gives the state that colours its box."""
    if not stages:
        return ""
    placed = layout(stages)
    labels = {p.stage.name: _label(p.stage) for p in placed}
    width = min(MAX_W, max(MIN_W, max(len(t) for t in labels.values()) * CHAR_W + 26))
    rows = max(p.row for p in placed) + 1
    columns = max(p.column for p in placed) + 1
    total_h = max(rows * (BOX_H + ROW_GAP) - ROW_GAP, BOX_H) + 2 * PAD
    total_w = columns * (width + COL_GAP) - COL_GAP + 2 * PAD
    heights = {c: max(p.row for p in placed if p.column == c) + 1 for c in range(columns)}

    def box_xy(p: Placed) -> tuple[int, int]:
        offset = (rows - heights[p.column]) * (BOX_H + ROW_GAP) // 2  # centre short columns
        return PAD + p.column * (width + COL_GAP), PAD + offset + p.row * (BOX_H + ROW_GAP)

    where = {p.stage.name: box_xy(p) for p in placed}
    edges: list[str] = []
    for p in placed:
        x, y = where[p.stage.name]
        numbered = p.stage.kind in MULTI_INPUT_KINDS
        for index, up in enumerate(p.stage.upstream):
            if up not in where:
                continue
            ux, uy = where[up]
            x0, y0, x1, y1 = ux + width, uy + BOX_H // 2, x - 2, y + BOX_H // 2
            mid = (x0 + x1) // 2
            edges.append(f'<path d="M{x0},{y0} C{mid},{y0} {mid},{y1} {x1},{y1}" fill="none" '
                         f'stroke="#9e9e9e" stroke-width="1.3" marker-end="url(#sage-arrow)"/>')
            if numbered:
                edges.append(f'<text x="{x1 - 9}" y="{y1 - 3}" font-size="9" fill="#616161">{index}</text>')
    boxes: list[str] = []
    for p in placed:
        x, y = where[p.stage.name]
        state = state_of(p.stage.name)
        c = colour(state)
        boxes.append(
            f'<g data-stage="{esc(p.stage.name)}" data-state="{esc(state)}"><title>{esc(p.stage.name)}: '
            f'{esc(state)}</title><rect x="{x}" y="{y}" width="{width}" height="{BOX_H}" rx="4" '
            f'fill="var(--jp-layout-color1,#fff)" stroke="{c}" stroke-width="2"/>'
            f'<circle cx="{x + 10}" cy="{y + BOX_H // 2}" r="4" fill="{c}"/>'
            f'<text x="{x + 19}" y="{y + BOX_H // 2 + 4}" font-size="11" '
            f'fill="var(--jp-ui-font-color1,#212121)">{_fit(labels[p.stage.name], width, esc)}</text></g>')
    return (f'<svg class="sage-graph" xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
            f'viewBox="0 0 {total_w} {total_h}" style="display:block;margin:4px 0;max-width:100%">'
            '<defs><marker id="sage-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
            'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#9e9e9e"/></marker></defs>'
            f'{"".join(edges)}{"".join(boxes)}</svg>')


def _label(stage: StageInfo) -> str:
    return stage.name + (f" \u00d7{stage.parallelism}" if stage.parallelism > 1 else "")


def _fit(text: str, width: int, esc: Callable[[object], str]) -> str:
    room = max(4, (width - 26) // CHAR_W)
    shown = text if len(text) <= room else text[: room - 1] + "\u2026"
    return esc(shown).replace("\u00d7", "&times;")
