"""ONNX control flow on TVM: which of ``If`` / ``Loop`` / ``Scan`` the Relax importer lowers.

- If: TVM's importer converts it itself (``ONNXGraphImporter._construct_nodes``: both branches
  become Relax ``SeqExpr``s under a ``relax.If``, and a graph with an If is built without a
  dataflow block, which Relax requires around control flow). But its ``_convert_subgraph``
  emits every op of a branch into the *enclosing* block and puts only the branch's outputs
  under the If: both branches ran on every call (Silero VAD: both sample-rate branches, two
  LSTMs, and width-1 convolutions of the branch not taken). optc's importer (``lower._from_onnx``)
  wraps it in :func:`lift_branch`: each branch's ops become a private Relax function called
  from its arm of the If, so only the taken branch runs, and FuseOps and static memory
  planning (which work on a function's top-level dataflow blocks, not inside If arms) apply
  to the branch as to any function. Its converter table has no entry
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


def lift_branch(bb, convert):
    """Run ``convert()`` (TVM's conversion of one If branch) in a binding block of its own; if it
    emitted any bindings, return a call of a new private function (``if_branch``, added to
    ``bb``'s module) holding them, whose parameters are the outer values the branch uses;
    else (a branch passing outer values through) the branch's outputs themselves."""
    from tvm import relax
    from tvm.relax.utils import copy_with_new_vars

    bb._begin_binding_block()  # noqa: SLF001 - BlockBuilder has no public nested-block scope
    try:
        result = bb.normalize(convert())
    finally:
        block = bb._end_block()  # noqa: SLF001
    if not block.bindings:
        return result
    body = relax.SeqExpr([block], result)
    outer = list(relax.analysis.free_vars(body))
    func = copy_with_new_vars(relax.Function(outer, body, ret_ty=result.ty, is_pure=True))
    return relax.Call(bb.add_func(func, "if_branch"), outer)


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
