"""The walk: every node of a model in topological order, through If/Loop/Scan bodies and model-local functions.

Each conv-family node (and with ``all_ops`` each matrix product and recurrent layer) becomes a row
(:mod:`.rows`); receptive fields flow along the edges (:mod:`.fields`); bodies and functions are entered with
their caller's shapes (:mod:`.bodies`): a Loop or Scan body is counted for one iteration, every branch of an
If still in the graph is counted (one whose condition was known has been replaced by the branch that runs,
:mod:`onnxconv.branches`), and a function call is analysed with the call's input types and attributes. Rows
from inside carry a ``path`` such as ``If_0/then_branch`` or ``block_1:local.Block``; so do rows of an inlined
branch, whose nodes now sit in the main graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from ..branches import if_key
from ..conv import CONV_OPS
from ..graph import node_label, subgraphs_of, toposort
from ..shapes import infer_body
from .bodies import body_bindings, body_inputs, function_body, function_opsets
from .fields import Field, clean_values, field_steps, input_field, merge_fields, spatial_field
from .layer import LayerStats
from .rows import MAC_OPS, RECURRENT_OPS, WeightValues, conv_row, matmul_row, recurrent_row
from .scope import DEFAULT_DOMAINS, Scope
from .weights import SharedWeights

__all__ = ["Walker"]

# Words that mark a vendor-domain op as conv-like (first) or MAC-bearing (the rest, for all_ops).
_FOREIGN_WORDS = ("conv", "matmul", "gemm", "lstm", "gru", "rnn", "attention")

class Walker:
    """Walks a shape-inferred model and collects its rows.

    After :meth:`walk`: ``rows`` in walk order; ``main_nodes`` pairs the main graph's rows with their nodes;
    ``shared`` knows which rows read the same stored weight; ``foreign`` lists vendor ops not counted
    (``domain.op`` -> node labels); ``loops`` names the Loop/Scan nodes whose bodies gave rows and ``ifs`` the
    If nodes both of whose branches were counted (those that gave rows; If key -> qualified label).
    ``branch_paths`` gives a main-graph node (by first output) the path of the inlined branch it came from.
    """

    def __init__(self, model: onnx.ModelProto, all_ops: bool, groups: int,
                 values: WeightValues = lambda name: None, branch_paths: Mapping[str, str] | None = None) -> None:
        self.model = model
        self.branch_paths = dict(branch_paths or {})
        self.values = values
        self.all_ops = all_ops
        self.groups = groups
        self.rows: list[LayerStats] = []
        self.main_nodes: list[tuple[LayerStats, onnx.NodeProto]] = []
        self.shared = SharedWeights()
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.foreign: dict[str, set[str]] = {}
        self.loops: set[str] = set()
        self.ifs: dict[str, str] = {}
        self._depth = 0

    # -- graph walk ------------------------------------------------------------------------------------------
    def walk(self, graph: onnx.GraphProto, path: str, scope: Scope, fields: dict[str, Field]) -> None:
        """Visit ``graph``'s nodes in topological order; ``fields`` maps value names to receptive fields (graph
        inputs without one start at 1 with jump 1) and receives those of every value visited."""
        for vi in graph.input:
            if vi.name not in scope.consts and vi.name not in fields and vi.name not in scope.producers:
                fields[vi.name] = input_field(scope.shapes.get(vi.name))
        main = not path
        for node in toposort(graph.node):
            first = next((o for o in node.output if o), None)
            node_path = self.branch_paths.get(first, path) if main and first is not None else path
            self._visit(node, node_path, scope, fields, main)

    def _visit(self, node: onnx.NodeProto, path: str, scope: Scope, fields: dict[str, Field], main: bool) -> None:
        op, dom = node.op_type, node.domain or ""
        field_in = merge_fields([fields.get(i) for i in node.input if i in fields and i not in scope.consts])
        out_field = field_in
        standard = dom in DEFAULT_DOMAINS
        if standard and op in CONV_OPS:
            row, spec, key = conv_row(node, path, scope, self.groups, self.values)
            if spec is not None:
                self.shared.add(key, row)
                x_field = fields.get(node.input[0]) if node.input else None
                if x_field is not None:
                    f = field_steps(x_field, spec.kernel_shape, spec.strides, spec.dilations, spec.transposed)
                    row.receptive_field, row.effective_stride = clean_values(f.rf), clean_values(f.jump)
            self._add(row, node, main)
            if row.receptive_field is not None:
                out_field = Field(tuple(row.receptive_field), tuple(row.effective_stride or ()),
                                  bool(field_in and field_in.collapsed), field_in.extent if field_in else None)
        elif standard and op in MAC_OPS:
            if self.all_ops:
                self._add(matmul_row(node, path, scope), node, main)
        elif standard and op in RECURRENT_OPS:
            if self.all_ops:
                self._add(recurrent_row(node, path, scope), node, main)
        elif standard and field_in is not None:
            out_field = spatial_field(node, scope.shapes, field_in)
        elif (dom, op) in self.functions:
            out_field = self._call_function(node, path, scope, fields) or field_in
        elif not standard and any(w in op.lower() for w in _FOREIGN_WORDS[: None if self.all_ops else 1]):
            # Vendor ops stats does not know (ConvTransposeWithDynamicPads, DynamicQuantizeLSTM, ...): say so.
            self.foreign.setdefault(f"{dom}.{op}", set()).add(node_label(node))
        if any(True for _ in subgraphs_of(node)):
            out_field = self._subgraphs(node, path, scope, fields, out_field)
        if out_field is not None:
            for o in node.output:
                if o:
                    fields[o] = out_field

    def _add(self, row: LayerStats, node: onnx.NodeProto, main: bool) -> None:
        self.rows.append(row)
        if main:
            self.main_nodes.append((row, node))

    def _subgraphs(self, node: onnx.NodeProto, path: str, scope: Scope, fields: dict[str, Field],
                   out_field: Field | None) -> Field | None:
        """Walk If branches and Loop/Scan bodies; returns the merged field of their outputs."""
        merged = [out_field]
        label = node_label(node)
        for attr, g in subgraphs_of(node):
            sub_path = f"{path}/{label}/{attr}" if path else f"{label}/{attr}"
            typed = body_inputs(node, g, scope)
            if typed is not None:
                # onnx leaves Loop/Scan bodies without shapes when their inputs declare none: infer on its own.
                g = infer_body(g, typed, scope.types, self.model)
            sub_fields = dict(fields)
            for formal, actual in body_bindings(node, g):
                if actual in fields:
                    sub_fields[formal] = fields[actual]
            start = len(self.rows)
            self.walk(g, sub_path, Scope(g, scope, set()), sub_fields)
            for row in self.rows[start:]:
                if node.op_type in ("Loop", "Scan") and row.path == sub_path:
                    row.add_note(f"in a {node.op_type} body: counted for one iteration")
            if len(self.rows) > start:  # only bodies that hold counted layers are worth a note
                if typed is not None:
                    self.loops.add(f"{node.op_type} '{f'{path}/{label}' if path else label}'")
                elif node.op_type == "If":
                    self.ifs[if_key(node)] = f"{path}/{label}" if path else label
            merged.extend(sub_fields.get(o.name) for o in g.output)
        return merge_fields(merged)

    def _call_function(self, node: onnx.NodeProto, path: str, scope: Scope, fields: dict[str, Field]) -> Field | None:
        """Analyse a model-local function's body with this call's input types and attributes."""
        fn = self.functions[(node.domain or "", node.op_type)]
        if self._depth > 16:
            return None
        body = function_body(fn, node)
        input_types = {formal: scope.types.get(actual) for formal, actual in zip(fn.input, node.input) if actual}
        opsets = function_opsets(fn, self.model)
        inferred = infer_body(body, input_types, {}, self.model, opsets)
        sub_fields = {formal: fields[actual] for formal, actual in zip(fn.input, node.input) if actual in fields}
        label = f"{node_label(node)}:{fn.domain}.{fn.name}"
        sub_path = f"{path}/{label}" if path else label
        self._depth += 1
        try:
            self.walk(inferred, sub_path, Scope(inferred, None, set(), key_prefix=f"{fn.domain}.{fn.name}:"), sub_fields)
        finally:
            self._depth -= 1
        return merge_fields([sub_fields.get(o) for o in fn.output])
