"""One onnxruntime run on given inputs: the shape of every tensor it made and the branch each If took.

``stats --inputs FILE.npz`` counts with what a run sees where shapes alone cannot tell: a conv whose input size
comes from an input's *value* (a pad amount read from a scalar input), or an If whose condition tests a value
(Silero VAD picks its 16 kHz or 8 kHz network from the sample rate). onnxruntime's profiler records, for every
node that ran, main graph and If branches alike, the shapes of its inputs and outputs; the copy that runs has
each node without a name of its own (empty, or repeated) named ``onnxconv_node_<k>`` so that each profiler
event names exactly one node; named nodes keep their names, which onnxruntime's error messages then show. The
branch an If took is the one whose nodes ran. Loop/Scan bodies, which run once per iteration, are left to shape
inference.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .branches import BRANCHES, if_key
from .compare import run_model, session
from .graph import subgraphs_of

__all__ = ["Observation", "observe"]

#: Ops onnxruntime never runs as nodes: it turns Constant nodes into initializers when it loads a graph.
_NEVER_RUN = frozenset({"Constant"})


@dataclass(frozen=True)
class Observation:
    """What one run saw: ``shapes`` of the tensors that nodes read or wrote (by value name, If branches
    included), and ``branches``, the condition each If that ran had (If key, :func:`onnxconv.branches.if_key`)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    branches: dict[str, bool] = field(default_factory=dict)


@dataclass
class _Renamed:
    """The copy that runs: each renamed node's inputs and outputs, and each If's nodes per branch."""

    io: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    ifs: dict[str, tuple[str, dict[bool, set[str]]]] = field(default_factory=dict)  # key -> (its name, nodes)


def _names(graph: onnx.GraphProto, counts: dict[str, int]) -> dict[str, int]:
    """How often each node name occurs in ``graph`` and every body in it (a Loop body's node named like a node
    of the main graph would make that node's profiler events ambiguous)."""
    for node in graph.node:
        counts[node.name] = counts.get(node.name, 0) + 1
        for _, g in subgraphs_of(node):
            _names(g, counts)
    return counts


def _rename(graph: onnx.GraphProto, out: _Renamed, counts: Mapping[str, int]) -> set[str]:
    """Give every node of ``graph`` (and of its If branches) a unique name, keeping those that already are;
    returns the runnable names in ``graph`` itself."""
    here: set[str] = set()
    for node in graph.node:
        if not node.name or counts.get(node.name, 0) > 1:
            node.name = f"onnxconv_node_{len(out.io)}"
            while counts.get(node.name):
                node.name += "_"
        out.io[node.name] = ([i for i in node.input if i], [o for o in node.output if o])
        if node.op_type not in _NEVER_RUN:
            here.add(node.name)
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            branches = dict(subgraphs_of(node))
            ran = {cond: _rename(branches[attr], out, counts) for cond, attr in BRANCHES.items() if attr in branches}
            out.ifs[if_key(node)] = (node.name, ran)
    return here


def observe(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Observation:
    """Run ``model`` (its weights loaded) once on ``feeds`` with onnxruntime's profiler and collect what it saw.

    The run is unoptimised, so every node keeps its name and place. The profile goes to a temporary folder,
    removed before returning.

    Raises:
        OnnxConvError: onnxruntime cannot load or run the model on these inputs.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    renamed = _Renamed()
    _rename(copy.graph, renamed, _names(copy.graph, {}))
    with tempfile.TemporaryDirectory(prefix="onnxconv-observe-") as tmp:
        sess = session(copy, opt_level="disable", profile_prefix=str(Path(tmp) / "run"))
        run_model(sess, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    shapes: dict[str, tuple[int, ...]] = {}
    ran: set[str] = set()
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        if node not in renamed.io:
            continue
        ran.add(node)
        inputs, outputs = renamed.io[node]
        args = e.get("args", {})
        for names, key in ((inputs, "input_type_shape"), (outputs, "output_type_shape")):
            _record(shapes, names, args.get(key))
    return Observation(shapes, _taken(renamed, ran))


def _record(shapes: dict[str, tuple[int, ...]], names: Sequence[str], given: Any) -> None:
    """Shapes of one node's tensors from a profiler event (``[{dtype: dims}, ...]`` for its present tensors, in
    order); nothing when the counts differ (a sequence or optional value the profiler leaves out). A node run
    several times keeps its first shapes."""
    if not isinstance(given, list) or len(given) != len(names):
        return
    for name, entry in zip(names, given):
        try:
            [dims] = list(entry.values())
            shapes.setdefault(name, tuple(int(d) for d in dims))
        except (AttributeError, TypeError, ValueError):
            continue


def _taken(renamed: _Renamed, ran: set[str]) -> dict[str, bool]:
    """The condition of each If that ran: the branch some of whose nodes ran, or the one without runnable
    nodes (a branch that only returns a constant or an outer value) when none of the other's did."""
    out: dict[str, bool] = {}
    for key, (name, branches) in renamed.ifs.items():
        if name not in ran:
            continue
        took = [cond for cond, nodes in branches.items() if nodes & ran]
        if len(took) == 1:
            out[key] = took[0]
        elif not took:
            empty = [cond for cond, nodes in branches.items() if not nodes]
            if len(empty) == 1:
                out[key] = empty[0]
    return out
