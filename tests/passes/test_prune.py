"""Pruning passes: structured ``prune``, ``prune-zero`` and ``sparsify``.

The key exactness test: a physically pruned model must compute exactly what the original
computes with the removed channels zeroed (producer filters and biases, and the
channel-wise constants that would turn a zero back into a non-zero: BatchNorm shift and
mean, depthwise filter and bias). The removed channels come from the pass's own plan; the
zeroing is written per model by hand, so the test does not reuse the pass's edit list.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.errors import UsageError
from optc.passes.prune import keep_count, select_channels
from optc.passes.prune_groups import analyze
from optc.pipeline import format_pipeline, get_pass, instantiate, parse_pipeline
from optc.verify import reference_outputs

ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# helpers


class Builder:
    """Inline ONNX models: random initializers, nodes, one float input ``x``."""

    def __init__(self, shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        self.nodes, self.inits = [], []

    def init(self, name, shape, scale=0.3, positive=False, value=None):
        if value is None:
            value = (self.rng.uniform(0.5, 1.5, shape) if positive
                     else self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def conv(self, name, x, cin, cout, k=3, group=1, bias=True, pads=None):
        w = self.init(f"{name}.w", (cout, cin // group, k, k))
        ins = [x, w] + ([self.init(f"{name}.b", (cout,), 0.1)] if bias else [])
        p = k // 2 if pads is None else pads
        self.nodes.append(helper.make_node("Conv", ins, [name], name=name, group=group, pads=[p] * 4))
        return name

    def bn(self, name, x, c):
        ins = [x, self.init(f"{name}.g", (c,), positive=True), self.init(f"{name}.beta", (c,), 0.1),
               self.init(f"{name}.mean", (c,), 0.1), self.init(f"{name}.var", (c,), positive=True)]
        self.nodes.append(helper.make_node("BatchNormalization", ins, [name], name=name))
        return name

    def op(self, op, ins, name, **attrs):
        self.nodes.append(helper.make_node(op, list(ins), [name], name=name, **attrs))
        return name

    def build(self, out, out_shape):
        g = helper.make_graph(self.nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(m, full_check=True)
        return m

    def feeds(self, seed=1):
        return {"x": np.random.default_rng(seed).standard_normal(self.shape).astype(np.float32)}


def run_pass(model: onnx.ModelProto, text: str):
    """(pruned proto, modified, pass result with its details) for a one-pass pipeline."""
    (spec,) = parse_pipeline(text)
    irm = ir.serde.deserialize_model(model)
    result = instantiate(spec)(irm)
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result.modified, result


def removed_channels(model: onnx.ModelProto, text: str) -> dict[str, np.ndarray]:
    """Group name -> channels the pass removes (from its own plan on a fresh copy)."""
    (spec,) = parse_pipeline(text)
    p = instantiate(spec)
    an = analyze(ir.serde.deserialize_model(model))
    return {an.groups[gid].name: np.setdiff1d(np.arange(an.groups[gid].channels), kept)
            for gid, (kept, _, _) in p.plan(an).items() if len(kept) < an.groups[gid].channels}


def zeroed(model: onnx.ModelProto, zero: dict[str, tuple[int, np.ndarray]]) -> onnx.ModelProto:
    """A copy with ``init[name]`` set to 0 at ``indices`` along ``axis``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in zero:
            axis, idx = zero[init.name]
            arr = numpy_helper.to_array(init).copy()
            index = [slice(None)] * arr.ndim
            index[axis] = idx
            arr[tuple(index)] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return out


def zero_rows(gone: dict[str, np.ndarray], *groups: str) -> dict[str, tuple[int, np.ndarray]]:
    """``zeroed``'s argument for the output channels ``gone[g]`` each group ``g`` lost: rows of
    its weight ``g.w`` and bias ``g.b``."""
    return {f"{g}.{t}": (0, gone[g]) for g in groups for t in ("w", "b")}


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds, atol=ATOL):
    ra, rb = reference_outputs(a, feeds), reference_outputs(b, feeds)
    assert [x.shape for x in ra] == [y.shape for y in rb]
    for x, y in zip(ra, rb):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


