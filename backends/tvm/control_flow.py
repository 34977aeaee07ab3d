"""ONNX control flow on TVM: which of ``If`` / ``Loop`` / ``Scan`` the Relax importer lowers.

- If: TVM's importer converts it itself (``ONNXGraphImporter._construct_nodes``: both branches
  become Relax ``SeqExpr``s under a ``relax.If``, and a graph with an If is built without a
  dataflow block, which Relax requires around control flow). Its converter table has no entry
  for it, so ``lower.supported_ops`` did not list it and ``optc compile`` refused every If.
  The entry registered here only lists it: the importer never calls it (it handles ``If``
  before looking converters up); it raises if a TVM version ever does, so the change shows up
  as a named error rather than a wrong lowering. An If whose condition is a constant after
  shape binding and constant folding is gone before the import (``fold-constants``: the
  taken branch inlined); a data-dependent one becomes a Relax ``If`` (the condition must be a
  bool tensor of one element; both branches must give outputs of the same type).
- Loop, Scan: not converted (the importer has no converter). The ``unroll-loops`` pass
  (``optc.passes.control_flow``) unrolls those with a static trip count before the import;
  the others are refused by name after the passes, with the reason.
"""

from __future__ import annotations

from .lower import register_converter, register_if_available


def register() -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    @register_converter("", "If")
    class If(OnnxOpConverter):
        """Listed as supported only: TVM's importer lowers If itself (module docstring)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            raise NotImplementedError("If is lowered by TVM's ONNX importer itself (ONNXGraphImporter."
                                      "_construct_nodes); this TVM version dispatched it to the converter table")


register_if_available(register)
