"""Bit-serial TVM kernels (optc.backends.tvm.bitserial) against the numpy references of
optc.passes.optc_ops: integer popcount results bit for bit, several shapes (channel counts that
are not multiples of 64, padding, strides, dilations), vpopcntq on x86 / cnt on AArch64, and a
binarized model compiled end to end by ``optc compile`` on cpu and (qemu) arm."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from optc.backends.tvm import bitserial as bs  # noqa: E402
from optc.passes import optc_ops as ops  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
X86 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}


def _host_has_vpopcntdq() -> bool:
    try:
        return "avx512_vpopcntdq" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _run(func, arrays, out_shape, dtype=np.float32):
    lib = bs.build_standalone(func, tvm.target.Target(X86 if _host_has_vpopcntdq() else {"kind": "llvm"}))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype), dev)
    lib["main"](*args, out)
    return out.numpy()


def _bipolar(rng, shape):
    return rng.choice(np.array([-1.0, 1.0], np.float32), shape)


# ------------------------------------------------------------------------------- packing
@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 130, 256])
def test_pack_unpack_round_trip(length):
    rng = np.random.default_rng(length)
    bits = rng.integers(0, 2, (3, 2, length)).astype(bool)
    words = ops.pack_bits(bits, axis=-1)
    assert words.dtype == np.uint64 and words.shape == (3, 2, ops.words(length))
    np.testing.assert_array_equal(ops.unpack_bits(words, length, axis=-1), bits)
    # element k is bit k % 64 of word k // 64 (LSB first); tail bits are 0
    k = length - 1
    got = (words[..., k // 64] >> np.uint64(k % 64)) & np.uint64(1)
    np.testing.assert_array_equal(got.astype(bool), bits[..., k])
    if length % 64:
        assert not np.any(words[..., -1] >> np.uint64(length % 64))
    # packing along another axis
    np.testing.assert_array_equal(ops.unpack_bits(ops.pack_bits(bits, axis=1), 2, axis=1), bits)


def test_binary_dense_int_is_the_sign_dot_product():
    rng = np.random.default_rng(0)
    x, w = _bipolar(rng, (4, 100)), _bipolar(rng, (7, 100))
    got = ops.binary_dense_int(ops.pack_bits(x >= 0), ops.pack_bits(w >= 0), 100)
    np.testing.assert_array_equal(got, (x @ w.T).astype(np.int64))


# ------------------------------------------------------------------------------- binary kernels
@pytest.mark.parametrize("m,k,n", [(1, 4096, 256), (3, 100, 10), (2, 256, 33), (5, 64, 7), (1, 640, 17)])
def test_binary_dense_exact(m, k, n):
    rng = np.random.default_rng(m * k + n)
    x = _bipolar(rng, (m, k))
    wbits = ops.pack_bits(rng.integers(0, 2, (n, k)).astype(bool))
    # alpha absent: the output is the integer dot product itself (exact in float32)
    y = _run(bs.binary_dense_func(m, k, n, has_alpha=False), [x, wbits], (m, n))
    np.testing.assert_array_equal(y, ops.binary_dense_int(ops.pack_bits(x >= 0), wbits, k).astype(np.float32))
    alpha = rng.uniform(0.1, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y2 = _run(bs.binary_dense_func(m, k, n, has_bias=True), [x, wbits, alpha, bias], (m, n))
    ref = ops.run_op("BinaryDense", x, wbits, alpha, bias, in_features=k)
    np.testing.assert_allclose(y2, ref, rtol=1e-6, atol=1e-5)


CONV_CASES = [
    # B, C, H, W, N, kernel, pads, strides, dilations
    (1, 256, 12, 12, 64, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1)),
    (2, 16, 8, 8, 32, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1)),
    (1, 70, 9, 7, 10, (3, 3), (1, 0, 2, 1), (2, 1), (1, 2)),
    (1, 32, 4, 4, 64, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1)),
    (1, 3, 5, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), (1, 1)),
    (1, 130, 6, 6, 9, (2, 3), (0, 2, 1, 0), (1, 2), (1, 1)),
    (3, 20, 7, 9, 16, (3, 5), (2, 1, 0, 3), (1, 1), (2, 1)),  # row-packed (kw, c) layout, 2 words
    (2, 24, 9, 10, 12, (3, 3), (1, 1, 1, 1), (2, 2), (1, 2)),  # row-packed, strided, dilated
]


def _lanes(w, n, kh, kw, c, planes=None):
    shape = bs.conv_weight_lanes_shape(n, kh, kw, c, planes)
    return _run(bs.conv_weight_lanes_func(n, kh, kw, c, planes), [w], shape, np.uint64)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_binary_conv2d_exact(case):
    b, c, h, w, n, ks, pads, st, dl = case
    assert bs.row_packed(c, ks) == (c < 64 and ops.words(ks[1] * c) < ks[1])
    rng = np.random.default_rng(sum(case[:5]))
    x = _bipolar(rng, (b, c, h, w))
    wsign = rng.integers(0, 2, (n, ks[0], ks[1], c)).astype(bool)
    wpacked = ops.pack_bits(wsign.reshape(n, -1))  # the op contract: (kh, kw, c) order
    wt = _lanes(wpacked, n, ks[0], ks[1], c)
    oh, ow = ops.conv_output_shape(h, w, ks, pads, st, dl)
    func = bs.binary_conv2d_func((b, c, h, w), n, ops.ConvGeometry(ks, pads, st, dl), has_alpha=False)
    y = _run(func, [x, wt], (b, n, oh, ow))
    ref = ops.binary_conv2d_int(ops.pack_bits(x.transpose(0, 2, 3, 1) >= 0), ops.pack_bits(wsign), c, ks, pads, st, dl)
    np.testing.assert_array_equal(y, ref.astype(np.float32))
    # ... and the integer reference is the zero-padded conv of the +-1 tensors
    import torch

    wf = np.where(wsign, 1.0, -1.0).astype(np.float32).transpose(0, 3, 1, 2)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
    conv = torch.nn.functional.conv2d(xt, torch.from_numpy(wf), stride=st, dilation=dl).numpy()
    np.testing.assert_array_equal(ref.astype(np.float32), conv)


FUSED_CASES = [
    # B, C, H, W, N, kernel, pads, strides, dilations, pool, with direction
    (2, 64, 8, 8, 16, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1), (2, 2), True),
    (1, 16, 8, 8, 24, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1), (2, 2), False),  # row-packed layout
    (1, 70, 7, 9, 8, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1), (2, 2), True),  # odd sizes: floor
    (1, 32, 5, 6, 12, (3, 3), (0, 1, 1, 0), (1, 1), (1, 1), (1, 1), True),  # no pool, N % 8 != 0
    (1, 130, 6, 6, 8, (2, 2), (0, 0, 0, 0), (1, 1), (1, 1), (1, 2), False),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-pool{c[9][0]}{c[9][1]}")
def test_binary_conv2d_threshold_exact(case):
    """The fused conv + integer threshold + max-pool kernel equals the numpy reference of
    BinaryConv2dThreshold, which equals BinaryConv2d -> SignThreshold -> MaxPool."""
    b, c, h, w, n, ks, pads, st, dl, pool, with_d = case
    rng = np.random.default_rng(sum(case[:5]))
    x = _bipolar(rng, (b, c, h, w))
    wsign = rng.integers(0, 2, (n, ks[0], ks[1], c)).astype(bool)
    wpacked = ops.pack_bits(wsign.reshape(n, -1))
    wt = _lanes(wpacked, n, ks[0], ks[1], c)
    oh, ow = ops.conv_output_shape(h, w, ks, pads, st, dl)
    # integer thresholds around the middle of the dot's range, some +-inf (constant channels)
    t = np.round(rng.normal(0, np.sqrt(ks[0] * ks[1] * c), n)).astype(np.float32)
    t[0], t[-1] = np.inf, -np.inf
    d = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32) if with_d else None
    attrs = dict(in_channels=c, kernel_shape=list(ks), pads=list(pads), strides=list(st), dilations=list(dl))
    want = ops.run_op("BinaryConv2dThreshold", x, wpacked, t, d, pool_shape=list(pool), **attrs)
    conv = ops.run_op("BinaryConv2d", x, wpacked, **attrs)
    thr = ops.run_op("SignThreshold", conv, t, d)
    ph, pw = pool
    composed = thr[:, :, :oh // ph * ph, :ow // pw * pw].reshape(b, n, oh // ph, ph, ow // pw, pw).max(axis=(3, 5))
    np.testing.assert_array_equal(want, composed)
    assert set(np.unique(want)) <= {-1.0, 1.0} and len(np.unique(want)) == 2
    func = bs.binary_conv2d_threshold_func((b, c, h, w), n, ops.ConvGeometry(ks, pads, st, dl), with_d,
                                           pool)
    got = _run(func, [x, wt, t] + ([d] if with_d else []), (b, n, oh // ph, ow // pw))
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------- k-bit kernels
@pytest.mark.parametrize("m,k,n,ab,wb", [(2, 100, 10, 2, 3), (1, 256, 64, 4, 1), (3, 64, 8, 1, 2), (1, 1024, 300, 3, 2)])
def test_bitserial_dense_exact(m, k, n, ab, wb):
    rng = np.random.default_rng(k + n)
    s = 0.25
    qa = rng.integers(0, 2**ab, (m, k))
    x = (qa * s).astype(np.float32)
    qw = rng.integers(0, 2**wb, (n, k))
    w = ops.planes(qw, wb)
    func = bs.bitserial_dense_func(m, k, n, ab, wb, s)
    one, zero = np.ones(n, np.float32), np.zeros(n, np.float32)
    d = _run(func, [x, w, one, zero], (m, n))  # = s * D
    s_ = _run(func, [x, w, zero, one], (m, n))  # = s * S
    np.testing.assert_array_equal(d, (s * (qa @ qw.T)).astype(np.float32))
    np.testing.assert_array_equal(s_, (s * np.broadcast_to(qa.sum(1)[:, None], (m, n))).astype(np.float32))


@pytest.mark.parametrize("case", [(1, 70, 9, 7, 10, (3, 3), (1, 0, 2, 1), (2, 1), (1, 2), 2, 2),
                                  (2, 16, 8, 8, 32, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1), 4, 1),
                                  (1, 128, 6, 6, 16, (3, 3), (0, 0, 0, 0), (1, 1), (1, 1), 1, 1)],
                         ids=lambda c: "x".join(map(str, c[:5])))
def test_bitserial_conv2d_exact(case):
    b, c, h, w, n, ks, pads, st, dl, ab, wb = case
    rng = np.random.default_rng(sum(case[:5]))
    s = 0.5
    qa = rng.integers(0, 2**ab, (b, c, h, w))
    x = (qa * s).astype(np.float32)
    qw = rng.integers(0, 2**wb, (n, ks[0], ks[1], c))
    wpl = ops.planes(qw.reshape(n, -1), wb)  # [N, wb, words], (kh, kw, c) order
    wt = _lanes(wpl, n, ks[0], ks[1], c, wb)
    oh, ow = ops.conv_output_shape(h, w, ks, pads, st, dl)
    func = bs.bitserial_conv2d_func((b, c, h, w), n, ops.ConvGeometry(ks, pads, st, dl), ab, wb, s)
    one, zero = np.ones(n, np.float32), np.zeros(n, np.float32)
    d = _run(func, [x, wt, one, zero], (b, n, oh, ow))
    import torch

    xt = torch.nn.functional.pad(torch.from_numpy(qa.astype(np.float64)), (pads[1], pads[3], pads[0], pads[2]))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(qw.transpose(0, 3, 1, 2).astype(np.float64)),
                                     stride=st, dilation=dl).numpy()
    np.testing.assert_array_equal(d, (s * ref).astype(np.float32))
    # the numpy reference op agrees too
    y = ops.run_op("BitserialConv2d", x, wpl, one, zero, in_channels=c, kernel_shape=ks, pads=pads, strides=st,
                                 dilations=dl, act_bits=ab, weight_bits=wb, act_scale=s)
    np.testing.assert_array_equal(y, d)


# ------------------------------------------------------------------------------- assembly
def _asm(target: dict) -> str:
    ex = tvm.compile(tvm.IRModule({"main": bs.binary_dense_func(1, 1024, 64).with_attr("global_symbol", "main")}),
                     target=tvm.target.Target(target))
    return ex.mod.inspect_source("asm")


def test_x86_assembly_uses_vpopcntq():
    asm = _asm(X86)
    assert "vpopcntq" in asm and "%zmm" in asm


def test_aarch64_assembly_uses_cnt():
    asm = _asm(A72)
    assert any(line.split()[:1] == ["cnt"] for line in asm.splitlines() if line.strip()), "no NEON cnt"


# ------------------------------------------------------------------------------- end to end
def _bmlp() -> Path:
    path = REPO / "models" / "digits_bmlp.onnx"
    if not path.is_file():
        pytest.skip("models/digits_bmlp.onnx not built (python -m optc.models.binary_digits)")
    return path


def _compile(tmp_path, target):
    import optc

    out = tmp_path / f"bmlp.{target}"
    rep = optc.compile(_bmlp(), target, out, passes="simplify,sign-to-threshold,binarize",
                       inputs=REPO / "models" / "digits_eval.npz", input_shapes={"input": (4, 1, 8, 8)})
    assert rep["verify"]["passed"] is True, rep["verify"]
    ops_after = {r["name"]: r["details"] for r in rep["passes"]}
    assert ops_after["binarize"]["rewrites"] >= 1
    return rep, out


def test_compile_bmlp_cpu(tmp_path):
    rep, out = _compile(tmp_path, "cpu")
    import onnx

    m = onnx.load(out / "model.onnx")
    assert any(n.domain == ops.DOMAIN and n.op_type == "BinaryDense" for n in m.graph.node)


@pytest.mark.qemu
def test_compile_bmlp_arm(tmp_path):
    from optc.backends.tvm import arm

    if shutil.which(arm.CROSS_CXX) is None or shutil.which(arm.QEMU) is None:
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    _compile(tmp_path, "arm")