def weight_shape(model: onnx.ModelProto, name: str) -> list[int]:
    return next(list(i.dims) for i in model.graph.initializer if i.name == name)


def ops(model):
    return [n.op_type for n in model.graph.node]


# ---------------------------------------------------------------------------------------------
# models


def conv_bn_relu_conv():
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> maxpool -> gap -> flatten -> fc."""
    b = Builder([2, 3, 8, 8])
    x = b.op("Relu", [b.bn("bn1", b.conv("conv1", "x", 3, 8), 8)], "r1")
    x = b.op("Relu", [b.bn("bn2", b.conv("conv2", x, 8, 12), 12)], "r2")
    x = b.op("MaxPool", [x], "mp", kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x], "gap")], "flat")
    b.op("Gemm", [x, b.init("fc.w", (5, 12)), b.init("fc.b", (5,))], "y", transB=1)
    return b, b.build("y", [2, 5])


def residual():
    """Two residual Adds tie conv1, conv3 and the identity path into one group."""
    b = Builder([2, 4, 6, 6])
    a = b.op("Relu", [b.conv("conv1", "x", 4, 8)], "r1")
    c = b.op("Relu", [b.conv("conv2", a, 8, 6)], "r2")  # inner channels: its own group
    s = b.op("Add", [b.conv("conv3", c, 6, 8), a], "add1")
    s = b.op("Relu", [s], "r3")
    s2 = b.op("Add", [b.op("Relu", [b.conv("conv4", s, 8, 8)], "r4"), s], "add2")
    x = b.op("Flatten", [b.op("GlobalAveragePool", [s2], "gap")], "flat")
    b.op("Gemm", [x, b.init("fc.w", (3, 8)), b.init("fc.b", (3,))], "y", transB=1)
    return b, b.build("y", [2, 3])


def concat_model():
    b = Builder([1, 3, 6, 6])
    a = b.conv("convA", "x", 3, 4)
    c = b.conv("convB", "x", 3, 6)
    cat = b.op("Relu", [b.op("Concat", [a, c], "cat", axis=1)], "rc")
    b.conv("y", cat, 10, 5)
    return b, b.build("y", [1, 5, 6, 6])


def depthwise_model():
    b = Builder([1, 4, 6, 6])
    x = b.op("Relu", [b.conv("pw1", "x", 4, 8, k=1)], "r1")
    x = b.op("Clip", [b.conv("dw", x, 8, 8, group=8)], "r2", )
    x = b.op("Sigmoid", [b.conv("pw2", x, 8, 6, k=1)], "r3")
    b.conv("y", x, 6, 2, k=1)
    return b, b.build("y", [1, 2, 6, 6])


def flatten_gemm_model(reshape=None):
    b = Builder([2, 3, 4, 4])
    x = b.op("Relu", [b.conv("conv1", "x", 3, 6)], "r1")
    if reshape is None:
        x = b.op("Flatten", [x], "flat")
    else:
        x = b.op("Reshape", [x, b.init("shape", None, value=np.array(reshape, np.int64))], "flat")
    x = b.op("Relu", [b.op("Gemm", [x, b.init("fc1.w", (6 * 16, 10)), b.init("fc1.b", (10,))], "fc1")], "r2")
    b.op("Gemm", [x, b.init("fc2.w", (4, 10)), b.init("fc2.b", (4,))], "y", transB=1)
    return b, b.build("y", [2, 4])


def grouped_model():
    b = Builder([1, 4, 6, 6])
    x = b.op("Relu", [b.conv("conv1", "x", 4, 8)], "r1")
    x = b.op("Relu", [b.conv("gconv", x, 8, 12, group=2)], "r2")
    b.conv("y", x, 12, 3, k=1)
    return b, b.build("y", [1, 3, 6, 6])


def matmul_model():
    b = Builder([3, 16])
    x = b.op("Add", [b.op("MatMul", ["x", b.init("w1", (16, 12))], "mm1"), b.init("b1", (12,))], "a1")
    x = b.op("Mul", [b.op("Relu", [x], "r1"), b.op("Relu", [x], "r1b")], "sq")  # Mul of tied tensors
    b.op("MatMul", [x, b.init("w2", (12, 5))], "y")
    return b, b.build("y", [3, 5])


# ---------------------------------------------------------------------------------------------
# structured prune: exactness against zeroed copies


def test_ratio_zero_is_identity():
    b, m = conv_bn_relu_conv()
    out, modified, result = run_pass(m, "prune<ratio=0.0>")
    assert not modified and ops(out) == ops(m)
    assert result.details["params_before"] == result.details["params_after"]
    assert_same(m, out, b.feeds(), atol=0)


def test_conv_bn_relu_conv_equals_zeroed_original():
    b, m = conv_bn_relu_conv()
    text = "prune<ratio=0.5>"
    gone = removed_channels(m, text)
    assert set(gone) == {"conv1", "conv2"} and len(gone["conv1"]) == 4 and len(gone["conv2"]) == 6
    ref = zeroed(m, {"conv1.w": (0, gone["conv1"]), "conv1.b": (0, gone["conv1"]),
                     "bn1.beta": (0, gone["conv1"]), "bn1.mean": (0, gone["conv1"]),
                     "conv2.w": (0, gone["conv2"]), "conv2.b": (0, gone["conv2"]),
                     "bn2.beta": (0, gone["conv2"]), "bn2.mean": (0, gone["conv2"])})
    out, modified, result = run_pass(m, text)
    assert modified and ops(out) == ops(m)
    assert weight_shape(out, "conv1.w") == [4, 3, 3, 3]
    assert weight_shape(out, "conv2.w") == [6, 4, 3, 3]
    assert weight_shape(out, "bn2.g") == [6] and weight_shape(out, "fc.w") == [5, 6]
    assert_same(ref, out, b.feeds())
    d = result.details
    assert d["params_after"] < d["params_before"] and d["flops_after"] < d["flops_before"]
    assert d["onnx_bytes_after"] < d["onnx_bytes_before"]
    fc = next(g for g in d["groups"] if g["name"] == "y")
    assert fc["kept"] == 5 and "graph output 'y'" in fc["frozen"]


def test_residual_add_forms_one_group():
    b, m = residual()
    groups = {g.name: g for g in analyze(ir.serde.deserialize_model(m)).roots()}
    assert sorted(p.node.name for p in groups["conv1"].producers) == ["conv1", "conv3", "conv4"]
    assert set(groups) == {"conv1", "conv2", "y"}
    text = "prune<ratio=0.5>"
    gone = removed_channels(m, text)
    zero = {f"{c}.{t}": (0, gone["conv1"]) for c in ("conv1", "conv3", "conv4") for t in ("w", "b")}
    zero |= zero_rows(gone, "conv2")
    out, modified, _ = run_pass(m, text)
    assert modified and weight_shape(out, "conv4.w") == [4, 4, 3, 3] and weight_shape(out, "conv3.w") == [4, 3, 3, 3]
    assert_same(zeroed(m, zero), out, b.feeds())


def test_excluding_one_member_leaves_the_residual_group_alone():
    b, m = residual()
    out, _, result = run_pass(m, "prune<ratio=0.5;exclude=conv3>")
    assert weight_shape(out, "conv1.w") == [8, 4, 3, 3] and weight_shape(out, "conv2.w") == [3, 8, 3, 3]


def test_concat_channel_offsets():
    b, m = concat_model()
    text = "prune<ratio=0.5>"
    gone = removed_channels(m, text)
    assert len(gone["convA"]) == 2 and len(gone["convB"]) == 3
    out, _, _ = run_pass(m, text)
    assert weight_shape(out, "y.w") == [5, 5, 3, 3]
    assert_same(zeroed(m, zero_rows(gone, "convA", "convB")), out, b.feeds())


def test_depthwise_channels_follow_their_producer():
    b, m = depthwise_model()
    groups = analyze(ir.serde.deserialize_model(m)).roots()
    assert [g.name for g in groups] == ["pw1", "pw2", "y"]  # dw is tied to pw1, not a group
    text = "prune<ratio=0.5>"
    gone = removed_channels(m, text)
    out, _, _ = run_pass(m, text)
    dw = next(n for n in out.graph.node if n.name == "dw")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4
    assert weight_shape(out, "dw.w") == [4, 1, 3, 3] and weight_shape(out, "pw2.w") == [3, 4, 1, 1]
    g1, g2 = gone["pw1"], gone["pw2"]
    ref = zeroed(m, {"pw1.w": (0, g1), "pw1.b": (0, g1), "dw.w": (0, g1), "dw.b": (0, g1),
                     "pw2.b": (0, g2), "y.w": (1, g2)})  # Sigmoid(0) != 0: zero the consumer side
    assert_same(ref, out, b.feeds())


@pytest.mark.parametrize("reshape", [None, [0, -1], [2, 96], [-1, 96]])
def test_flatten_into_gemm_removes_row_blocks(reshape):
    b, m = flatten_gemm_model(reshape)
    text = "prune<ratios=conv1:0.5,fc1:0.3>"
    gone = removed_channels(m, text)
    assert len(gone["conv1"]) == 3 and len(gone["fc1"]) == 3
    out, _, result = run_pass(m, text)
    assert weight_shape(out, "fc1.w") == [3 * 16, 7] and weight_shape(out, "fc2.w") == [4, 7]
    ref = zeroed(m, zero_rows(gone, "conv1") | {"fc1.w": (1, gone["fc1"]), "fc1.b": (0, gone["fc1"])})
    assert_same(ref, out, b.feeds())


def test_grouped_conv_keeps_channels_even_per_group():
    b, m = grouped_model()
    an = analyze(ir.serde.deserialize_model(m))
    assert {g.name: g.blocks for g in an.roots()} == {"conv1": 2, "gconv": 2, "y": 1}
    text = "prune<ratio=0.5>"
    gone = removed_channels(m, text)
    for name, c in (("conv1", 8), ("gconv", 12)):  # the same count in each half
        assert np.sum(gone[name] < c // 2) == np.sum(gone[name] >= c // 2) == c // 4
    out, _, _ = run_pass(m, text)
    assert weight_shape(out, "gconv.w") == [6, 2, 3, 3]
    assert_same(zeroed(m, zero_rows(gone, "conv1", "gconv")), out, b.feeds())


def test_matmul_chain_with_bias_constant_and_self_mul():
    b, m = matmul_model()
    text = "prune<ratio=0.5;criterion=l2>"
    gone = removed_channels(m, text)["mm1"]
    out, _, _ = run_pass(m, text)
    assert weight_shape(out, "w1") == [16, 6] and weight_shape(out, "b1") == [6] and weight_shape(out, "w2") == [6, 5]
    assert_same(zeroed(m, {"w1": (1, gone), "b1": (0, gone)}), out, b.feeds())


def test_tiny_resnet_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from optc.train.export import export_torch
    from optc.models import zoo

    model = zoo.seeded(zoo.tiny_resnet, seed=0, calibrate=(4, 3, 32, 32))
    path = export_torch(model, (torch.randn(1, 3, 32, 32),), tmp_path / "t.onnx",
                        input_names=["x"], output_names=["y"])
    m = onnx.load(str(path))
    out, modified, result = run_pass(m, "prune<ratio=0.5;multiple=4>")
    d = result.details
    assert modified and d["flops_after"] < 0.45 * d["flops_before"]
    residual_groups = [g for g in d["groups"] if len(g["members"]) > 1]
    assert residual_groups and all(g["kept"] == g["channels"] // 2 for g in residual_groups)
    assert all(g["kept"] % 4 == 0 for g in d["groups"] if "frozen" not in g)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert reference_outputs(out, {"x": x})[0].shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# criteria, options, frozen groups


def test_selection_and_rounding():
    assert keep_count(16, 0.5) == 8
    assert keep_count(16, 0.6) == 7  # at most floor(0.6 * 16) = 9 removed
    assert keep_count(16, 0.6, multiple=4) == 8
    assert keep_count(16, 0.9, min_channels=4) == 4
    assert keep_count(6, 0.5, multiple=8) == 6  # rounding up past C keeps everything
    assert keep_count(12, 0.5, blocks=4) == 8
    # with a step, the nearest multiple of it (ties up), never below one step or min-channels
    assert [keep_count(c, 0.1, multiple=8) for c in (16, 32, 64, 128, 256)] == [16, 32, 56, 112, 232]
    assert keep_count(16, 0.9, multiple=8) == 8
    assert keep_count(24, 0.5, multiple=8, min_channels=17) == 24
    assert keep_count(40, 0.5, multiple=8) == 24  # 20 is a tie between 16 and 24
    assert list(select_channels(np.array([3., 1, 2, 5, 0, 4]), 3)) == [0, 3, 5]
    assert list(select_channels(np.array([3., 1, 2, 5, 0, 4]), 4, blocks=2)) == [0, 2, 3, 5]


def test_bn_scale_criterion_keeps_largest_gamma():
    b, m = conv_bn_relu_conv()
    gamma = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "bn1.g"))
    gone = removed_channels(m, "prune<ratios=conv1:0.5;criterion=bn-scale>")["conv1"]
    assert set(gone) == set(np.argsort(np.abs(gamma))[:4])
    r1 = removed_channels(m, "prune<ratio=0.5;criterion=random;seed=1>")
    r2 = removed_channels(m, "prune<ratio=0.5;criterion=random;seed=1>")
    assert all(np.array_equal(r1[k], r2[k]) for k in r1)


def test_global_scope_removes_the_ratio_overall():
    b, m = conv_bn_relu_conv()
    out, _, result = run_pass(m, "prune<ratio=0.5;scope=global>")
    groups = [g for g in result.details["groups"] if "frozen" not in g]
    assert sum(g["channels"] - g["kept"] for g in groups) == 10  # floor(0.5 * (8 + 12))
    assert reference_outputs(out, b.feeds())[0].shape == (2, 5)


def test_unsupported_consumer_freezes_with_reason():
    b = Builder([1, 3, 4, 4])
    x = b.op("Relu", [b.conv("conv1", "x", 3, 6)], "r1")
    b.op("Transpose", [b.conv("conv2", x, 6, 4)], "y", perm=[0, 2, 3, 1])
    m = b.build("y", [1, 4, 4, 4])
    out, _, result = run_pass(m, "prune<ratio=0.5>")
    rows = {g["name"]: g for g in result.details["groups"]}
    assert rows["conv1"]["kept"] == 3
    assert rows["conv2"]["kept"] == 4 and "unsupported op Transpose" in rows["conv2"]["frozen"][0]
    assert weight_shape(out, "conv2.w") == [4, 3, 3, 3]


def test_unknown_layer_name_is_an_error():
    b, m = conv_bn_relu_conv()
    with pytest.raises(UsageError, match="match no layer"):
        run_pass(m, "prune<ratios=nope:0.5>")
    with pytest.raises(UsageError, match="criterion"):
        run_pass(m, "prune<criterion=zero>")


def test_pipeline_text_round_trip():
    for text in ("prune<ratio=0.5;criterion=bn-scale;exclude=fc,conv1;min-channels=2;multiple=8>",
                 "prune<ratios=conv1:0.3,conv2:0.6;scope=layer;seed=3>",
                 "prune-zero<atol=0.0>",
                 "sparsify<sparsity=0.7;scope=global>,sparsify<ratios=/a/b:0.25>"):
        specs = parse_pipeline(text)
        assert format_pipeline(specs) == text
        explicit = format_pipeline(specs, explicit=True)
        assert format_pipeline(parse_pipeline(explicit), explicit=True) == explicit
    (spec,) = parse_pipeline("prune<ratios=conv1:0.3,conv2:0.6>")
    assert instantiate(spec).ratios == {"conv1": 0.3, "conv2": 0.6}


# ---------------------------------------------------------------------------------------------
# prune-zero


def zero_channel_model():
    """conv1(8) -> bn1 -> relu -> conv2(padded) and conv1 -> ... -> gap -> fc; channels zeroed:
    1: zero filter + bias, BN maps 0 to a negative constant -> ReLU gives 0 (removable);
    3: zero filter, BN constant > 0 feeding a padded conv (NOT exactly removable);
    5: BN gamma = 0 (constant beta < 0 -> 0 after ReLU: removable)."""
    b = Builder([2, 3, 6, 6])
    b.conv("conv1", "x", 3, 8)
    b.bn("bn1", "conv1", 8)
    x = b.op("Relu", ["bn1"], "r1")
    c2 = b.op("Relu", [b.conv("conv2", x, 8, 4)], "r2")
    side = b.op("Flatten", [b.op("GlobalAveragePool", [x], "gap")], "flat")
    fc = b.op("Gemm", [side, b.init("fc.w", (4, 8)), b.init("fc.b", (4,))], "fc", transB=1)
    g2 = b.op("Flatten", [b.op("GlobalAveragePool", [c2], "gap2")], "flat2")
    b.op("Add", [fc, g2], "y")
    m = b.build("y", [2, 4])
    init = {i.name: numpy_helper.to_array(i).copy() for i in m.graph.initializer}
    init["conv1.w"][[1, 3]] = 0
    init["conv1.b"][[1, 3]] = 0
    init["bn1.beta"][1], init["bn1.mean"][1] = -0.5, 0.0
    init["bn1.beta"][3], init["bn1.mean"][3] = 0.7, 0.0
    init["bn1.g"][5], init["bn1.beta"][5] = 0.0, -0.2
    for i in m.graph.initializer:
        i.CopyFrom(numpy_helper.from_array(init[i.name], i.name))
    return b, m


def test_prune_zero_keeps_outputs_and_is_idempotent():
    b, m = zero_channel_model()
    out, modified, result = run_pass(m, "prune-zero")
    assert modified and result.details["channels_removed"] == 2
    assert weight_shape(out, "conv1.w") == [6, 3, 3, 3] and weight_shape(out, "fc.w") == [4, 6]
    assert_same(m, out, b.feeds(), atol=1e-6)
    again, modified2, _ = run_pass(out, "prune-zero")
    assert not modified2
    assert_same(m, again, b.feeds(), atol=1e-6)


def test_prune_zero_folds_a_constant_into_the_gemm_bias():
    """A zero filter with bias 2 after ReLU reaches a Gemm through pooling and Flatten: the
    constant 2 moves into the Gemm's bias."""
    b = Builder([2, 3, 4, 4])
    b.op("Relu", [b.conv("conv1", "x", 3, 6)], "r1")
    x = b.op("Flatten", ["r1"], "flat")
    b.op("Gemm", [x, b.init("fc.w", (5, 6 * 16))], "y", transB=1)  # no bias: one is created
    m = b.build("y", [2, 5])
    for i in m.graph.initializer:
        arr = numpy_helper.to_array(i).copy()
        if i.name == "conv1.w":
            arr[2] = 0
        if i.name == "conv1.b":
            arr[2] = 2.0
        i.CopyFrom(numpy_helper.from_array(arr, i.name))
    out, modified, result = run_pass(m, "prune-zero")
    assert modified and weight_shape(out, "fc.w") == [5, 5 * 16]
    assert len(next(n for n in out.graph.node if n.op_type == "Gemm").input) == 3
    assert_same(m, out, b.feeds(), atol=1e-5)


