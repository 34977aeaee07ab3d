"""The ``ai.optc`` op registry (:mod:`optc.ops`): every registered op has a numpy reference that
agrees with its schema, a cost the analysis, energy and latency models read, and a TVM lowering
that computes what the reference does. A new op gets these checks by registering itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference.op_run import OpRun

from optc import analysis, latency_model, ops
from optc.energy import model_energy

NAMES = sorted(ops.registry())


def _model(name: str, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """A one-node model of the op's example: input 0 a graph input ``x``, the others weights."""
    from optc.passes.optc_ops import run_op

    op = ops.get(name)
    inputs, attrs = op.example(np.random.default_rng(seed))
    y = run_op(name, *inputs, **attrs)
    x, inits, names = inputs[0], [], ["x"]
    for i, a in enumerate(inputs[1:], 1):
        names.append("" if a is None else f"in{i}")
        if a is not None:
            inits.append(numpy_helper.from_array(np.asarray(a), f"in{i}"))
    while names[-1] == "":
        names.pop()
    node = helper.make_node(name, names, ["y"], name=f"the_{name}", domain=op.domain, **attrs)
    x_info = helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
    y_info = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(y.dtype), y.shape)
    graph = helper.make_graph([node], name, [x_info], [y_info], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(op.domain, op.version)]), x


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from optc.passes.optc_ops import reference_evaluator

    return reference_evaluator(model).run(None, {"x": x})[0]


def test_the_ops_are_registered():
    assert set(NAMES) >= {"SignThreshold", "BinaryDense", "BinaryConv2d", "BinaryConv2dThreshold", "BitserialDense",
                          "BitserialConv2d", "IntConv2d", "IntDense", "IntGlobalAveragePool"}
    assert ops.get("Conv") is None and ops.lookup(helper.make_node("IntDense", ["x"], ["y"])) is None  # domain ""


@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_its_schema(name):
    op = ops.get(name)
    assert issubclass(op.reference, OpRun) and op.reference.op_domain == op.domain and op.doc
    assert op.example is not None, "every op brings an example for these tests"
    model, x = _model(name)
    assert op.check(model.graph.node[0]) == []
    y = _reference(model, x)
    assert str(y.dtype) in op.outputs[0].types
    assert str(x.dtype) in op.inputs[0].types
    for spec, init in zip(op.inputs[1:], model.graph.initializer):
        assert str(numpy_helper.to_array(init).dtype) in spec.types, spec.name


def test_check_names_what_is_wrong():
    op = ops.get("IntDense")
    node = helper.make_node("IntDense", ["x", "w", ""], ["y"], domain=ops.DOMAIN, out_min=0, bogus=1,
                            y_zero_point=0.5)
    problems = op.check(node)
    assert "input B is required" in problems and "input multiplier is required" in problems
    assert "attribute out_max is required" in problems and "unknown attribute bogus" in problems
    assert "attribute y_zero_point must be int" in problems


def test_define_refuses_a_reference_that_disagrees_with_its_schema():
    with pytest.raises(ValueError, match="schema declares"):
        @ops.define(inputs=(ops.Operand("X", ("float32",)),), outputs=(ops.Operand("Y", ("float32",)),),
                    cost=ops.Cost("fp32", ops.elementwise_surrogate), lowering={})
        class Mismatch(OpRun):
            def _run(self, X, T):  # noqa: N803
                return (X,)
    assert ops.get("Mismatch") is None


def test_define_refuses_attributes_as_parameters():
    """Attributes reach ``_run`` as ``**attrs`` (read through ``ops.attributes``), not one
    parameter each: the old long form is refused."""
    with pytest.raises(ValueError, match=r"_run takes \['X', 'k'\], the schema declares \['X', '\*\*attrs'\]"):
        @ops.define(inputs=(ops.Operand("X", ("float32",)),), attributes=(ops.Attr("k", "int"),),
                    outputs=(ops.Operand("Y", ("float32",)),), cost=ops.Cost("fp32", ops.elementwise_surrogate),
                    lowering={})
        class LongForm(OpRun):
            def _run(self, X, k=None):  # noqa: N803
                return (X,)
    assert ops.get("LongForm") is None


def test_attributes_record_defaults_and_refuses_unknown_names():
    from optc.passes.optc_ops import run_op

    op = ops.get("IntDense")
    a = op.attrs({"out_min": -5, "out_max": 5})
    assert (a.out_min, a.out_max, a.to, a.x_zero_point) == (-5, 5, None, None)
    with pytest.raises(TypeError, match=r"unknown attribute\(s\) \['bogus'\]"):
        op.attrs({"out_min": 0, "bogus": 1})
    inputs, attrs = op.example(np.random.default_rng(0))
    with pytest.raises(TypeError, match="bogus"):  # through onnx's evaluator, as before
        run_op("IntDense", *inputs, **attrs, bogus=1)
    with pytest.raises(TypeError, match="not a registered"):
        ops.attributes(object(), {})


