"""onnxruntime's per-node times joined with the MACs counted by ``onnxconv stats`` (``bench --profile``).

Profile (``profile=True``)
    After timing, each model gets a fresh session with onnxruntime's profiler on (so the profiler's own cost never
    reaches the timed figures), runs ``warmup`` + ``profile_runs`` times, and the node events of the last
    ``profile_runs`` runs are averaged per node. Nodes are joined by name with the rows of
    :func:`onnxconv.stats.analyze` (convs, Gemm/MatMul) to give achieved MAC/s = MACs / mean node time.
    onnxruntime names an unnamed node ``<op_type>_<index>``, and its NCHWc layout pass renames a conv
    ``<output>_nchwc`` after the tensor it writes, which may be the output of a Relu/Add fused into it: those are
    traced back to the conv. QDQ fusions and the NHWC pass rebuild a quantized conv as a QLinearConv named
    ``<node>_token_<n>``: the suffix is dropped. A rebuilt *unnamed* node (``_token_5``, ``QLinearConv_30``) is
    joined with the one unnamed counted layer whose output has as many elements, if exactly one has. Layers still
    unmatched are listed. On CUDA, node times are the host-side time of
    each kernel's launch unless onnxruntime was built with CUDA profiling: read them as an ordering, not as GPU time.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ..compare import feeds_for
from ..conv import known
from ..errors import OnnxConvError
from ..graph import node_label
from ..model_io import load_model
from ..providers import Provider
from ..stats import LayerStats, analyze
from .config import BenchConfig, NodeTime, Profile
from .runners import InputArg, IOInfo, Runner

__all__ = ["parse_profile", "join_profile", "profile_model"]


#: onnxruntime kernels that carry a counted layer's MACs (fused forms keep the arithmetic of the conv/matmul).
_MAC_KERNELS = {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "QLinearConv", "ConvInteger", "ConvTranspose",
                "Gemm", "FusedGemm", "QGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul"}


def parse_profile(events: Sequence[Mapping[str, Any]], runs: int) -> tuple[dict[str, dict[str, Any]], int]:
    """Mean and median time per run of every node over the last ``runs`` runs of an onnxruntime profile.

    Returns (node name -> {"us": mean, "p50_us": median, "op_type", "provider", "output_elements"}, number of
    runs used); ``output_elements`` is the element count of the node's first output, None if not given. Node
    events are ``<node>_kernel_time`` with ``dur`` in microseconds; runs are the ``model_run`` session events,
    and a node that runs several times in one run (inside a loop) counts once per run with the sum.
    """
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    windows = windows[-runs:] if runs > 0 else windows
    if not windows:
        return {}, 0
    starts = [w[0] for w in windows]
    per_run: dict[str, np.ndarray] = {}
    meta: dict[str, tuple[str, str]] = {}
    elems: dict[str, int | None] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        k = bisect.bisect_right(starts, e["ts"]) - 1
        if k < 0 or e["ts"] > windows[k][1]:
            continue  # a warm-up run, or outside every run
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        meta.setdefault(name, (str(args.get("op_name", "")), str(args.get("provider", ""))))
        elems.setdefault(name, _output_elements(args))
        per_run.setdefault(name, np.zeros(len(windows)))[k] += float(e["dur"])
    nodes = {name: {"us": float(t.mean()), "p50_us": float(np.median(t)), "op_type": meta[name][0],
                    "provider": meta[name][1], "output_elements": elems[name]} for name, t in per_run.items()}
    return nodes, len(windows)


def _output_elements(args: Mapping[str, Any]) -> int | None:
    """Element count of the first output in a profiler event's args (``output_type_shape: [{dtype: dims}]``)."""
    try:
        [dims] = list(args["output_type_shape"][0].values())
        return math.prod(int(d) for d in dims)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


#: Suffixes onnxruntime's graph transformers append to a node they rebuild: the QDQ fusions and the NHWC layout
#: pass call a QLinearConv made from ``conv1`` ``conv1_token_1`` (and an unnamed one ``_token_5``).
_TOKEN_SUFFIX = re.compile(r"(?:_token_\d+)+$")


