"""LSTM / GRU / RNN converters (``backends/tvm/recurrent.py``): small random models through
``optc.compile`` (whose verification against onnxruntime must pass) and ``optc.run``, compared
with onnxruntime again at an explicit float32 tolerance. The ONNX node tests of these ops run in
``tests/test_node_tests.py`` (listed in ``node_tests_known.json``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, B, I, H = 4, 3, 5, 3
ATOL, RTOL = 1e-5, 1e-4


def _model(op_type: str, *, direction: str = "forward", attrs: dict | None = None, bias: bool = True,
           seq: str | None = None, initial: bool = False, peepholes: bool = False,
           outputs: tuple[str, ...] = ("Y", "Y_h"), layout: int = 0, seed: int = 0,
           dims: tuple[int, int, int, int] = (T, B, I, H)) -> onnx.ModelProto:
    """One recurrent node; weights are initializers. ``seq``: None, "input" (graph input
    ``sequence_lens``) or "full" (a constant T for every sequence). ``dims``: (T, B, I, H)."""
    T, B, I, H = dims  # noqa: N806 - the ONNX names
    rng = np.random.default_rng(seed)
    d, g = (2 if direction == "bidirectional" else 1), GATES[op_type]
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (d, g * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-1, 1, (d, g * H, H)).astype(np.float32), "R")]
    names = ["X", "W", "R", "", "", "", "", ""]
    x_shape = [T, B, I] if layout == 0 else [B, T, I]
    state = [d, B, H] if layout == 0 else [B, d, H]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (d, 2 * g * H)).astype(np.float32), "B"))
        names[3] = "B"
    if seq == "input":
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
        names[4] = "sequence_lens"
    elif seq == "full":
        inits.append(numpy_helper.from_array(np.full(B, T, np.int32), "sequence_lens"))
        names[4] = "sequence_lens"
    if initial:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, state).astype(np.float32), "initial_h"))
        names[5] = "initial_h"
        if op_type == "LSTM":
            inits.append(numpy_helper.from_array(rng.uniform(-1, 1, state).astype(np.float32), "initial_c"))
            names[6] = "initial_c"
    if peepholes:
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, (d, 3 * H)).astype(np.float32), "P"))
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    all_outputs = ["Y", "Y_h", "Y_c"][: 3 if op_type == "LSTM" else 2]
    node_outputs = [o if o in outputs else "" for o in all_outputs]
    while node_outputs[-1] == "":
        node_outputs.pop()
    node = helper.make_node(op_type, names, node_outputs, hidden_size=H, direction=direction,
                            **({"layout": layout} if layout else {}), **(attrs or {}))
    shapes = {"Y": [T, d, B, H] if layout == 0 else [B, T, d, H], "Y_h": state, "Y_c": state}
    graph = helper.make_graph([node], op_type.lower(), graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model: onnx.ModelProto, lens=None, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    x = model.graph.input[0].type.tensor_type.shape
    feeds = {"X": rng.uniform(-2, 2, [v.dim_value for v in x.dim]).astype(np.float32)}
    if lens is not None:
        feeds["sequence_lens"] = np.asarray(lens, np.int32)
    return feeds


def _ort(model: onnx.ModelProto, feeds: dict) -> dict:
    from optc import verify

    sess = verify.ort_session(model)
    return dict(zip([o.name for o in model.graph.output], sess.run(None, feeds)))


def _compile_and_compare(tmp_path, model: onnx.ModelProto, feeds: dict, **options) -> dict:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    optc.compile(path, "cpu", tmp_path / "pkg", inputs=feeds,
                 options=optc.CompileOptions.of(measure=False, **options))
    got = optc.run(tmp_path / "pkg", feeds)
    if options.get("verify_outputs", True):
        for name, want in _ort(model, feeds).items():
            np.testing.assert_allclose(got[name], want, atol=ATOL, rtol=RTOL, err_msg=name)
    return got


CASES = {
    # name: (op, model kwargs, sequence lengths fed)
    "lstm-bidirectional-all-inputs-variable-lengths": (
        "LSTM", dict(direction="bidirectional", seq="input", initial=True, peepholes=True,
                     outputs=("Y", "Y_h", "Y_c")), [4, 1, 2]),
    "lstm-reverse-activations-clip-input-forget": (
        "LSTM", dict(direction="reverse", peepholes=True, outputs=("Y", "Y_h", "Y_c"),
                     attrs=dict(activations=["HardSigmoid", "ScaledTanh", "Softsign"], activation_alpha=[0.3, 0.8],
                                activation_beta=[0.4, 1.5], clip=0.7, input_forget=1)), None),
    "lstm-forward-constant-full-lengths-y-c-only": (
        "LSTM", dict(seq="full", initial=True, outputs=("Y_c",)), None),
    "lstm-bidirectional-per-direction-activations": (
        "LSTM", dict(direction="bidirectional", bias=False, outputs=("Y",),
                     attrs=dict(activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Elu", "Softplus"],
                                activation_alpha=[0.25, 0.9], activation_beta=[0.45])), None),
    "gru-bidirectional-linear-before-reset-variable-lengths": (
        "GRU", dict(direction="bidirectional", seq="input", initial=True,
                    attrs=dict(linear_before_reset=1)), [2, 4, 3]),
    "gru-forward-clip-activations": (
        "GRU", dict(attrs=dict(activations=["HardSigmoid", "Affine"], activation_alpha=[0.3, 0.5],
                               activation_beta=[0.5, 0.1], clip=0.9)), None),
    "gru-reverse-variable-lengths": ("GRU", dict(direction="reverse", seq="input", initial=True), [1, 3, 4]),
    "rnn-bidirectional-relu-leakyrelu-variable-lengths": (
        "RNN", dict(direction="bidirectional", seq="input", initial=True,
                    attrs=dict(activations=["Relu", "LeakyRelu"], activation_alpha=[0.2])), [3, 4, 2]),
    "rnn-forward-thresholdedrelu": (
        "RNN", dict(attrs=dict(activations=["ThresholdedRelu"], activation_alpha=[0.4])), None),
    "rnn-reverse-sigmoid-clip": (
        "RNN", dict(direction="reverse", outputs=("Y_h",), attrs=dict(activations=["Sigmoid"], clip=0.5)), None),
}


@pytest.mark.tvm
@pytest.mark.parametrize("name", list(CASES))
def test_recurrent_matches_onnxruntime(tmp_path, name):
    op_type, kwargs, lens = CASES[name]
    model = _model(op_type, **kwargs)
    _compile_and_compare(tmp_path, model, _feeds(model, lens))


@pytest.mark.tvm
@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
def test_batch_first_layout(tmp_path, op_type):
    """layout 1 (onnxruntime's CPU provider refuses it): the same weights as layout 0 on the
    transposed input must give the transposed outputs."""
    outputs = ("Y", "Y_h", "Y_c") if op_type == "LSTM" else ("Y", "Y_h")
    kw = dict(direction="bidirectional", initial=True, outputs=outputs)
    ref_model = _model(op_type, **kw)
    x = _feeds(ref_model)["X"]
    want = _ort(ref_model, {"X": x})
    model = _model(op_type, layout=1, **kw)
    ref_inits = {i.name: numpy_helper.to_array(i) for i in ref_model.graph.initializer}
    for init in model.graph.initializer:  # the same weights; states batch first
        value = ref_inits[init.name]
        init.CopyFrom(numpy_helper.from_array(value.transpose(1, 0, 2) if init.name.startswith("initial_")
                                              else value, init.name))
    got = _compile_and_compare(tmp_path, model, {"X": x.transpose(1, 0, 2).copy()}, verify_outputs=False)
    np.testing.assert_allclose(got["Y"], want["Y"].transpose(2, 0, 1, 3), atol=ATOL, rtol=RTOL)
    for name in outputs[1:]:
        np.testing.assert_allclose(got[name], want[name].transpose(1, 0, 2), atol=ATOL, rtol=RTOL)


def test_kernel_only_for_float32_on_cpus():
    from optc.backends.tvm.recurrent import use_kernel

    assert use_kernel("float32", "llvm") and use_kernel("float32")
    assert not use_kernel("float64", "llvm") and not use_kernel("float16", "llvm")
    assert not use_kernel("float32", "cuda")


def test_activation_parameters_consumed_in_order():
    from optc.backends.tvm.recurrent import activation_specs

    specs = activation_specs("LSTM", {"activations": [b"HardSigmoid", b"Tanh", b"LeakyRelu"],
                                      "activation_alpha": [0.3, 0.1], "activation_beta": [0.4]}, 1)
    assert specs == [[("hardsigmoid", 0.3, 0.4), ("tanh", 0.0, 0.0), ("leakyrelu", 0.1, 0.0)]]
    defaults = activation_specs("GRU", {}, 2)
    assert defaults == [[("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0)]] * 2
    with pytest.raises(ValueError, match="unsupported activation"):
        activation_specs("RNN", {"activations": [b"Gelu"]}, 1)


@pytest.mark.tvm
@pytest.mark.qemu
def test_lstm_on_arm(tmp_path):
    """A small bidirectional LSTM with variable lengths, cross-compiled for aarch64 and verified
    under qemu-user against onnxruntime."""
    import shutil

    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    model = _model("LSTM", direction="bidirectional", seq="input", initial=True, peepholes=True,
                   outputs=("Y", "Y_h", "Y_c"))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    report = optc.compile(path, "arm", tmp_path / "pkg", inputs=_feeds(model, [4, 2, 3]),
                          options=optc.CompileOptions.of(measure=False))
    assert report["verify"]["passed"], report["verify"]


# ---------------------------------------------------------------------------------------------
# the recurrent kernel (backends/tvm/recurrent_kernel.py): one TIR function per node

# hidden sizes past one register tile of the GEMV (8 AVX2 vectors = 64 gate outputs) and one
# vector of the cell, with and without a remainder
KERNEL_CASES = {
    "lstm-bidirectional-h40-batch2-lengths-peepholes": (
        "LSTM", dict(direction="bidirectional", seq="input", initial=True, peepholes=True,
                     outputs=("Y", "Y_h", "Y_c")), (5, 2, 7, 40), [5, 3]),
    "lstm-reverse-h19": ("LSTM", dict(direction="reverse", outputs=("Y", "Y_h", "Y_c")), (6, 1, 4, 19), None),
    "gru-bidirectional-h36-lengths": (
        "GRU", dict(direction="bidirectional", seq="input", initial=True), (4, 2, 5, 36), [2, 4]),
    "gru-forward-h24-linear-before-reset": (
        "GRU", dict(initial=True, attrs=dict(linear_before_reset=1)), (5, 1, 3, 24), None),
    "rnn-bidirectional-h70": ("RNN", dict(direction="bidirectional", initial=True), (4, 3, 6, 70), None),
    # GEMVs of >= PARALLEL_GEMV_MACS multiply-adds: register tiles in a parallel loop per step
    "lstm-bidirectional-h200-batch2-lengths-parallel": (
        "LSTM", dict(direction="bidirectional", seq="input", initial=True, outputs=("Y", "Y_h", "Y_c")),
        (3, 2, 5, 200), [3, 2]),
    "gru-forward-h256-parallel": ("GRU", dict(initial=True), (3, 1, 4, 256), None),
}


@pytest.mark.tvm
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_kernel_larger_cells_match_onnxruntime(tmp_path, name):
    op_type, kwargs, dims, lens = KERNEL_CASES[name]
    model = _model(op_type, dims=dims, **kwargs)
    _compile_and_compare(tmp_path, model, _feeds(model, lens))


def test_large_gemvs_run_their_tiles_in_parallel():
    """A step's GEMV of at least PARALLEL_GEMV_MACS multiply-adds (H = 200 LSTM: 200 x 800)
    runs its full register tiles in a parallel loop, the remainder tile serially; small cells
    (H = 40) stay serial (a thread-pool launch per step would cost more than it saves)."""
    from optc.backends.tvm import recurrent_kernel as rk

    acts = (("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0), ("tanh", 0.0, 0.0))
    big = rk.kernel_source(rk.CellSpec("LSTM", 3, 1, 200, (False,), (acts,)))
    assert "for jt in T.parallel(12):" in big and "T.parallel(1)" not in big
    small = rk.kernel_source(rk.CellSpec("LSTM", 3, 1, 40, (False,), (acts,)))
    assert "T.parallel" not in small


@pytest.mark.tvm
def test_kernel_is_one_prescheduled_function():
    """A bidirectional LSTM over 4 steps lowers to one kernel call (no per-step matmuls), which
    optc's CPU scheduling leaves as it is."""
    from tvm import tirx

    from optc.backends.tvm import lower, schedule
    from optc.frontend import TensorSpec
    from optc.targets import get_target

    model = _model("LSTM", direction="bidirectional", initial=True, outputs=("Y", "Y_h", "Y_c"))
    target = get_target("cpu")
    mod, _ = lower.prepare_module(model, [TensorSpec("X", "float32", (T, B, I))], target, embed_params=True)
    kernels = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert kernels == ["lstm_kernel"], kernels
    calls = [c for c in str(mod["main"]).split("\n") if "R.matmul" in c]
    assert len(calls) == 1, calls  # the input projection of every step and direction
    tgt = lower.tvm_target(target)
    with tgt:
        fused = schedule.fuse_for_schedule(mod, tgt)
    log: list = []
    schedule.schedule_cpu(fused, tgt, log)
    assert {"function": "lstm_kernel", "rule": "pre-scheduled"} in log, log


def _run_kernel(spec, args: dict) -> dict:
    import tvm

    from optc.backends.tvm import recurrent_kernel as rk

    func = rk.kernel(spec).with_attr("global_symbol", "k")
    lib = tvm.compile(tvm.IRModule({"k": func}), target=tvm.target.Target({"kind": "llvm"}))
    shapes = rk.kernel_args(spec)
    tensors = {n: tvm.runtime.tensor(args[n] if n in args else np.zeros(s, dt)) for n, s, dt in shapes}
    lib["k"](*[tensors[n] for n, _, _ in shapes])
    return {n: tensors[n].numpy() for n, _, _ in shapes}


ACTIVATION_REFS = {
    "relu": lambda x, a, b: np.maximum(x, 0), "tanh": lambda x, a, b: np.tanh(x),
    "sigmoid": lambda x, a, b: 1 / (1 + np.exp(-x)), "affine": lambda x, a, b: a * x + b,
    "leakyrelu": lambda x, a, b: np.where(x >= 0, x, a * x),
    "thresholdedrelu": lambda x, a, b: np.where(x > a, x, 0), "scaledtanh": lambda x, a, b: a * np.tanh(b * x),
    "hardsigmoid": lambda x, a, b: np.clip(a * x + b, 0, 1),
    "elu": lambda x, a, b: np.where(x >= 0, x, a * np.expm1(x)),
    "softsign": lambda x, a, b: x / (1 + np.abs(x)), "softplus": lambda x, a, b: np.logaddexp(x, 0),
}


@pytest.mark.tvm
@pytest.mark.parametrize("act", list(ACTIVATION_REFS))
def test_kernel_activations_match_numpy(act):
    """Each activation inside the kernel (its polynomial exp included) on values from -100 to
    100, through a one-step RNN with no recurrent weights: finite, within 2e-6 relative."""
    from optc.backends.tvm import recurrent_kernel as rk

    x = np.concatenate([np.linspace(-100, 100, 41), np.linspace(-6, 6, 59)]).astype(np.float32)
    alpha, beta = 0.7, 0.3
    spec = rk.CellSpec("RNN", 1, 1, x.size, (False,), (((act, alpha, beta),),))
    got = _run_kernel(spec, {"xw": x.reshape(1, -1)})["y"].reshape(-1)
    want = ACTIVATION_REFS[act](x.astype(np.float64), alpha, beta)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


@pytest.mark.tvm
def test_verification_refuses_a_wrong_kernel(tmp_path, monkeypatch):
    """The comparison with onnxruntime is what vouches for the kernel: one that runs the reverse
    direction forwards (a deliberate bug) must be refused by optc.compile."""
    from optc.backends.tvm import recurrent_kernel as rk
    from optc.errors import VerificationError

    real = rk.kernel_source
    monkeypatch.setattr(rk, "kernel_source", lambda spec: real(
        rk.CellSpec(**{**spec.__dict__, "reverse": tuple(False for _ in spec.reverse)})))
    model = _model("GRU", direction="reverse")
    with pytest.raises(VerificationError, match="differs from onnxruntime"):
        _compile_and_compare(tmp_path, model, _feeds(model))


# ---------------------------------------------------------------------------------------------
# recurrent weights on an int8 grid (a quantized model's, dequantized): stored as int8 codes

def _on_int8_grid(model: onnx.ModelProto, seed: int = 5, span: int = 127) -> onnx.ModelProto:
    """``model`` with R replaced by int8 codes in [-span, span] times a scale per gate output
    (per row of R [D, G*H, H]), some rows all zero: a quantized model's recurrent weight."""
    rng = np.random.default_rng(seed)
    r = next(t for t in model.graph.initializer if t.name == "R")
    d, rows, cols = r.dims
    codes = rng.integers(-span, span + 1, (d, rows, cols)).astype(np.float32)
    codes[:, 1] = 0
    scale = rng.uniform(0.5, 2.0, (d, rows, 1)).astype(np.float32) / (span * np.sqrt(cols))
    r.CopyFrom(numpy_helper.from_array((codes * scale).astype(np.float32), "R"))
    return model


GRID_CASES = {
    "lstm-bidirectional-h40-lengths": ("LSTM", dict(direction="bidirectional", seq="input", initial=True,
                                                    outputs=("Y", "Y_h", "Y_c")), (5, 2, 7, 40), [5, 3]),
    "gru-reverse-h36-two-gemvs": ("GRU", dict(direction="reverse", initial=True), (4, 1, 5, 36), None),
    "rnn-forward-h70": ("RNN", dict(initial=True), (4, 3, 6, 70), None),
}


@pytest.mark.tvm
@pytest.mark.parametrize("name", list(GRID_CASES))
def test_recurrent_weights_on_an_int8_grid_run_as_int8_codes(tmp_path, monkeypatch, name):
    """R on an int8 grid reaches the kernel as int8 codes and per-column scales (a quarter of
    the bytes per step) and still matches onnxruntime; off the grid (the same model's original
    uniform weights) it stays float32."""
    from optc.backends.tvm import recurrent_kernel as rk

    seen: list[bool] = []
    real = rk.kernel
    monkeypatch.setattr(rk, "kernel", lambda spec: (seen.append(spec.int8_weights), real(spec))[1])
    op_type, kwargs, dims, lens = GRID_CASES[name]
    for sub, model in (("grid", _on_int8_grid(_model(op_type, dims=dims, **kwargs))),
                       ("float", _model(op_type, dims=dims, **kwargs))):
        (tmp_path / sub).mkdir()
        _compile_and_compare(tmp_path / sub, model, _feeds(model, lens))
    assert seen == [True, False]


def test_int8_grid_finds_exact_codes_and_refuses_everything_else():
    from optc.backends.tvm import recurrent_kernel as rk

    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (2, 30, 12))
    codes[:, :, 3] = 0  # a column of zeros
    codes[:, :, 4] = 3 * rng.integers(-40, 41, 30)  # its smallest nonzero magnitude is 3 steps or more
    codes[0, :, 4][:2] = (3, 5)
    scale = rng.uniform(1e-4, 1e-1, (2, 1, 12))
    rt = (codes * scale).astype(np.float32)
    q, s = rk.int8_grid(rt)
    assert q.dtype == np.int8 and s.shape == (2, 12)
    back = q.astype(np.float64) * s[:, None, :]
    assert np.all(np.abs(back - rt) <= 2.0 ** -21 * np.abs(rt))
    assert rk.int8_grid(rng.uniform(-1, 1, (1, 30, 12)).astype(np.float32)) is None  # float weights
    wide = (rng.integers(-200, 201, (1, 30, 12)) * 0.01).astype(np.float32)
    wide[0, 0, :] = 0.01  # smallest step present: codes up to 200 do not fit int8
    assert rk.int8_grid(wide) is None
    near = rt.copy()
    near[1, 7, 2] = np.nextafter(near[1, 7, 2], np.float32(0)) * np.float32(1 + 1e-4)  # one value off the grid
    assert rk.int8_grid(near) is None


