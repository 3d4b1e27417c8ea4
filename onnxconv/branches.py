"""If nodes whose branch is known, replaced by that branch in the weight-free copy that ``stats`` counts.

An If runs one branch. When its condition is known, from constants and input shapes (a PyTorch export tests
``x.dim() == 2`` or ``x.shape[-1] == 1`` this way) or from an onnxruntime run on the user's inputs, stats counts
the branch that runs and not the other. The branch's nodes then take the If's place in its graph
(:func:`inline_branch`), so ONNX shape inference and the folding of shape arithmetic in
:mod:`onnxconv.shapes` see them as they see the main graph (onnx infers a branch with none of the outer
constant values, and the shapes after an If whose branches differ in rank stay unknown), and an If nested in
the branch can be decided in turn. Each inlined node remembers the path of the branch it came from, so a conv's
row still says ``If_0/then_branch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from .conv import CONV_OPS
from .graph import node_label, subgraphs_of

__all__ = ["BranchChoices", "ResolvedIf", "if_key", "inline_branch", "conv_count", "BRANCHES"]

#: The attribute of the branch an If runs when its condition is true / false.
BRANCHES = {True: "then_branch", False: "else_branch"}


def if_key(node: onnx.NodeProto) -> str:
    """The name an If node is known by across copies of a model (its first output: names are unique there)."""
    return next((o for o in node.output if o), node.name)


@dataclass(frozen=True)
class ResolvedIf:
    """An If node counted with one branch: ``label`` and ``path`` say where it is, ``taken`` which branch runs,
    ``skipped_convs`` how many convs the other branch holds (nested bodies too), ``source`` how the condition
    was known: ``"shapes"`` (constants and input shapes) or ``"run"`` (the onnxruntime run on given inputs)."""

    label: str
    path: str
    taken: str
    skipped_convs: int
    source: str

    @property
    def qualified_label(self) -> str:
        return f"{self.path}/{self.label}" if self.path else self.label

    @property
    def skipped(self) -> str:
        """The branch that does not run."""
        return BRANCHES[False] if self.taken == BRANCHES[True] else BRANCHES[True]


@dataclass
class BranchChoices:
    """What :func:`onnxconv.shapes.infer_branches` decided: the If nodes replaced by their branch, and for each
    node it inlined (by first output name) the path of the branch it came from (``If_0/then_branch``)."""

    resolved: list[ResolvedIf] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)

    def path_of(self, node: onnx.NodeProto, default: str = "") -> str:
        out = next((o for o in node.output if o), None)
        return self.paths.get(out, default) if out is not None else default


def conv_count(graph: onnx.GraphProto) -> int:
    """Conv-family nodes of ``graph`` and of every body nested in it."""
    n = 0
    for node in graph.node:
        if node.op_type in CONV_OPS and node.domain in ("", "ai.onnx"):
            n += 1
        for _, g in subgraphs_of(node):
            n += conv_count(g)
    return n


def _defined(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def inline_branch(graph: onnx.GraphProto, index: int, cond: bool, choices: BranchChoices, source: str) -> bool:
    """Replace the If ``graph.node[index]`` by the branch that runs when its condition is ``cond``, in place.

    The branch's nodes and initializers join ``graph``; each If output becomes an Identity of the branch output
    it stands for. Returns False (nothing changed) when a name the branch defines is already defined in
    ``graph``: ONNX forbids that shadowing, and merging would make two values of one name.
    """
    node = graph.node[index]
    taken = BRANCHES[cond]
    branches = dict(subgraphs_of(node))
    body = branches.get(taken)
    if body is None or len(body.output) < len([o for o in node.output if o]):
        return False
    if _defined(body) & _defined(graph):
        return False
    outer = choices.path_of(node)
    label = node_label(node)
    prefix = f"{outer}/{label}/{taken}" if outer else f"{label}/{taken}"
    other = branches.get(BRANCHES[not cond])
    choices.resolved.append(ResolvedIf(label, outer, taken, conv_count(other) if other is not None else 0, source))
    new_nodes = [_copy(n) for n in body.node]
    for out, body_out in zip(node.output, body.output):
        if out:
            new_nodes.append(helper.make_node("Identity", [body_out.name], [out], name=f"{out}::onnxconv_branch"))
    for n in new_nodes:
        if n.output:
            choices.paths[n.output[0]] = prefix
    graph.initializer.extend(body.initializer)
    graph.sparse_initializer.extend(body.sparse_initializer)
    rest = [_copy(n) for n in graph.node]  # copies: clearing a repeated field leaves its old elements undefined
    del graph.node[:]
    graph.node.extend(rest[:index] + new_nodes + rest[index + 1:])
    return True


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