def _layer_finder(model: onnx.ModelProto, rows: Sequence[LayerStats]) -> Callable[[str, str], LayerStats | None]:
    """A function (onnxruntime node name, kernel op) -> the counted row it computes, or None."""
    by_ort_name: dict[str, onnx.NodeProto] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for i, node in enumerate(model.graph.node):
        by_ort_name[node.name or f"{node.op_type}_{i}"] = node  # onnxruntime's name for an unnamed node
        for out in node.output:
            producer[out] = node
    rows_by_label = {r.name: r for r in rows if not r.path}

    def source(ort_name: str) -> onnx.NodeProto | None:
        ort_name = _TOKEN_SUFFIX.sub("", ort_name)
        node = by_ort_name.get(ort_name) if ort_name else None
        if node is None and ort_name.endswith("_nchwc"):
            node = producer.get(ort_name[: -len("_nchwc")])  # NCHWc names a conv after the tensor it writes
        # Fusions append "/<FusionName>/" to the node they start from ("MatMul_3/MatmulTransposeFusion/"); names
        # from PyTorch exports hold slashes themselves, so strip one segment at a time and look again.
        stem = ort_name.rstrip("/")
        while node is None and "/" in stem:
            stem = stem.rsplit("/", 1)[0]
            node = by_ort_name.get(stem)
        return node

    def find(ort_name: str, kernel: str) -> LayerStats | None:
        node = source(ort_name)
        if node is None:
            return None
        row = rows_by_label.get(node_label(node))
        if row is not None or kernel not in _MAC_KERNELS:
            return row
        # A conv kernel named after a Relu/Clip/Add fused into it: walk back to the conv (a few steps at most).
        frontier, seen = [node], set()
        for _ in range(3):
            nxt = []
            for n in frontier:
                for inp in n.input:
                    p = producer.get(inp)
                    if p is None or id(p) in seen:
                        continue
                    seen.add(id(p))
                    r = rows_by_label.get(node_label(p))
                    if r is not None:
                        return r
                    nxt.append(p)
            frontier = nxt
        return None

    return find


def join_profile(nodes: Mapping[str, Mapping[str, Any]], runs: int, model: onnx.ModelProto | None,
                 rows: Sequence[LayerStats]) -> Profile:
    """Join per-node times with counted layers (``rows`` from :func:`onnxconv.stats.analyze`)."""
    total = sum(n["us"] for n in nodes.values())
    find = _layer_finder(model, rows) if model is not None else (lambda _n, _k: None)
    claimed: set[int] = set()
    out = []
    ranked = sorted(nodes.items(), key=lambda kv: -kv[1]["us"])
    for name, n in ranked:
        row = find(name, n["op_type"])
        if row is not None and id(row) in claimed:
            row = None  # two kernels for one layer: give the MACs once
        nt = NodeTime(node=name, op_type=n["op_type"], provider=n["provider"], mean_us=n["us"],
                      p50_us=n.get("p50_us", n["us"]), share=n["us"] / total if total > 0 else 0.0)
        if row is not None:
            _claim(nt, row, claimed)
        out.append(nt)
    if model is not None:
        _join_unnamed(out, [n for _, n in ranked], rows, _unnamed_labels(model), claimed)
    counted = [r for r in rows if r.macs is not None]
    return Profile(
        runs=runs, total_us=total, nodes=out, layer_macs=sum(r.macs or 0 for r in counted),
        joined_macs=sum(n.macs or 0 for n in out), joined_us=sum(n.mean_us for n in out if n.macs is not None),
        unjoined=[r.qualified_name for r in rows if id(r) not in claimed],
        uncounted=[n.layer for n in out if n.layer is not None and n.macs is None],
    )


def _claim(nt: NodeTime, row: LayerStats, claimed: set[int]) -> None:
    claimed.add(id(row))
    nt.layer, nt.macs = row.name, row.macs
    if row.macs is not None and nt.mean_us > 0:
        nt.macs_per_s = row.macs / (nt.mean_us * 1e-6)