@pytest.mark.tvm
def test_verification_refuses_wrong_int8_weight_scales(tmp_path, monkeypatch):
    """The int8 path is vouched for by the comparison with onnxruntime: scales 2 % off (a
    deliberate bug) are refused."""
    from optc.backends.tvm import recurrent_kernel as rk
    from optc.errors import VerificationError

    real = rk.int8_grid
    monkeypatch.setattr(rk, "int8_grid", lambda rt: (lambda g: (g[0], g[1] * np.float32(1.02)) if g else g)(real(rt)))
    model = _on_int8_grid(_model("LSTM", dims=(5, 1, 4, 24)))
    with pytest.raises(VerificationError, match="differs from onnxruntime"):
        _compile_and_compare(tmp_path, model, _feeds(model))


def _if_around_lstms() -> onnx.ModelProto:
    """A data-dependent If (sum of X > 0) whose two branches run an LSTM each (different
    weights, outer-scope initializers), as Silero VAD's sample-rate If does."""
    rng = np.random.default_rng(3)
    vi = helper.make_tensor_value_info
    branches = {}
    for arm in ("then", "else"):
        node = helper.make_node("LSTM", ["X", f"W_{arm}", f"R_{arm}", f"B_{arm}"], ["", f"h_{arm}"], hidden_size=H)
        branches[arm] = helper.make_graph([node], arm, [], [vi(f"h_{arm}", TensorProto.FLOAT, [1, B, H])])
    inits = [numpy_helper.from_array(np.float32(0.0), "zero")]
    for arm in ("then", "else"):
        inits += [numpy_helper.from_array(rng.uniform(-1, 1, s).astype(np.float32), f"{n}_{arm}")
                  for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)))]
    nodes = [helper.make_node("ReduceSum", ["X"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["Y_h"], then_branch=branches["then"], else_branch=branches["else"])]
    graph = helper.make_graph(nodes, "if_lstm", [vi("X", TensorProto.FLOAT, [T, B, I])],
                              [vi("Y_h", TensorProto.FLOAT, [1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.tvm
def test_if_branches_run_only_when_taken(tmp_path):
    """Each arm of a data-dependent If is a function of its own (``control_flow.lift_branch``):
    ``main`` computes only the condition before the If and calls a branch function in each arm
    (TVM's importer alone emitted both branches' ops before the If, so both LSTMs ran on every
    call), and both arms verify."""
    from tvm import relax

    from optc.backends.tvm import lower
    from optc.frontend import TensorSpec
    from optc.targets import get_target

    model = _if_around_lstms()
    mod, _ = lower.prepare_module(model, [TensorSpec("X", "float32", (T, B, I))], get_target("cpu"),
                                  embed_params=True)
    branches = [gv.name_hint for gv, f in mod.functions_items()
                if isinstance(f, relax.Function) and gv.name_hint.startswith("if_branch")]
    # the arms differ only in their (outer) weights, passed as arguments: one function
    assert branches == ["if_branch"], [gv.name_hint for gv in mod.get_global_vars()]
    main = str(mod["main"])
    assert "lstm_kernel" not in main and main.count("if_branch(") == 2, main
    x = np.abs(_feeds(_model("LSTM"))["X"])
    feeds = {"X": np.concatenate([x, -x])}  # two calls (samples stacked on axis 0): one per arm
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    report = optc.compile(path, "cpu", tmp_path / "pkg", inputs=feeds,
                          options=optc.CompileOptions.of(measure=False, verify_samples=2))
    assert report["verify"]["passed"], report["verify"]
    for sign in (1, -1):
        one = {"X": sign * x}
        got = optc.run(tmp_path / "pkg", one)["Y_h"]
        np.testing.assert_allclose(got, _ort(model, one)["Y_h"], atol=ATOL, rtol=RTOL)


@pytest.mark.tvm
@pytest.mark.parametrize("name", ["lstm-bidirectional-all-inputs-variable-lengths",
                                  "gru-bidirectional-linear-before-reset-variable-lengths", "gru-reverse-variable-lengths"])
def test_unrolled_path_still_matches_onnxruntime(tmp_path, monkeypatch, name):
    """The unrolled Relax path (kept for non-float32 models and GPU targets,
    ``recurrent.use_kernel``) on float32 models, forced, so that it stays tested."""
    from optc.backends.tvm import recurrent, recurrent_kernel

    monkeypatch.setattr(recurrent, "use_kernel", lambda dtype, target_kind=None: False)
    monkeypatch.setattr(recurrent_kernel, "kernel", lambda spec: pytest.fail("the kernel path was taken"))
    op_type, kwargs, lens = CASES[name]
    model = _model(op_type, **kwargs)
    _compile_and_compare(tmp_path, model, _feeds(model, lens))