def test_prune_zero_on_residual_group():
    b, m = residual()
    for i in m.graph.initializer:  # channel 2 of the residual group is zero in every producer
        if i.name in ("conv1.w", "conv1.b", "conv3.w", "conv3.b", "conv4.w", "conv4.b"):
            arr = numpy_helper.to_array(i).copy()
            arr[2] = 0
            i.CopyFrom(numpy_helper.from_array(arr, i.name))
    out, modified, result = run_pass(m, "prune-zero")
    assert modified and result.details["channels_removed"] == 1 and weight_shape(out, "conv4.w") == [7, 7, 3, 3]
    assert_same(m, out, b.feeds(), atol=1e-6)


def test_prune_zero_nothing_to_remove():
    b, m = conv_bn_relu_conv()
    out, modified, result = run_pass(m, "prune-zero")
    assert not modified and result.details["channels_removed"] == 0


# ---------------------------------------------------------------------------------------------
# sparsify


def test_sparsify_layer_and_global_idempotent():
    b, m = conv_bn_relu_conv()
    out, modified, result = run_pass(m, "sparsify<sparsity=0.6>")
    assert modified
    for name in ("conv1.w", "conv2.w", "fc.w"):
        before = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == name))
        after = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == name))
        k = int(0.6 * before.size)
        assert np.count_nonzero(after == 0) == k
        kept = np.abs(before[after != 0])
        assert kept.min() >= np.abs(before[after == 0]).max()  # the smallest were zeroed
        np.testing.assert_array_equal(after[after != 0], before[after != 0])
    d = result.details
    assert 0.59 < d["sparsity"] < 0.61 and d["weights_zlib_bytes_after"] < d["weights_zlib_bytes_before"]
    assert "no sparse" in d["note"] and "no speed-up" in get_pass("sparsify").__doc__
    _, again, _ = run_pass(out, "sparsify<sparsity=0.6>")
    assert not again
    g, modified, result_g = run_pass(m, "sparsify<sparsity=0.5;scope=global;exclude=fc.w>")
    assert modified and 0.49 < result_g.details["sparsity"] < 0.51
    assert not run_pass(g, "sparsify<sparsity=0.5;scope=global;exclude=fc.w>")[1]
    assert_same(g, g, b.feeds())


