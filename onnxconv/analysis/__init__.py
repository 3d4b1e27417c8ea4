"""The parts of ``onnxconv stats``' graph walk, one job per module (:mod:`onnxconv.stats` puts them together).

* :mod:`.layer`: :class:`LayerStats`, one row of the report.
* :mod:`.scope`: what a graph sees (shapes, types, producers, constants), with its enclosing scopes'.
* :mod:`.weights`: where a conv's weight comes from (initializer, Constant, behind Cast/DequantizeLinear, or
  computed at run time), and which rows share a stored weight.
* :mod:`.rows`: a row from one node: convs (with the what-if figures), matrix products and recurrent layers.
* :mod:`.nchwc`: the logical channels of onnxruntime's NCHWc convs, whose block padding the weight carries.
* :mod:`.fields`: receptive fields and effective strides, propagated op by op.
* :mod:`.bodies`: If/Loop/Scan bodies and model-local functions as graphs of their own.
* :mod:`.walker`: the walk itself, in topological order through subgraphs and functions.
"""
