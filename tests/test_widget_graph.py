"""The widget's pipeline picture is a DAG: an edge per link (fan-out and fan-in), numbered
inputs on multi-input stages, every stage coloured by its state."""

from __future__ import annotations

import re

import pytest

from sage_jupyter import LocalEnvironment
from sage_jupyter.jupyter import JobWidget, templates
from sage_jupyter.jupyter.graph_svg import layout
from tests.connected import InnerJoin, Tag

pytestmark = pytest.mark.usefixtures("no_thread_leak")


def test_graph_draws_fan_out_and_fan_in_as_edges():
    env = LocalEnvironment("dag")
    a, b = env.from_batch(range(5)), env.from_batch(range(3))
    a.map(lambda x: x, parallelism=2).sink(lambda x: None)  # a fans out to this map and to the comap
    a.connect(b).comap(Tag).sink(lambda x: None)  # a and b fan in
    a.keyby(lambda x: x).connect(b.keyby(lambda x: x)).join(InnerJoin).sink(lambda x: None)
    handle = env.submit(autostop=True)
    status = handle.status()
    html = templates.graph_html(status)

    links = sum(len(st.upstream) for st in status.stages)
    assert links == 8 and html.count("marker-end=") == links  # one arrow per link
    states = dict(re.findall(r'data-stage="([^"]+)" data-state="([A-Z]+)"', html))
    assert set(states) == {st.name for st in status.stages} and set(states.values()) == {"FINISHED"}
    assert "map:lambda &times;2" in html
    numbered = re.findall(r'<text x="\d+" y="\d+" font-size="9" fill="#616161">(\d)</text>', html)
    assert sorted(numbered) == ["0", "0", "1", "1"]  # comap and join say which input is which

    columns = {p.stage.name: p.column for p in layout(status.stages)}
    assert columns["source:range"] == columns["source:range#2"] == 0
    assert columns["comap:Tag"] == columns["join:InnerJoin"] == columns["map:lambda"] == 1
    shown = JobWidget(handle)._repr_mimebundle_()["text/html"]
    assert '<svg class="sage-graph"' in shown  # the saved fallback carries the same picture