def test_parameters_shared_through_identity_nodes():
    """torch's exporter shares equal initializers (fresh BatchNorm gamma = 1, beta = 0) through
    Identity nodes; pruning gives each user its own sliced copy and drops the dead Identity."""
    b = Builder([1, 3, 5, 5])
    b.init("ones", (8,), value=np.ones(8, np.float32))
    b.op("Identity", ["ones"], "g1")
    b.op("Identity", ["ones"], "g2")
    x = b.conv("conv1", "x", 3, 8)
    b.nodes.append(helper.make_node("BatchNormalization", [x, "g1", b.init("bn1.beta", (8,)), b.init("bn1.mean", (8,)),
                                                          b.init("bn1.var", (8,), positive=True)], ["bn1"], name="bn1"))
    x = b.conv("conv2", b.op("Relu", ["bn1"], "r1"), 8, 8)
    b.nodes.append(helper.make_node("BatchNormalization", [x, "g2", b.init("bn2.beta", (8,)), b.init("bn2.mean", (8,)),
                                                          b.init("bn2.var", (8,), positive=True)], ["bn2"], name="bn2"))
    b.conv("y", b.op("Relu", ["bn2"], "r2"), 8, 2)
    m = b.build("y", [1, 2, 5, 5])
    text = "prune<ratios=conv1:0.5,conv2:0.25>"
    gone = removed_channels(m, text)
    out, modified, _ = run_pass(m, text)
    assert modified and "Identity" not in ops(out)
    shapes = {i.name: list(i.dims) for i in out.graph.initializer}
    assert "ones" not in shapes and shapes["g1_pruned"] == [4] and shapes["g2_pruned"] == [6]
    ref = zeroed(m, {"conv1.w": (0, gone["conv1"]), "conv1.b": (0, gone["conv1"]), "bn1.beta": (0, gone["conv1"]),
                     "bn1.mean": (0, gone["conv1"]), "conv2.w": (0, gone["conv2"]), "conv2.b": (0, gone["conv2"]),
                     "bn2.beta": (0, gone["conv2"]), "bn2.mean": (0, gone["conv2"])})
    assert_same(ref, out, b.feeds())