def _unnamed_labels(model: onnx.ModelProto) -> set[str]:
    """Labels (:func:`onnxconv.graph.node_label`) of the top-level nodes that have no name."""
    return {node_label(n) for n in model.graph.node if not n.name}


def _join_unnamed(out: Sequence[NodeTime], raw: Sequence[Mapping[str, Any]], rows: Sequence[LayerStats],
                  unnamed: set[str], claimed: set[int]) -> None:
    """Join MAC kernels no name led to with counted layers of unnamed nodes, by their output element count.

    When onnxruntime rebuilds an unnamed node (a QDQ group fused into a QLinearConv: ``_token_5``, or
    ``QLinearConv_30`` numbered in the optimised graph), the kernel's name says nothing of its source. Its first
    output's element count (layout-free: NHWC and NCHW hold as many) still picks the layer when exactly one
    unclaimed unnamed layer has it; ties stay unjoined rather than guessed.
    """
    left: list[tuple[LayerStats, int]] = []  # (layer, its output's element count) when the count is known
    for r in rows:
        shape = known(r.output_shape) if r.output_shape else None
        if id(r) not in claimed and not r.path and r.name in unnamed and shape is not None:
            left.append((r, math.prod(shape)))
    for nt, n in zip(out, raw):
        elems = n.get("output_elements")
        if nt.layer is not None or nt.op_type not in _MAC_KERNELS or elems is None:
            continue
        fits = [r for r, size in left if id(r) not in claimed and size == elems]
        if len(fits) == 1:
            _claim(nt, fits[0], claimed)


def profile_model(source: str | onnx.ModelProto, name: str, provider: Provider, cfg: BenchConfig,
                  feeds: Mapping[str, np.ndarray]) -> Profile:
    """Profile one model in a fresh session (see the module docstring) and join the node times with its MACs."""
    with tempfile.TemporaryDirectory(prefix="onnxconv-profile-") as tmp:
        runner = Runner(source, name, provider, cfg, spinning=None, profile_prefix=os.path.join(tmp, "ort"))
        try:
            runner.bind(feeds)
            for _ in range(cfg.warmup + cfg.profile_runs):
                runner.run_once()
            path = runner.sess.end_profiling()
            with open(path) as f:
                events = json.load(f)
        finally:
            runner.close()
    nodes, runs = parse_profile(events, cfg.profile_runs)
    notes: list[str] = []
    model: onnx.ModelProto | None = None
    rows: list[LayerStats] = []
    try:
        model = source if isinstance(source, onnx.ModelProto) else load_model(source)
        shapes = {k: list(v.shape) for k, v in feeds_for(_graph_inputs(model), feeds).items()}
        rows = analyze(model, name=name, input_shapes=shapes, all_ops=True).layers
    except OnnxConvError as e:
        notes.append(f"MACs unknown, node times only: {e}")
    prof = join_profile(nodes, runs, model, rows)
    prof.notes = notes
    if prof.uncounted:
        prof.notes.append(f"{len(prof.uncounted)} profiled layer(s) have unknown MACs (shape inference could not "
                          f"work out an input shape; see onnxconv stats): " + _first_names(prof.uncounted))
    if prof.unjoined:
        hint = " (renamed or fused by onnxruntime; --opt-level basic keeps names)" if cfg.opt_level != "disable" else ""
        prof.notes.append(f"{len(prof.unjoined)} counted layer(s) not found among the profiled nodes{hint}: "
                          + _first_names(prof.unjoined))
    return prof


def _first_names(names: Sequence[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _graph_inputs(model: onnx.ModelProto) -> IOInfo:
    """The graph inputs of ``model`` (initializers excluded) in the form :func:`feeds_for` reads."""
    inits = {t.name for t in model.graph.initializer}
    return IOInfo([InputArg(vi.name, [], "") for vi in model.graph.input if vi.name not in inits])