@pytest.mark.parametrize("name", NAMES)
def test_cost_surrogate_has_the_reference_shape_and_the_models_read_the_cost(name):
    op = ops.get(name)
    model, x = _model(name)
    y = _reference(model, x)
    model.graph.output[0].type.tensor_type.ClearField("shape")  # shapes from the surrogate alone
    surrogate = ops.surrogate_for_inference(model)
    assert [n.op_type for n in surrogate.graph.node if ops.AUX not in n.name] != [name]  # seen through
    shape_type = analysis.tensor_info(surrogate)["y"]
    assert shape_type[0] == list(y.shape) and analysis.nbytes(shape_type) == y.nbytes

    (layer,) = analysis.summarize(model)["layers"]
    assert layer["op"] == name and layer["arith"] == op.cost.arith and layer["output_shape"] == list(y.shape)
    if op.cost.arith == "binary":
        assert layer["macs"] > 0 and layer["bit_ops"] == layer["macs"] * op.cost.bits_per_mac(model.graph.node[0])
    lat = latency_model.roofline([layer], {"clock_ghz": 1, "cores": 1, "fp32_flops_per_cycle": 16,
                                           "int32_macs_per_cycle": 8, "int8_dot_macs_per_cycle": 32,
                                           "binary_ops_per_cycle": 256, "mem_gbps": 10},
                                 {"mtriple": "aarch64-linux-gnu", "mattr": ["+dotprod"]})
    kernel = lat["layers"][0]["kernel"]
    assert kernel == ("int8" if op.cost.dot_product and not layer["depthwise"] else "int8-int32"
                      if op.cost.arith == "int8" else op.cost.arith)

    e = model_energy(model)
    assert not any("no known MAC count" in n for n in e["notes"])
    counts = e["breakdown"]["counts"]
    assert counts["macs"][op.cost.arith] == layer["macs"]
    assert counts["requantized_outputs"] == (y.size if op.cost.requantize else 0)
    assert (e["breakdown"]["compute_mj"]["binarize_and_scale"] > 0) == op.cost.binarize_and_scale


@pytest.mark.parametrize("name", NAMES)
def test_lowering_is_registered(name):
    op = ops.get(name)
    assert "tvm" in op.lowering
    assert op.lowering["tvm"].__module__ == op.reference.__module__  # one module per op
    pytest.importorskip("tvm")
    from optc.backends.tvm import lower

    lower.load_converters()  # what every TVM build does first
    assert f"{op.domain}::{name}" in lower.CUSTOM_CONVERTERS


def test_one_module_per_op():
    """Every module of ``optc.passes.ops`` defines exactly one registered op (reference and
    lowering), and every registered op comes from one of them."""
    from optc.passes import ops as op_modules

    by_module = {}
    for name, op in ops.registry().items():
        by_module.setdefault(op.reference.__module__, []).append(name)
    assert sorted(by_module) == sorted(f"{op_modules.__name__}.{m}" for m in op_modules.MODULES)
    assert all(len(names) == 1 for names in by_module.values()), by_module


def test_the_registry_imports_no_backend():
    """Every op module (lowering included) loads without TVM or optc's backends: the
    lowerings import them inside their bodies."""
    code = ("import sys, optc.ops; n = len(optc.ops.registry()); "
            "print(n, sorted(m for m in sys.modules if m == 'tvm' or m.startswith('optc.backends')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(None, 1)
    assert int(out[0]) == len(NAMES) and out[1].strip() == "[]"


def test_define_refuses_a_lowering_that_is_not_a_function():
    """The old form (a backend module name) is refused: the lowering is the function itself."""
    with pytest.raises(ValueError, match="a function lowering one node"):
        @ops.define(inputs=(ops.Operand("X", ("float32",)),), outputs=(ops.Operand("Y", ("float32",)),),
                    cost=ops.Cost("fp32", ops.elementwise_surrogate), lowering={"tvm": "optc.backends.tvm.int8"})
        class ModuleNamed(OpRun):
            def _run(self, X):  # noqa: N803
                return (X,)
    assert ops.get("ModuleNamed") is None


@pytest.mark.tvm
@pytest.mark.parametrize("name", NAMES)
def test_lowering_computes_the_reference(name):
    """The op's example built for this CPU: integer outputs bit for bit, float outputs to
    float32 rounding (the kernels' integer part is exact; scale and bias may round differently)."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from optc.backends.tvm import lower
    from optc.frontend import TensorSpec
    from optc.targets import get_target

    model, x = _model(name)
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], get_target("cpu"), embed_params=True)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ref = _reference(model, x)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if np.issubdtype(ref.dtype, np.integer):
        assert np.array_equal(out, ref)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert len(np.unique(ref)) > 1


@pytest.mark.tvm
@pytest.mark.parametrize("name", [n for n in NAMES if any(a.name == "to" for a in ops.get(n).attributes)])
def test_lowering_without_to_takes_the_reference_output_type(name):
    """Without the optional ``to`` the output dtype is that of the ``out_min``/``out_max``
    range (int8 in the examples), in the kernel as in the reference; the lowering used to
    default to uint8, and its codes differed from the reference's."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from optc.backends.tvm import lower
    from optc.frontend import TensorSpec
    from optc.targets import get_target

    model, x = _model(name)
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != "to"]
    del node.attribute[:]
    node.attribute.extend(kept)
    ref = _reference(model, x)
    assert ref.dtype == np.int8
    ex, _ = lower.build(model, [TensorSpec("x", str(x.dtype), x.shape)], get_target("cpu"), embed_params=True)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert out.dtype == ref.dtype and np.array_equal(out, ref)
