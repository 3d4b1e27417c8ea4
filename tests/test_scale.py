"""Long conv chains (issue 17: "a 3,000-conv chain: every command answers in time proportional to its size").

Wall times are in BENCHMARKS.md ("scale", ``tools/bench_scale.py``); what a test can pin is the work that grew
with the square of the depth: removing each replaced conv with ``list.remove``, which compares it with
onnx-graphsurgeon's ``Node.__eq__`` (attributes, inputs, outputs and a log call) against every node before it.
That was 20,099 comparisons at 200 convs, 4.5 million and 80 s at 3,000.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxconv.passes.common import PassResult
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate
from onnxconv.passes.shuffle import group_shuffle
from tools.archs import conv_chain

DEPTH = 200

PASSES: dict[str, Callable[[onnx.ModelProto], PassResult]] = {
    "separable": lambda m: separate(m, RankPolicy("rank", 1)),
    "shuffle": lambda m: group_shuffle(m, groups=2),
}


@pytest.mark.parametrize("name", list(PASSES))
def test_a_pass_on_a_long_chain_compares_no_nodes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    compared = 0
    equal = gs.Node.__eq__

    def counting(self: gs.Node, other: object) -> bool:
        nonlocal compared
        compared += 1
        return bool(equal(self, other))

    monkeypatch.setattr(gs.Node, "__eq__", counting)
    result = PASSES[name](conv_chain(depth=DEPTH))
    assert sum(c.rewritten for c in result.layers) == DEPTH - 1  # all but the 3-channel stem
    assert compared == 0
