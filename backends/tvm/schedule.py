"""The CPU scheduling stage: parallel, vectorized TIR for every fused operator, without tuning.

TVM 0.27's default CPU pipeline leaves the TIR of each fused operator as naive, scalar,
single-threaded loop nests (TOPI's CPU schedules and AutoTVM are gone; DLight's CPU rules
only cover GEMV and row reductions). This module replaces ``relax.get_default_pipeline`` for
LLVM CPU targets (x86 and AArch64 alike) with the same passes plus two steps:

1. **Layout** (Relax, before legalization): ``ConvertLayout`` rewrites ``conv2d`` to NHWC
   activations with HWIO weights (pooling and elementwise ops follow), so output channels are
   the innermost, contiguous axis of outputs *and* weights for dense, grouped and depthwise
   convolutions alike. Weight transposes on constants are folded at compile time; the input
   and output layout of the model are unchanged (a transpose is inserted at each boundary).
   Before it, the ONNX frontend's ``Clip`` (a raw call_tir) becomes ``R.maximum/minimum`` so
   layouts propagate through ReLU6; after it, weight transposes and the Clip NaN guards are
   folded with numpy (Relax's FoldConstant would JIT one TIR function per shape, 20+ s).
   ``FastMathTransform`` swaps exp/erf/tanh/softmax for TOPI's vectorizable polynomials.
2. **Schedule** (TIR, after ``FuseOps``/``FuseTIR``): :func:`schedule_cpu` applies, per
   fused PrimFunc, the first rule that fits (see its docstring): a register-tiled
   "contraction" schedule for conv/matmul/pooling/mean-like reductions, column and row
   reductions (softmax, layer norm) vectorized per row or chunk, DLight's CPU ``Reduction``
   rule for the other reductions and its ``GEMV`` rule, an injective rule for
   elementwise/data-movement chains, and a safe fallback (outer spatial loop parallel).

Vector widths come from the target (``llvm_get_vector_width``: 512 bits on AVX-512, 128 on
NEON), so the same rules serve every LLVM CPU target. Parallel loops run on TVM's runtime
thread pool; :func:`set_num_threads` (or ``TVM_NUM_THREADS`` before the first call) sets its
size.
"""

from __future__ import annotations

import math

# Loop nests with less work than this (multiply-adds or elements, ~1M: tens of microseconds on
# one core) stay single-threaded: the thread pool's fork/join costs microseconds, and when other
# threads (another runtime's spinning pool, other processes) hold the cores a parallel loop
# waits for a descheduled worker, costing milliseconds on tiny models.
PARALLEL_MIN_WORK = 1 << 20
# the same for row reductions (softmax, layer norm over the last axis), whose elements cost a
# polynomial exp or several passes each: MiniLM's softmax of 12 x 128 x 128 (2^17.6 elements)
# took 254 us on one thread and 176 us in two (AMD EPYC, AVX2)
ROW_PARALLEL_MIN_WORK = 1 << 16
# the same for dot-product kernels (:func:`_rule_dot`), which sum each output across vector lanes:
# openWakeWord's STFT filter bank (257 x 5 outputs of 512 taps, 2^19.3 multiply-adds) runs at
# ~20 GFLOP/s where register tiles reach ~80, so the same time is a quarter of the work (its mel
# front-end at 2 threads: 0.214 -> 0.146 ms a call)
DOT_PARALLEL_MIN_WORK = PARALLEL_MIN_WORK // 4
# A depthwise convolution reads its padding through an in-bounds test, instead of a padded copy,
# where the copy has at least this many elements per multiply-add of the convolution (copy
# elements / (output elements x taps)). The copy is read, written and read again, mostly from
# memory; a test costs a few scalar instructions per pixel and tap, shared by the pixel's vectors.
# Isolated kernels, 1 thread, copy -> test, warm (cold: output and weights flushed):
# 3x3 stride 2 112x112x96 (0.44) 522 -> 294 us (681 -> 432), 3x3 on 7x7 (0.18) 34 -> 22 us;
# kept as a copy: 3x3 on 14x14 (0.145) 63 -> 76 us, on 56x56 (0.12) 360 -> 420 us (781 -> 545
# cold), 5x5 on 14x14 (0.066) 77 -> 88 us.
PAD_INLINE_RATIO = 0.16
# An injective producer read more than once by the blocks after it is inlined only while its
# expression has at most this many nodes: inlining copies it into every read, so a chain of such
# producers grows one expression exponentially (a 1,105-node Keras export, oskut-scads: a
# 20-op float -> int32 index chain whose values each feed two or three later ops became one
# expression whose TIR lowering took 40 s per function; compile 157 -> 36 s).
INLINE_SHARED_MAX_NODES = 64
# Desired number of parallel chunks per core (load balance vs. per-chunk overhead).
CHUNKS_PER_CORE = 4


# ----------------------------------------------------------------------------- thread pool
def set_num_threads(n: int) -> None:
    """Size TVM's runtime thread pool (the threads that run ``parallel`` loops) to ``n``.

    TVM caps the pool at ``TVM_NUM_THREADS`` (default on x86: *half* the logical CPUs, as it
    assumes hyper-threading, so 1 thread on a 2-vCPU machine); this sets the variable and
    reconfigures the pool."""
    import os

    import tvm  # noqa: F401 - loads the runtime that registers the function
    import tvm_ffi

    del tvm
    os.environ["TVM_NUM_THREADS"] = str(int(n))
    tvm_ffi.get_global_func("runtime.config_threadpool")(0, int(n))


def default_threads() -> None:
    """Make TVM's pool use every core this process may use, unless ``TVM_NUM_THREADS`` is set
    (called when optc's TVM backend is imported, before any pool exists)."""
    import os

    from optc.targets import host_cores

    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))


def num_threads() -> int:
    """Threads in TVM's runtime thread pool now."""
    import tvm  # noqa: F401 - loads the runtime that registers the function
    import tvm_ffi

    del tvm

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


# ----------------------------------------------------------------------------- pipeline
def is_cpu_target(target) -> bool:
    return target.kind.name == "llvm"


def relax_pipeline(target, log: list | None = None, pre_schedule=None):
    """A Relax pass running TVM's default CPU pipeline with NHWC conversion before
    legalization and :func:`schedule_cpu` after fusion (non-LLVM targets: TVM's default).
    ``log`` receives :func:`schedule_cpu`'s per-function records; ``pre_schedule(mod,
    target)`` (e.g. a tuning database's ``apply``) runs on the fused module first, and the
    functions it schedules are left to it."""
    import tvm
    from tvm import relax

    if not is_cpu_target(target):
        return relax.get_default_pipeline(target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="OptcCpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            mod = fuse_for_schedule(mod, target, log)
            if pre_schedule is not None:
                mod = pre_schedule(mod, target)
            mod = schedule_cpu(mod, target, log)
            seq = tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            mod = seq(mod)
        return mod

    return _pipeline


def fuse_for_schedule(mod, target, log: list | None = None):
    """The first half of :func:`relax_pipeline` on an LLVM target (call inside ``with
    target``): layout conversion, fast math, library dispatch, legalization and fusion -
    the module whose PrimFuncs :func:`schedule_cpu` schedules (and tuning tunes). ``log``
    receives a ``{"layout": ...}`` record when the NHWC conversion had to be given up."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from .conv_blocked import legalize_conv1d, legalize_conv2d, legalize_matmul

    mod = fast_math(convert_layout(mod, log))
    custom = relax.transform.LegalizeOps({"relax.nn.conv1d": legalize_conv1d, "relax.nn.conv2d": legalize_conv2d,
                                           "relax.matmul": legalize_matmul})
    legalize = [custom if p.info.name == "LegalizeOps" else p for p in cpu.legalize_passes(target)]
    return tvm.transform.Sequential(cpu.library_dispatch_passes(target) + legalize)(mod)


def convert_layout(mod, log: list | None = None):
    """conv2d -> NHWC data / HWIO weights (ops in between follow where Relax can infer
    layouts). Returns ``mod`` unchanged if the conversion fails, and then appends
    ``{"layout": "NCHW kept", "reason": ...}`` to ``log`` (the build report shows it)."""
    from tvm import relax

    if not _calls_any(mod, DESIRED_LAYOUTS):  # nothing to convert; and ConvertLayout can crash the
        return mod  # process (SIGFPE) on modules without convolutions (ONNX DynamicQuantizeLinear)

    def kept(reason: str):
        if log is not None:
            log.append({"layout": "NCHW kept", "reason": reason})
        return mod

    try:
        mod = layout_visible_ops(mod)
        converted = relax.transform.ConvertLayout(_desired_layouts(mod))(mod)
        # TOPI legalizes some ops only in NCHW: keep the module as it was if the conversion
        # left an op that legalization cannot lower (and that it could lower before).
        left = _unlowered_ops(converted) - _unlowered_ops(mod)
        if left:
            return kept(f"NHWC would leave op(s) legalization cannot lower: {', '.join(sorted(left))}")
    except Exception as err:  # noqa: BLE001 - layout conversion is an optimisation only
        return kept(f"Relax ConvertLayout failed: {' '.join(str(err).split())[:200]}")
    return fold_constant_layouts(converted)


# conv2d to NHWC/HWIO, conv1d to NWC/WIO (where :func:`_desired_layouts` keeps it); the transposed
# convolutions stay channels-first (TOPI legalizes them in no other layout): naming their layout
# makes ConvertLayout transpose around them instead of leaving an NWC conv1d_transpose that
# legalization cannot lower, which kept a whole module NCW (a U-Net of dilated conv1d: its
# 7500-frame axis vectorized 4 lanes at a time, 1.8x onnxruntime).
DESIRED_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv1d": ["NWC", "WIO"],
                   "relax.nn.conv2d_transpose": ["NCHW", "IOHW"], "relax.nn.conv1d_transpose": ["NCW", "IOW"]}
# conv1d goes channels-last only where every conv1d of the module reads at least this many
# channels. In NCW a 1x1 conv1d 512 -> 128 over 194 frames vectorized its 194-wide axis 2 lanes
# at a time (21 GFLOP/s; 99 in NWC: PLCMOS 0.89x); a 1-channel STFT-as-conv (a mel front-end)
# is a dot-product kernel in NCW and 3.6x slower in NWC. ConvertLayout converts every call of
# an op, so a module mixing both keeps NCW.
CONV1D_NWC_MIN_CHANNELS = 8


def _desired_layouts(mod) -> dict:
    """:data:`DESIRED_LAYOUTS`, without conv1d unless every conv1d call of ``mod`` has at least
    :data:`CONV1D_NWC_MIN_CHANNELS` static input channels."""
    from tvm import relax

    def few_channels(call) -> bool:
        shape = getattr(call.args[0].ty, "shape", None)
        channels = _int(shape.values[1]) if shape is not None and hasattr(shape, "values") else None
        return channels is None or channels < CONV1D_NWC_MIN_CHANNELS

    calls = (call for _, func in mod.functions_items() if isinstance(func, relax.Function)
             for call in _collect(func, relax.Call) if getattr(call.op, "name", None) == "relax.nn.conv1d")
    if any(few_channels(call) for call in calls):
        return {k: v for k, v in DESIRED_LAYOUTS.items() if k != "relax.nn.conv1d"}
    return DESIRED_LAYOUTS


def _calls_any(mod, op_names) -> bool:
    """Whether a Relax function of ``mod`` calls one of the operators ``op_names``."""
    from tvm import relax

    return any(getattr(call.op, "name", None) in op_names
               for _, func in mod.functions_items() if isinstance(func, relax.Function)
               for call in _collect(func, relax.Call))


def _unlowered_ops(mod) -> set:
    """Relax operators still present after ``LegalizeOps`` (names)."""
    from tvm import relax

    legal = relax.transform.LegalizeOps()(mod)
    names = set()
    for _, func in legal.functions_items():
        if isinstance(func, relax.Function):
            for call in _collect(func, relax.Call):
                name = getattr(call.op, "name", None)
                if name and (name.startswith("relax.nn.") or name.startswith("relax.image.")):
                    names.add(name)
    return names


def fast_math(mod):
    """exp, erf, tanh and softmax -> TOPI's polynomial ``fast_*`` versions, which vectorize
    (LLVM's ``exp``/``erf`` become one libm call per lane). Max relative error ~1e-7 on
    fp32, well inside optc's verification tolerance. float32 ``sigmoid`` is first written as
    ``1 / (1 + exp(-x))`` so that its exp gets the same treatment: TVM lowers it to a libm
    ``expf`` per lane, which made a SiLU epilogue (YOLO-style detectors) as slow as the
    convolution it follows (1x1 conv 96 -> 96 on 52x52, 1 thread: 1.46 -> 0.74 ms)."""
    from tvm import relax

    def sigmoid(_m, call):
        if getattr(call.op, "name", None) != "relax.sigmoid" or str(call.ty.dtype) != "float32":
            return call
        one = relax.const(1.0, "float32")
        return relax.op.divide(one, relax.op.add(one, relax.op.exp(relax.op.negative(call.args[0]))))

    try:
        return relax.transform.FastMathTransform()(_rewrite_calls(mod, sigmoid))
    except Exception:  # noqa: BLE001
        return mod


def _rewrite_calls(mod, rewrite):
    """Apply ``rewrite(mutator, call) -> expr`` to every call (arguments already rewritten) in
    every Relax function of ``mod``, then drop dead bindings."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Mutator(PyExprMutator):
        def visit_call_(self, call):
            return rewrite(self, self.visit_expr_post_order(call))

    m = _Mutator(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            m.builder_.update_func(gv, m.visit_expr(func))
    return relax.transform.DeadCodeElimination()(m.builder_.get())


def fold_constant_layouts(mod):
    """Evaluate ``permute_dims``/``reshape`` of constants (the weight transposes that
    ``ConvertLayout`` inserts) and ``isnan``/``where`` on constants (the NaN guards of the
    ONNX frontend's ``Clip``) with numpy. Relax's FoldConstant would compile and run a TIR
    function per weight shape instead: 20+ s of LLVM time on a MobileNet."""
    import numpy as np
    import tvm.ir.expr
    from tvm import relax

    def _permute(call, args):
        axes = call.attrs.axes
        return np.transpose(args[0], [int(a) for a in axes] if axes is not None else None)

    folders = {
        "relax.permute_dims": _permute,
        "relax.reshape": lambda call, args: args[0],
        "relax.isnan": lambda call, args: np.isnan(args[0]),
        "relax.where": lambda call, args: np.where(args[0], args[1], args[2]),
    }
    arity = {"relax.permute_dims": 1, "relax.reshape": 1, "relax.isnan": 1, "relax.where": 3}

    def _const(m, expr):
        if isinstance(expr, relax.Var):
            expr = m.lookup_binding(expr)
        return expr if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr, "value") else None

    def fold(m, call):
        name = getattr(call.op, "name", None)
        if name not in folders or not call.args:
            return call
        consts = [_const(m, a) for a in call.args[:arity[name]]]
        ty = call.ty
        if any(c is None for c in consts) or not isinstance(ty, relax.TensorType) or ty.shape is None:
            return call
        try:
            shape = [int(d) for d in ty.shape.values]
            data = folders[name](call, [c.value.numpy() for c in consts])
            out = np.ascontiguousarray(np.asarray(data).reshape(shape)).astype(str(ty.dtype))
        except Exception:  # noqa: BLE001 - leave it to Relax
            return call
        return relax.const(out, str(ty.dtype))

    return _rewrite_calls(mod, fold)


_BROADCAST_BINARY = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "floor_divide",
                     "equal", "not_equal", "less", "less_equal", "greater", "greater_equal")


def _full_rank_constants(call):
    """A broadcasting binary call whose constant operand has a lower rank than the other operand
    (ONNX ``Max(x, c)`` with ``c`` of shape ``[1]``, a bias ``[C]``): the constant reshaped to the
    full rank with leading unit axes (the same broadcast), or to a scalar when it holds one
    value. ``ConvertLayout`` cannot permute a lower-rank operand and keeps such a call in the
    old layout between a transpose pair."""
    import tvm.ir.expr
    from tvm import relax

    a, b = call.args
    for k, (c, other) in enumerate(((a, b), (b, a))):
        ct, ot = c.ty, other.ty
        if not (isinstance(c, tvm.ir.expr.Constant) and hasattr(c, "value") and isinstance(ot, relax.TensorType)
                and isinstance(ct, relax.TensorType) and 0 < ct.ndim < ot.ndim):
            continue
        value = c.value.numpy()
        value = value.reshape(()) if value.size == 1 else value.reshape((1,) * (ot.ndim - value.ndim) + value.shape)
        const = relax.const(value, ct.dtype)
        args = (const, other) if k == 0 else (other, const)
        return relax.Call(call.op, args, call.attrs, call.ty_args)
    return call


def _clip_as_min_max(call):
    """``R.clip(x, lo, hi)`` with immediate bounds -> ``R.maximum(R.minimum(x, hi), lo)``: TOPI's
    ``clip`` computes exactly that (``max(min(x, hi), lo)``)."""
    from tvm import relax, tirx

    def number(b):
        return b.value if isinstance(b, (tirx.IntImm, tirx.FloatImm)) else None

    x, lo, hi = call.args
    bounds = [number(b) for b in (lo, hi)]
    if not isinstance(x.ty, relax.TensorType) or any(b is None for b in bounds):
        return call
    lo_c, hi_c = (relax.const(b, x.ty.dtype) for b in bounds)
    return relax.op.maximum(relax.op.minimum(x, hi_c), lo_c)


def layout_visible_ops(mod):
    """Rewrite the activations ``ConvertLayout`` cannot see through into elementwise ops it
    can (a call it cannot infer a layout for gets a transpose pair around it in an NHWC
    network, and stops the conv epilogue fusion):

    - ``call_tir(maximum|minimum, (x, scalar))`` (how TVM's ONNX frontend emits ``Clip``, e.g.
      ReLU6) and ``R.clip`` -> ``R.maximum``/``R.minimum`` (the same TOPI compute after
      legalization);
    - ``R.nn.leakyrelu(x, a)`` (no layout inference in TVM 0.27) -> ``R.maximum(x, x * a)``
      for ``a <= 1``, ``R.minimum(x, x * a)`` for ``a > 1``: exactly the same values, NaN
      included (``x * a`` is the product leakyrelu computes for x < 0; ``a = 0`` is left as it is);
    - a lower-rank constant operand of a broadcasting binary op -> full rank
      (:func:`_full_rank_constants`)."""
    from tvm import relax, tirx

    call_tir = tvm_op("relax.call_tir")
    leaky = tvm_op("relax.nn.leakyrelu")
    clip = tvm_op("relax.clip")
    binary = {f"relax.{name}" for name in _BROADCAST_BINARY}
    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    def rewrite(m, call):
        if getattr(call.op, "name", None) in binary and len(call.args) == 2:
            return _full_rank_constants(call)
        if call.op.same_as(clip):
            return _clip_as_min_max(call)
        if call.op.same_as(leaky):
            x, alpha = call.args[0], float(call.attrs.alpha)
            if alpha == 0.0:  # x * 0 is NaN at +-inf, where only -inf gives NaN: keep it
                return call
            scaled = relax.op.multiply(x, relax.const(alpha, x.ty.dtype))
            return (relax.op.maximum if alpha <= 1.0 else relax.op.minimum)(x, scaled)
        if not call.op.same_as(call_tir) or not isinstance(call.args[0], relax.GlobalVar):
            return call
        gv = call.args[0]
        func = mod[gv]
        name = gv.name_hint.rstrip("0123456789")
        if name not in ops or not isinstance(func, tirx.PrimFunc) or len(call.args) != 2:
            return call
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        if len(args) != 2:
            return call
        x, bound = args
        xs, bs, out = x.ty, bound.ty, call.ty
        if not (isinstance(xs, relax.TensorType) and isinstance(bs, relax.TensorType)
                and isinstance(out, relax.TensorType)):
            return call
        if bs.ndim != 0 or xs.dtype != bs.dtype or out.dtype != xs.dtype or xs.ndim != out.ndim:
            return call
        return ops[name](x, bound)

    return _rewrite_calls(mod, rewrite)


def is_scheduled(func) -> bool:
    """Whether a PrimFunc already carries its schedule (optc's hand-written kernels, see
    lower.opaque_kernel): rule scheduling and tuning leave it alone."""
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(int(func.attrs["tirx.is_scheduled"]))


def tvm_op(name):
    import tvm

    return tvm.ir.Op.get(name)


# ----------------------------------------------------------------------------- scheduling
def _vector_bits(target) -> int:
    """SIMD register width (bits) that code for the TVM LLVM ``target`` may use, from LLVM's CPU
    features: 512 with ``avx512f``, 256 with ``avx``, else 128 (SSE2; AArch64 NEON).
    ``tvm.target.codegen.llvm_get_vector_width`` answers 512 for every x86-64 CPU in TVM 0.27
    (``znver3``, ``haswell`` and plain ``x86-64`` included), which made the schedules use
    two-register vectors and spill on AVX2 machines."""
    from tvm.target import codegen

    if str(target.attrs.get("mtriple", "") or "").startswith("aarch64"):
        return 128
    try:
        with target:
            if codegen.target_has_features("avx512f"):
                return 512
            if codegen.target_has_features("avx"):
                return 256
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe: the safe baseline
        pass
    return 128


# Scope of a register tile's accumulators (and other per-tile temporaries) on CPU targets. TVM's
# LowerTVMBuiltin turns every allocation of another scope, "local" included, into a
# TVMBackendAllocWorkspace / FreeWorkspace call pair, here once per tile; only "global"
# allocations under 1 KB become stack allocas, which LLVM promotes to registers. 1-thread
# kernels, "local" -> "global": MobileNetV2's convolutions 6.5 -> 4.8 ms in all, a 3x3 conv
# on a 1-channel 900x120 input 2.4 -> 1.3 ms, a 2x2 max pool over 900x120x32 1.2 -> 0.47 ms,
# MiniLM's matmuls 4.7 -> 4.3 ms.
ACC_SCOPE = "global"
# Accumulators that hide the FMA latency (4 cycles x 2 FMAs per cycle, with a margin). Past
# them a register tile is ranked by FMAs per loaded vector: on AVX-512's 24-accumulator budget
# a 1x1 conv 256 -> 1024 on a 7x7 map took 16 vectors x 1 pixel (16 accumulators, 17 loads
# per 16 FMAs) over 2 vectors x 7 pixels (14 accumulators, 9 loads per 14 FMAs). AVX2's
# budget is 12: its register tiles are unchanged.
ACC_ENOUGH = 12
# TVM's runtime::kMaxStackAlloca: LowerTVMBuiltin makes a "global" allocation of *fewer* bytes a
# stack alloca, anything larger a TVMBackendAllocWorkspace call (per tile, inside the loop).
# A register tile stays below it: on AVX-512 at most 15 zmm accumulators (16 x 64 B is 1 KB).
STACK_ALLOCA_BYTES = 1024


class _Params:
    """What the rules need to know about an LLVM CPU target: its SIMD width, the vector
    registers a register tile may use for accumulators, and the cores."""

    # bytes of the second operand one column block of a register tile may span (half a
    # Zen 3 / Skylake-SP core's L2 of 512 KB to 1 MB, and of Cortex-A72/A76 clusters' L2)
    block_bytes = 256 * 1024

    def __init__(self, target):
        self.vector_bits = _vector_bits(target)
        triple = str(target.attrs.get("mtriple", "") or "")
        # 32 vector registers on AVX-512 and AArch64: 24 accumulators, 8 for operands. 16 on
        # SSE/AVX2: 12 accumulators (an FMA takes its vector operand from memory, so one
        # broadcast and a few loaded vectors are all the operand registers a tile needs; the
        # 6 x 2-vector sgemm kernels of BLAS libraries use the same split). Every tile stays
        # below STACK_ALLOCA_BYTES (``stack_vectors``): 15 accumulators on AVX-512 (24 were
        # a workspace call per tile; open_nsfw 0.90x, DNSMOS 0.84x, PP-OCRv5 rec 0.91x at 1 thread).
        wide = self.vector_bits >= 512 or triple.startswith("aarch64")
        self.stack_vectors = (STACK_ALLOCA_BYTES - 1) // (self.vector_bits // 8)
        self.acc_budget = min(24 if wide else 12, self.stack_vectors)
        self.vector_registers = 32 if wide else 16
        cores = target.attrs.get("num-cores", None)
        self.cores = int(cores) if cores else 2

    @staticmethod
    def bits(dtype) -> int:
        import tvm

        return tvm.DataType(str(dtype)).bits or 32

    def lanes(self, dtype) -> int:
        return max(1, self.vector_bits // self.bits(dtype))


def schedule_cpu(mod, target, log: list | None = None):
    """Schedule every unscheduled PrimFunc of ``mod`` for the LLVM CPU ``target``; ``log``
    (if given) gets one record per function: ``{"function", "rule"}`` (the rule that
    scheduled it, ``"pre-scheduled"`` for optc's own kernels and tuned records, None if none
    applied) and ``"failed": [{"rule", "error"}]`` for every rule that raised on it.

    Rules, first match wins, per fused PrimFunc:

    * **contraction** — exactly one reduction block (conv2d incl. grouped/depthwise, matmul,
      batch matmul, dense, max/avg pooling, mean/sum over non-innermost axes) preceded by
      injective producers (padding, transposes) and followed by an injective epilogue (bias,
      residual add, activation). The innermost output axis (channels in NHWC, columns of a
      matmul) is split to 1-2 vectors of the target's lanes and vectorized; the next output
      axis (width, rows) is split into a register tile so that ``rows x vectors`` accumulators
      fit the vector registers and unrolled; the remaining outer spatial loops are fused and
      parallel; reduction loops sit between them. Accumulators live in a tile-sized buffer
      (:data:`ACC_SCOPE`: a stack array LLVM keeps in registers); the epilogue is inlined
      and computed per tile right after the reduction.
      Data-movement producers are inlined, padding is a separate parallel vectorized copy
      (read through an in-bounds test instead in depthwise convolutions where the copy would
      be large for their work: ``PAD_INLINE_RATIO``).
    * **column reduction** — reductions over an axis other than the innermost one followed
      by an injective output (a softmax over channels): every block vectorized along the
      innermost axis, computed per chunk of it (:func:`_rule_column_reduction`).
    * **row reduction** — reductions over the innermost axis alone followed by an injective
      output over the same rows (a softmax or layer norm over the last axis): each reduction
      as one vector of partial sums per row (``rfactor``), every block computed per row and
      vectorized along it (:func:`_rule_row_reduction`).
    * **DLight CPU rules** — ``Reduction`` (the reductions the rules above do not take: rows
      parallel, injective parts vectorized, each sum one element at a time) and ``GEMV``.
    * **injective** — elementwise/broadcast/data movement: producers inlined, loops fused,
      innermost vector split vectorized, outer part parallel.
    * **fallback** — anything else (or a rule that fails): the outermost data-parallel loop
      of each root block is made parallel; otherwise the function is left unscheduled.

    Loop nests with less work than ``PARALLEL_MIN_WORK`` stay single-threaded. A rule that
    raises leaves the function as it was (correctness first).
    """
    from tvm import tirx

    params = _Params(target)
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = func.attrs["global_symbol"] if func.attrs is not None and "global_symbol" in func.attrs \
            else gv.name_hint
        if is_scheduled(func):
            if log is not None:
                log.append({"function": str(name), "rule": "pre-scheduled"})
            continue
        new, record = _schedule_func(func, target, params)
        if log is not None:
            log.append({"function": str(name)} | record)
        if new is not None:
            updates[gv] = new.with_attr("tirx.is_scheduled", True)
    if updates:
        mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else mod
        for gv, func in updates.items():
            mod[gv] = func
    return mod


def _schedule_func(func, target, params):
    """(scheduled function or None, record): the first rule that applies wins; a rule that
    raises is recorded with its error and the next one is tried (correctness first)."""
    if _no_iterations(func):
        return None, {"rule": "empty"}
    failed = []
    for rule in (_rule_contraction, _rule_column_reduction, _rule_row_reduction, _rule_plain_reduction, _rule_dlight,
                 _rule_injective, _rule_fallback):
        try:
            result = rule(func, target, params)
        except Exception as err:  # noqa: BLE001 - recorded; try the next rule
            failed.append({"rule": rule.__name__.removeprefix("_rule_"),
                           "error": f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"})
            result = None
        if result is not None:
            return result, {"rule": rule.__name__.removeprefix("_rule_"), **({"failed": failed} if failed else {})}
    return None, {"rule": None, **({"failed": failed} if failed else {})}


def _no_iterations(func) -> bool:
    """Whether a loop of ``func`` runs zero times (a zero-size tensor's function: nothing to
    compute, nothing to schedule; vectorizing a zero-extent loop is an error in TVM's build)."""
    from tvm import tirx

    return any(_int(loop.extent) == 0 for loop in _collect(func.body, tirx.For))


def summarize_log(log: list) -> dict:
    """A build's schedule records for the report: functions per rule, every rule failure, and
    ``layout`` when the NHWC conversion was given up (:func:`convert_layout`)."""
    layout = [r for r in log if "layout" in r]
    log = [r for r in log if "layout" not in r]
    counts: dict[str, int] = {}
    for rec in log:
        key = rec["rule"] or "unscheduled"
        counts[key] = counts.get(key, 0) + 1
    failures = [{"function": r["function"], **f} for r in log for f in r.get("failed", [])]
    out = {"functions": len(log), "by_rule": counts, "rule_failures": failures,
           "per_function": {r["function"]: r["rule"] or "unscheduled" for r in log}}
    if layout:
        out["layout"] = layout[0]
    return out


# ----------------------------------------------------------------------------- helpers
def _int(x):
    from tvm import tirx

    if isinstance(x, int):
        return x
    if isinstance(x, tirx.IntImm):
        return int(x.value)
    return None


def _extent(sch, loop):
    return _int(sch.get(loop).extent)


def _block_infos(sch):
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    return normalize_prim_func(sch)


def _body_store(block):
    """The BufferStore of a block's body (None if the body is not a single store)."""
    from tvm import tirx

    body = block.body
    return body if isinstance(body, tirx.BufferStore) else None


def _collect(node, types) -> list:
    """Nodes of the given types inside ``node`` (post-order)."""
    import tvm_ffi

    found = []

    def visit(x):
        found.append(x)

    tvm_ffi.structural_walk(node, [(types, visit)])
    return found


def _vars_in(expr) -> set:
    from tvm import tirx

    return set(_collect(expr, tirx.Var))


def _loads(expr) -> list:
    """Buffer loads (``tvm.ir.expr.TensorLoad`` in 0.27: ``.source`` is the buffer)."""
    import tvm.ir.expr

    return _collect(expr, tvm.ir.expr.TensorLoad)


def _has_if(expr) -> bool:
    import tvm.ir.expr
    from tvm.tirx import expr as texpr

    if _collect(expr, texpr.Select):
        return True
    return any("if_then_else" in str(getattr(c, "op", "")) for c in _collect(expr, tvm.ir.expr.Call))


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, max(1, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _vector_width(extent: int, lanes: int) -> int:
    """Vector width for an axis: the largest power of two dividing ``extent``, at most the
    target's lanes (LLVM keeps power-of-two vectors in registers; odd widths such as 24 get
    scalarized). Extents up to ``lanes`` are taken whole."""
    if extent <= lanes:
        return extent
    w = 1
    while w * 2 <= lanes and extent % (w * 2) == 0:
        w *= 2
    return w


def _vector_tile(extent: int, lanes: int, max_elems: int) -> tuple[int, int]:
    """(vectors per tile, vector width) for a register tile of at most ``max_elems``
    elements along an axis of ``extent``."""
    w = _vector_width(extent, lanes)
    m = _largest_divisor(extent // w, max(1, max_elems // w))
    return m, w


def _register_tile(v_extent: int, u_extent: int, lanes: int, params: "_Params",
                   red_bytes: int) -> tuple[int, int, int]:
    """(vectors, vector width, rows) of a contraction's register tile: the tile with the most
    accumulators within ``params.acc_budget``, fewest loads per FMA breaking ties, starting
    from up to two vectors along the vector axis and as many rows as the budget allows.

    Rows either divide the next output axis or fill the budget with a partial last tile (a
    predicate), counted by the useful share of its rows, so a divisor tile wins a tie. A
    partial tile wins where the divisors are poor: YOLO's 13x13 3x3 conv, 192 channels, 4 x 1
    -> 4 x 3, 2.63 -> 1.64 ms at 1 thread on AVX2, and -> 3 x 4 (operands in registers,
    :func:`_operand_fit`), 1.36 -> 1.10 ms; a 160-wide map (CRAFT's
    refiner, dilated 3x3 64 -> 128 convs), 2 x 5 (10 accumulators, 1.43 FMAs per load) -> 4 x 3
    (12 of 12 x 160 / 162 useful, 1.69), 46-54 -> 40-42 ms at 1 thread on AVX-512.

    Tiles of more than two vectors must keep their slice of the second operand (``red_bytes``
    per output column, times the tile's columns) within ``params.block_bytes``: the tiles
    along the other output axes reuse that slice from L2, so a wide tile over a deep reduction
    (8 vectors x 4608 weights = 1.2 MB in ResNet's last stage) would stream it from L3 for
    every tile. Wider tiles win where rows have no small divisor (7 or 14 wide feature maps)
    and where channel counts have a factor 3 (MobileNet's 24 .. 960: 3 vectors x 4 rows, 12
    accumulators, instead of 2 x 4; 1x1 conv 16 -> 96 on 112x112 at 1 thread 999 -> 805 us,
    144 -> 24 on 56x56 326 -> 249 us)."""
    vm, vw = _vector_tile(v_extent, lanes, 2 * lanes)
    per = max(1, math.ceil(vw / lanes))  # registers per vector

    def rows(m: int) -> int:
        return _largest_divisor(u_extent, max(1, params.acc_budget // (m * per)))

    ui = rows(vm)
    if vw < lanes:
        return vm, vw, ui
    best = (vm * per * ui, _operand_fit(vm, ui, per, params), vm, ui)
    for m in range(1, params.acc_budget // per + 1):
        if (v_extent // vw) % m or (m > vm and m * vw * red_bytes > params.block_bytes):
            continue
        r = rows(m)
        best = max(best, (m * per * r, _operand_fit(m, r, per, params), m, r), key=_fit_first)
        top = min(u_extent, params.acc_budget // (m * per))
        if top > r:  # rows that do not divide the axis: the last tile partial, counted by its useful rows
            useful = u_extent / (-(-u_extent // top) * top)
            fits, per_load = _operand_fit(m, top, per, params)
            best = max(best, (round(m * per * top * useful, 6), (fits, per_load * useful), m, top), key=_fit_first)
    return best[2], vw, best[3]


def _fit_first(tile: tuple) -> tuple:
    """Sort key of a (accumulators, :func:`_operand_fit`, vectors, rows) tile: tiles whose
    operands fit first, then the most accumulators up to :data:`ACC_ENOUGH`, then FMAs per
    load, then the most accumulators."""
    (fits, per_load), acc = tile[1], tile[0]
    return fits, min(acc, ACC_ENOUGH), per_load, acc


def _operand_fit(m: int, r: int, per: int, params: "_Params") -> tuple[bool, float]:
    """How well an ``m``-vector x ``r``-row register tile feeds its FMAs, as a sort key:
    whether its operands fit in the registers beside its accumulators, then FMAs per loaded
    vector (``m * r / (m + r)``).

    A reduction step loads ``m`` vectors of the second operand and broadcasts ``r`` values of
    the first. LLVM keeps the step's vectors in registers (``m`` + 1 for the broadcast), or,
    with a spare register, the broadcasts (``r`` + 1 for a vector, + 1): a tile that fits
    neither way spills an accumulator to the stack inside the reduction loop, a
    store-to-load chain every step. On AVX2's 16 registers 4 x 3 (12 accumulators + 4 + 1)
    spills; 3 x 4, 2 x 6, 6 x 2 and 12 x 1 do not. 3x3 conv 32 -> 32 channels on 450x60 at
    1 thread, 4 x 3 -> 2 x 6: 12.2 -> 5.2 ms (onnxruntime: 5.6); 32 -> 64 on 112x15, 4 x 3 ->
    2 x 5 (fewer accumulators, but no spill): 1.25 -> 0.62 ms."""
    acc = m * per * r
    fits = acc + m * per + 1 <= params.vector_registers or acc + r + 2 <= params.vector_registers
    return fits, m * r / (m + r)


def _per_column_input(reads, iters, v: int, spatial: list) -> bool:
    """Whether an operand indexed by the output pixels is also indexed by the column axis
    ``v`` in its innermost dimension: a depthwise convolution, where each channel block reads
    only its own input channels."""
    pixels = {iters[k].var for k in spatial if k != v}
    return any(ld.indices and iters[v].var in _vars_in(ld.indices[-1]) and
               set().union(*(_vars_in(i) for i in ld.indices)) & pixels for ld in reads)


def _depthwise_tile(v_extent: int, u_extent: int, lanes: int, params: "_Params") -> tuple[int, int, int]:
    """(vectors, vector width, rows) of a depthwise register tile. Its input is not shared
    across channels, so every FMA loads one input vector and only the weight vectors are
    reused, across the tile's rows: the tile takes as many rows as the registers left after
    the weights allow (at most two vectors, rows dividing the axis), most accumulators (up to
    :data:`ACC_ENOUGH`) first, then two vectors (:func:`_two_vectors_first`). On AVX2 that is
    2 x 7 for the 7 x 2^k maps of 224-input CNNs (1-thread 3x3 depthwise kernels, 2 x 7 vs
    the 2 x 4 / 12 x 1 tiles of :func:`_register_tile`: 56x56x144 439 -> 337 us, 14x14x576
    79 -> 63 us, 7x7x960 47 -> 26 us). Where no row count dividing the axis gives 8
    accumulators, the last tile is partial (counted by its useful rows): PicoDet's 5x5
    depthwise on 50x38x256, 2 x 2 -> 2 x 7, 1.5 -> 0.9 ms at 1 thread."""
    w = _vector_width(v_extent, lanes)
    per = max(1, math.ceil(w / lanes))
    best = (0, 1, 1)
    for m in (1, 2):
        if (v_extent // w) % m:
            continue
        budget = min(params.vector_registers - m * per, params.stack_vectors) // (m * per)
        r = _largest_divisor(u_extent, budget)
        if m * per * r < 8:  # no divisor gives 8 accumulators (38 = 2 x 19): a partial last tile
            r = min(u_extent, budget)
            useful = u_extent / (-(-u_extent // r) * r)
            best = max(best, (round(m * per * r * useful, 6), m, r), key=_two_vectors_first)
            continue
        best = max(best, (m * per * r, m, r), key=_two_vectors_first)
    return best[1], w, best[2]


def _two_vectors_first(tile: tuple) -> tuple:
    """Sort key of a depthwise (accumulators, vectors, rows) tile: accumulators up to
    :data:`ACC_ENOUGH`, then two vectors (each pixel's channels read as one contiguous run),
    then the most accumulators. AVX-512's 15-accumulator budget otherwise took 1 x 15 over
    2 x 6 on a 60-wide map (a 2x2 max pool over 900x120x32 at 1 thread: 0.26 -> 0.23 ms)."""
    acc, m, r = tile
    return min(acc, ACC_ENOUGH), m, acc, r


def _work(sch, block) -> int:
    total = 1
    for loop in sch.get_loops(block):
        e = _extent(sch, loop)
        total *= e if e else 1 << 20
    return total


def _root_blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []


def _has_root(sch):
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _transposed_axis(st, n_loops: int):
    """For a data-movement block (one iteration variable per loop, in loop order): the
    position of the variable that alone indexes the innermost dimension of a load whose
    innermost index does not involve the output's innermost variable (a transpose), or None."""
    ivs = [iv.var for iv in st.iter_vars]
    store = _body_store(st)
    if store is None or len(ivs) != n_loops or n_loops < 2 or not store.indices:
        return None
    inner = ivs[-1]
    if _vars_in(store.indices[-1]) != {inner}:
        return None
    for ld in _loads(store.value):
        if not ld.indices:
            continue
        used = _vars_in(ld.indices[-1]) & set(ivs)
        if inner not in used and len(used) == 1:
            return ivs.index(used.pop())
    return None


def _schedule_injective_block(sch, block, params, *, parallel=True):
    """Fuse the block's loops, vectorize an inner split along the innermost axis, parallel
    the outer part when there is enough work."""
    loops = sch.get_loops(block)
    if not loops:
        return
    st = sch.get(block)
    if any(iv.iter_type != 0 for iv in st.iter_vars):  # not purely data-parallel
        return
    dtype = st.writes[0].source.dtype if st.writes else "float32"
    lanes = params.lanes(dtype)
    extents = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents):
        if parallel and len(loops) > 0:
            sch.parallel(loops[0])
        return
    total = math.prod(extents)
    inner = extents[-1]
    vi = _vector_width(inner, lanes) if inner > 1 else 1
    store = _body_store(st)
    conditional = store is not None and _has_if(store.value)
    if vi > 1 and conditional:
        vi = _within_index_period(st, vi)
    if vi < 4 and inner > lanes:
        vi = 1
    if vi > 1 and inner % vi == 0 and len(loops) > 1 and conditional:
        # A padding copy: the vectors split the innermost axis alone, so the outer indices
        # (and the in-bounds test on them) stay uniform across a vector. Split from the fused
        # index, each lane's h/w came from its own div/mod and the copy was gathered element
        # by element (NHWC 112x112x96 pad at 1 thread: 377 -> 140 us).
        rows = sch.fuse(*loops[:-1])
        cols, vec = sch.split(loops[-1], factors=[None, vi])
        sch.vectorize(vec)
        if parallel and total >= PARALLEL_MIN_WORK:
            sch.parallel(rows)
        return
    b = _transposed_axis(st, len(loops)) if vi > 1 and inner % vi == 0 else None
    if b is not None:
        # A transpose: the output's vectors gather across the input's rows. The input's
        # contiguous axis ``b`` goes inside each vector column, so the ``vi`` rows a column
        # reads stay in L1 while ``b`` walks along them (NHWC -> NCHW of 112x112x96 at 1
        # thread: the input was streamed once per 16 channels).
        col, vec = sch.split(loops[-1], factors=[None, vi])
        others = [lp for k, lp in enumerate(loops[:-1]) if k != b]
        sch.reorder(*others, col, loops[b], vec)
        sch.vectorize(vec)
        outer = sch.fuse(*others, col) if others else col
        if parallel and total >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if vi > 1 and total > vi:
        outer, vec = sch.split(fused, factors=[None, vi])
        sch.vectorize(vec)
        if parallel and total >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
    elif vi > 1:
        sch.vectorize(fused)
    elif parallel and total >= PARALLEL_MIN_WORK:
        sch.parallel(fused)


def _within_index_period(st, width: int) -> int:
    """The vector width for a block with an ``if_then_else``, cut to divide every constant
    period (``% c``, ``// c``) of its innermost axis in the block's indices. TVM cannot
    vectorize a conditional and emits the loop as scalar code; LLVM's loop vectorizer then
    if-converts it into masked loads, and on AVX-512 (16 float lanes) it took ``x[i % 8]``
    across a 16-iteration loop for a contiguous load of 16 elements: a rotary embedding's
    concatenated halves read past their 8-element period (wrong values, found by
    verification). A loop of one period keeps every lane's index affine."""
    from tvm.tirx import expr as texpr

    axis = st.iter_vars[-1].var
    for node in _collect(st.body, (texpr.FloorMod, texpr.FloorDiv)):
        c = _int(node.b)
        if c is not None and c > 1 and axis in _vars_in(node.a):
            width = math.gcd(width, c)
    return width


# ----------------------------------------------------------------------------- rules
def _rule_contraction(func, target, params):
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    infos = _block_infos(sch)
    if not infos:
        return None
    red = [i for i, b in enumerate(infos) if not b.is_injective()]
    if len(red) != 1:
        return None
    ri = red[0]
    main_info = infos[ri]
    main = main_info.block_rv
    if any(not b.is_injective() for b in infos[ri + 1:]):
        return None
    st = sch.get(main)
    store = _body_store(st)
    if store is None or len(st.writes) != 1:
        return None
    kinds = main_info.dom_kind()
    if "O" in kinds:
        return None
    iters = main_info.iters
    var_pos = {it.var: k for k, it in enumerate(iters)}
    spatial = [k for k, it in enumerate(iters) if it.kind == "S"]
    reduce_ = [k for k, it in enumerate(iters) if it.kind == "R"]
    if not spatial or not reduce_:
        return None
    # all spatial loops must come before the reduction loops (TE-generated blocks do)
    if max(spatial) > min(reduce_):
        return None
    extents = [_int(it.dom) for it in iters]
    if any(e is None for e in extents):
        return None

    # vector axis: the spatial iter indexing the innermost output dimension
    out_idx = list(store.indices)
    out_vars = []
    for idx in out_idx:
        if isinstance(idx, tirx.Var) and idx in var_pos:
            out_vars.append(var_pos[idx])
        else:
            out_vars.append(None)
    v = next((k for k in reversed(out_vars) if k is not None and extents[k] > 1), None)
    if v is None:
        return None
    # If no operand reads along v contiguously while the innermost reduction axis is the
    # contiguous one of an operand, this is a row reduction (softmax-like): leave it to DLight.
    rvars = {iters[k].var for k in reduce_}
    reads = [ld for ld in _loads(store.value) if not ld.source.same_as(store.buffer)]
    v_var = iters[v].var
    last_has_v = any(v_var in _vars_in(ld.indices[-1]) for ld in reads if ld.indices)
    last_has_r = any(_vars_in(ld.indices[-1]) & rvars for ld in reads if ld.indices)
    if not last_has_v and last_has_r:
        # a product of two operands along their contiguous axis (a one-output-channel conv)
        return _rule_dot(func, params, params.lanes(st.writes[0].source.dtype)) if len(reads) >= 2 else None

    dtype = st.writes[0].source.dtype
    lanes = params.lanes(dtype)
    # register tile: vm vectors of vw along v, ui along the next output axis
    u = next((k for k in reversed(out_vars) if k is not None and k != v and extents[k] > 1), None)
    red_bytes = math.prod(extents[k] for k in reduce_) * max(1, params.bits(dtype) // 8)
    u_extent = extents[u] if u is not None else 1
    depthwise = _per_column_input(reads, iters, v, spatial)
    taps = math.prod(extents[k] for k in reduce_)
    if depthwise:
        vm, vw, ui = _depthwise_tile(extents[v], u_extent, lanes, params)
    else:
        vm, vw, ui = _register_tile(extents[v], u_extent, lanes, params, red_bytes)
    if not any(_unit_stride(_inner_index(ld), v_var) for ld in reads if ld.indices):
        dot = _rule_dot(func, params, lanes)
        if dot is not None:
            return dot
    if ui == 1:
        u = None

    # ---- producers: inline pure data movement, keep the rest (padding) at root
    for b in infos[:ri]:
        bst = sch.get(b.block_rv)
        bstore = _body_store(bst)
        if depthwise and bstore is not None and _has_if(bstore.value) and \
                _size(bstore.buffer) >= PAD_INLINE_RATIO * _size(store.buffer) * taps:
            try:  # a padding copy large for the work it feeds: read through a test instead
                sch.compute_inline(b.block_rv)
                continue
            except Exception:  # noqa: BLE001
                pass
        if bstore is not None and not _has_if(bstore.value) and len(_loads(bstore.value)) == 1 and \
                _loads(bstore.value)[0].same_as(bstore.value):
            try:
                sch.compute_inline(b.block_rv)
                continue
            except Exception:  # noqa: BLE001
                pass
        _schedule_injective_block(sch, b.block_rv, params)

    # ---- tile the main block
    loops = sch.get_loops(main)
    if len(loops) != len(iters):
        return None
    v_o, v_m, v_i = sch.split(loops[v], factors=[None, vm, vw])
    if u is not None:
        u_o, u_i = sch.split(loops[u], factors=[None, ui])
    others = [loops[k] if k != u else u_o for k in spatial if k != v]
    # Column blocks outermost when the second operand is large: each block's slice stays in L2
    # while the tiles along the other axes stream past it. When all of it fits in L2 (depthwise
    # and small convolutions), the blocks go innermost instead: a tile's first operand (an
    # input row window) stays in L1 across the blocks and is streamed once, not once per block.
    small = red_bytes * extents[v] <= params.block_bytes
    outer = others + [v_o] if small else [v_o] + others
    red_loops = [loops[k] for k in reduce_]
    inner = ([u_i] if u is not None else []) + [v_m, v_i]
    sch.reorder(*outer, *red_loops, *inner)
    tile = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    work = math.prod(extents)
    if work >= PARALLEL_MIN_WORK and _extent(sch, tile) and _extent(sch, tile) > 1:
        sch.parallel(tile)

    # ---- epilogue (or a write cache) computed per tile from a local accumulator
    epilogue = [b.block_rv for b in infos[ri + 1:]]
    for b in epilogue[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001
            pass
    remaining = []
    for b in epilogue:
        try:
            sch.get(b)
            remaining.append(b)
        except Exception:  # noqa: BLE001 - inlined
            pass
    if not remaining:
        wb = sch.cache_write(main, 0, ACC_SCOPE)
        remaining = [wb]
    else:
        sch.set_scope(main, 0, ACC_SCOPE)
    for b in remaining:
        sch.reverse_compute_at(b, tile, preserve_unit_loops=True)
        eloops = sch.get_loops(b)[1:]
        if eloops:
            _vectorize_tail(sch, eloops, vw)

    # ---- accumulate (vectorized, unrolled), then split off the initialisation
    if vw > 1:
        sch.vectorize(v_i)
    if vm > 1:
        sch.unroll(v_m)
    if u is not None and ui > 1:
        sch.unroll(u_i)
    init = sch.decompose_reduction(main, red_loops[0])
    iloops = sch.get_loops(init)[1:]
    if iloops:
        try:
            _vectorize_tail(sch, iloops, vw)
        except Exception:  # noqa: BLE001 - loops kept their kinds
            pass
    return sch.mod["main"]



def _size(buffer) -> int:
    return math.prod(_int(d) or 1 for d in buffer.shape)



def _unit_stride(index, var) -> bool:
    """Whether ``index`` steps by exactly 1 with ``var`` (a vector along ``var`` is one load)."""
    import tvm_ffi
    from tvm import tirx

    if isinstance(index, tirx.FloorMod):  # a blocked layout's ``v % b``: unit stride inside a block
        index = index.a
    if var not in _vars_in(index):
        return False
    coef = tvm_ffi.get_global_func("sym.DetectLinearEquation")(index, [var])
    return len(coef) == 2 and _int(coef[0]) == 1


def _rule_dot(func, params, lanes: int):
    """A contraction that no operand reads contiguously along the output's vector axis (a
    few frames of a long 1-D filter bank: an STFT as ``Conv1d`` with 512-tap filters, stride
    160, 5 output frames; a convolution with one output channel: every vector would be a
    gather) but whose innermost reduction (of more than one step) runs contiguously along
    every operand: vectorized along that reduction instead.
    The reduction is split by the vector width and factored (``rfactor``) into per-lane
    partial sums, kept in registers for up to ``acc_budget`` points of the innermost output
    axis at once (one weight vector load serves them all), then summed across lanes.
    openWakeWord's mel front-end STFT kernels: 163 -> 23 us at 1 thread (onnxruntime 70 us);
    basic-pitch's one-output-channel convolutions (7x3 over 32 channels on 172x88): 13.5 ->
    1.6 ms. Returns None where the shape does not fit (the contraction rule goes on)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    infos = _block_infos(sch)
    ri = next(i for i, b in enumerate(infos) if not b.is_injective())
    main = infos[ri].block_rv
    for b in infos[:ri]:  # producers: plain copies (a padding of 0) inline, else not this rule
        try:
            sch.compute_inline(b.block_rv)
        except Exception:  # noqa: BLE001
            return None
    epilogue = [b.block_rv for b in infos[ri + 1:]]
    for b in epilogue[:-1]:  # an elementwise chain (bias, activation) into its last block
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001
            return None
    st = sch.get(main)
    store = _body_store(st)
    loops = sch.get_loops(main)
    kinds = [iv.iter_type for iv in st.iter_vars]
    if store is None or len(loops) != len(kinds) or kinds[-1] != 2:
        return None
    nsp = kinds.index(2)
    sizes = [_extent(sch, lp) for lp in loops]
    kpos = max((i for i in range(nsp, len(loops)) if (sizes[i] or 0) > 1), default=None)
    reads = [ld for ld in _loads(store.value) if not ld.source.same_as(store.buffer)]
    if nsp < 1 or kpos is None or any(kd != 2 for kd in kinds[nsp:]) or any(kinds[:nsp]) or sizes[kpos] % lanes \
            or not reads or not all(_unit_stride(_inner_index(ld), st.iter_vars[kpos].var) for ld in reads):
        return None
    if kpos != len(loops) - 1:
        sch.reorder(*[loops[i] for i in range(nsp, len(loops)) if i != kpos], loops[kpos])
    ko, ki = sch.split(sch.get_loops(main)[-1], factors=[None, lanes])
    rf = sch.rfactor(ki, 0)
    at, nsp = _dot_block(sch, main, nsp, params.acc_budget)
    wl = sch.get_loops(main)
    if at >= 0:
        sch.compute_at(rf, wl[at])
    sch.set_scope(rf, 0, ACC_SCOPE)
    rl = sch.get_loops(rf)[at + 1:]
    spatial = rl[1:nsp - at]  # the blocked output points (register accumulators)
    sch.reorder(*rl[nsp - at:], *spatial, rl[0])
    sch.vectorize(rl[0])
    for lp in spatial:
        sch.unroll(lp)
    if epilogue and at >= 0:  # per block of points, from the just-written sums
        sch.reverse_compute_at(epilogue[-1], wl[at], preserve_unit_loops=True)
    outer = sch.fuse(*wl[:at + 1]) if at > 0 else wl[0]
    if _func_work(func) >= DOT_PARALLEL_MIN_WORK and (_extent(sch, outer) or 0) > 1:
        sch.parallel(outer)
    sch.decompose_reduction(rf, rl[nsp - at])
    return sch.mod["main"]


def _dot_block(sch, main, nsp: int, budget: int) -> tuple[int, int]:
    """For :func:`_rule_dot`: split the innermost output axis longer than 1 into blocks of at
    most ``budget`` points (a divisor) and return (the spatial loop the partial sums are
    computed under, -1 for none; the number of spatial loops now)."""
    wl = sch.get_loops(main)
    sizes = [_extent(sch, lp) or 0 for lp in wl[:nsp]]
    bpos = max((i for i in range(nsp) if sizes[i] > 1), default=None)
    if bpos is None:
        return nsp - 1, nsp
    if sizes[bpos] <= budget:
        return bpos - 1, nsp
    r = _largest_divisor(sizes[bpos], budget)
    if r < 4:  # no usable divisor (2 x a prime): a partial last block
        r = budget
    sch.split(wl[bpos], factors=[None, r])
    return bpos, nsp + 1


def _inner_index(load):
    """The index of a load's innermost buffer dimension longer than 1 (a weight ``[KH, KW,
    Cin, 1]`` of a one-channel convolution is contiguous along ``Cin``)."""
    shape = list(load.source.shape)
    for i in range(len(load.indices) - 1, -1, -1):
        if i >= len(shape) or _int(shape[i]) != 1:
            return load.indices[i]
    return load.indices[-1]


# Most vectors a per-tile loop nest is unrolled into (a register tile has at most 24; an
# epilogue that broadcasts a small result over a large map, e.g. a squeeze-excite gate times
# a 40x40x96 feature map, would otherwise unroll into ~20,000 stores and minutes of LLVM).
MAX_UNROLLED_VECTORS = 64


def _vectorize_tail(sch, loops, width):
    """Per-tile loops (init, epilogue): split the innermost into vectors of ``width``,
    vectorize them and unroll the rest of the tile when it is at most
    :data:`MAX_UNROLLED_VECTORS` vectors (else they stay loops)."""
    exts = [_extent(sch, lp) for lp in loops]
    if not exts or exts[-1] is None or exts[-1] <= 1:
        return
    unroll = all(e is not None for e in exts) and math.prod(exts) <= MAX_UNROLLED_VECTORS * max(1, width)
    last = loops[-1]
    if width > 1 and exts[-1] > width and exts[-1] % width == 0:
        rest, vec = sch.split(last, factors=[None, width])
        if unroll:
            sch.unroll(rest)
    else:
        vec = last
    for lp, e in zip(loops[:-1], exts[:-1]):
        if unroll and e and e > 1:
            sch.unroll(lp)
    sch.vectorize(vec)


def _rule_column_reduction(func, target, params):  # noqa: ARG001
    """Reductions over an axis that is not the innermost one, followed by an injective output:
    a softmax over channels (YOLOv8's DFL head: ``Softmax(axis=1)`` on ``[1, 16, 4, anchors]``),
    a log-softmax or a normalization over a middle axis. DLight's reduction rule walks such an
    axis innermost, one element at a time (strided); here every block is vectorized along the
    innermost axis, which the reduced axes never index, so each reduction step is one vector
    max / add. The output's other axes and chunks of the innermost one form one parallel loop;
    every producer is computed per chunk (``compute_at``), reduced axes outside the vectors.
    YOLOv8n's DFL softmax, 1 thread, isolated: 8.8 ms (DLight) -> 0.41 ms."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    infos = _block_infos(sch)
    if len(infos) < 2 or all(b.is_injective() for b in infos) or not infos[-1].is_injective():
        return None
    shape = _column_output(sch, infos[-1])
    red_bufs = _column_reductions(sch, infos)
    if shape is None or not red_bufs:
        return None
    out, loops, ivars, store = shape
    rows = set()
    for ld in _loads(store.value):
        if any(ld.source.same_as(b) for b in red_bufs):
            rows |= set().union(*(_vars_in(i) for i in ld.indices))
    width = _extent(sch, loops[-1])
    vw = _vector_width(width, params.lanes(sch.get(out).writes[0].source.dtype))
    if not rows or vw < 4:
        return None
    co, ci = sch.split(loops[-1], [None, vw * _largest_divisor(width // vw, 4)])
    row_loops = [lp for lp, v in zip(loops[:-1], ivars) if v in rows]
    sch.reorder(*row_loops, co, *[lp for lp, v in zip(loops[:-1], ivars) if v not in rows], ci)
    outer = sch.fuse(*row_loops, co) if row_loops else co
    for b in reversed([b.block_rv for b in infos[:-1]]):
        sch.compute_at(b, outer, preserve_unit_loops=False)
    for b in [b.block_rv for b in infos]:
        _vectorize_column_block(sch, b, outer, vw)
    if _func_work(func) >= PARALLEL_MIN_WORK and (_extent(sch, outer) or 0) > 1:
        sch.parallel(outer)
    return sch.mod["main"]


def _column_output(sch, info):
    """(block, loops, iter vars, store) of the last block when it writes its iters in loop
    order (unit axes as constants) along an innermost axis longer than one; else None."""
    from tvm import tirx

    out = info.block_rv
    st = sch.get(out)
    store = _body_store(st)
    loops = sch.get_loops(out)
    if store is None or len(st.writes) != 1 or len(loops) != len(st.iter_vars):
        return None
    ivars = [iv.var for iv in st.iter_vars]
    idx = [i for i in store.indices if not isinstance(i, tirx.IntImm)]
    if len(idx) != len(ivars) or not all(isinstance(i, tirx.Var) and i.same_as(v) for i, v in zip(idx, ivars)):
        return None
    if any(_extent(sch, lp) is None for lp in loops) or _extent(sch, loops[-1]) < 2:
        return None
    return out, loops, ivars[:-1], store


def _column_reductions(sch, infos) -> list:
    """The buffers the reduction blocks write, when each reduces over axes that index no
    operand's innermost dimension and keeps that dimension as its own innermost output axis
    (a column reduction); else []."""
    from tvm import tirx

    bufs = []
    for b in infos:
        if b.is_injective():
            continue
        st = sch.get(b.block_rv)
        store = _body_store(st)
        rvars = {iv.var for iv in st.iter_vars if iv.iter_type == 2}
        svars = [iv.var for iv in st.iter_vars if iv.iter_type == 0]
        if store is None or not svars or not isinstance(store.indices[-1], tirx.Var) or \
                not store.indices[-1].same_as(svars[-1]):
            return []
        for ld in _loads(store.value):
            inner = _vars_in(ld.indices[-1]) if ld.indices else set()
            if not ld.source.same_as(store.buffer) and (inner & rvars or svars[-1] not in inner):
                return []
        bufs.append(store.buffer)
    return bufs


def _vectorize_column_block(sch, block, outer, vw: int) -> None:
    """Under ``outer``: the loop along the innermost written axis goes innermost, split into
    unrolled vectors of ``vw``; a reduction's init is split off and vectorized the same way."""
    from tvm import tirx

    st = sch.get(block)
    bl = sch.get_loops(block)
    at = next(i for i, lp in enumerate(bl) if sch.get(lp).same_as(sch.get(outer)))
    inner = bl[at + 1:]
    wv = _body_store(st).indices[-1]
    bind = dict(zip([iv.var for iv in st.iter_vars], _realize_of(sch, block).iter_values))
    along = _vars_in(bind[wv]) if isinstance(wv, tirx.Var) and wv in bind else set()
    vec = [lp for lp in inner if sch.get(lp).loop_var in along]
    if len(vec) != 1:
        raise ValueError(f"{st.name_hint}: no single loop along the innermost axis")
    others = [lp for lp in inner if not sch.get(lp).same_as(sch.get(vec[0]))]
    sch.reorder(*others, vec[0])
    vo, vi = sch.split(vec[0], [None, vw])
    sch.vectorize(vi)
    sch.unroll(vo)
    if others and any(iv.iter_type == 2 for iv in st.iter_vars):
        il = sch.get_loops(sch.decompose_reduction(block, others[0]))
        sch.vectorize(il[-1])
        sch.unroll(il[-2])


def _rule_row_reduction(func, target, params):  # noqa: ARG001
    """Reductions along the innermost axis feeding an injective output over the same rows: a
    softmax or a layer norm over the last axis. DLight's reduction rule sums a row one element at
    a time (a float sum cannot be vectorized as written: the order of the additions is fixed),
    so a layer norm of 128 x 384 took 0.2 ms, 2.5 GFLOP/s. Here each reduction is split into
    ``vw`` interleaved partial sums (``rfactor``: lane j adds elements j, j + vw, ...), one
    vector add per step, then the lanes added; every block is computed per row (``compute_at``)
    and vectorized along the row; the rows form the parallel loop. Another summation order
    than onnxruntime's, as any vectorized reduction."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    infos = _block_infos(sch)
    if len(infos) < 2 or all(b.is_injective() for b in infos) or not infos[-1].is_injective():
        return None
    shape = _column_output(sch, infos[-1])
    if shape is None or len(shape[1]) < 2:
        return None
    out, loops, _, _ = shape
    width = _extent(sch, loops[-1])
    vw = _vector_width(width, params.lanes(sch.get(out).writes[0].source.dtype))
    if vw < 4 or not _row_reductions(sch, infos, width):
        return None
    partial = []  # the blocks computing vw partial sums per row (rfactor)
    for b in infos:
        if not b.is_injective():
            _, ki = sch.split(sch.get_loops(b.block_rv)[-1], [None, vw])
            partial.append(sch.rfactor(ki, factor_axis=len(sch.get(b.block_rv).writes[0].source.shape)))
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, outer, preserve_unit_loops=False)
    if _func_work(func) >= ROW_PARALLEL_MIN_WORK and (_extent(sch, outer) or 0) > 1:
        sch.parallel(outer)  # before the reductions are decomposed: parallel wants whole reduction blocks
    for b in blocks:
        inner = sch.get_loops(b)[1:]
        if any(sch.get(b).same_as(sch.get(rf)) for rf in partial):  # compute_at left [ki, ko]
            ki, ko = inner[-2:]
            sch.reorder(ko, ki)
            sch.vectorize(ki)
            sch.vectorize(sch.get_loops(sch.decompose_reduction(b, ko))[-1])
        elif inner and all(iv.iter_type == 0 for iv in sch.get(b).iter_vars):
            sch.vectorize(sch.split(inner[-1], [None, vw])[1])
    return sch.mod["main"]


def _row_reductions(sch, infos, width: int) -> bool:
    """Whether every reduction block reduces over one axis of ``width`` that only the innermost
    dimension of its operands is indexed by (a row reduction), writing the rows alone."""
    for b in infos:
        if b.is_injective():
            continue
        st = sch.get(b.block_rv)
        store = _body_store(st)
        red = [iv for iv in st.iter_vars if iv.iter_type == 2]
        if store is None or len(red) != 1 or _int(red[0].dom.extent) != width:
            return False
        r = red[0].var
        if any(r in _vars_in(i) for i in store.indices):
            return False
        for ld in _loads(store.value):
            if ld.source.same_as(store.buffer) or not ld.indices:
                continue
            if any(r in _vars_in(i) for i in ld.indices[:-1]):
                return False
    return True


# a reduction of every element to one value (min / max / sum of a tensor: DynamicQuantizeLinear's
# range) runs in this many parallel chunks where it has PARALLEL_MIN_WORK elements or more
REDUCE_CHUNKS = 16


def _rule_plain_reduction(func, target, params):  # noqa: ARG001
    """A reduction with nothing after it (injective producers inlined): a min / max / sum of a
    whole tensor (DynamicQuantizeLinear's range, per tensor) or of each row (a row sum of
    codes). DLight takes none of a whole tensor (left as a serial scalar loop: 1.8 GFLOP/s)
    and walks rows one element at a time. Here the reduction loops are fused, the last
    ``vw`` lanes become ``vw`` partial results (``rfactor``) computed one vector per step, and
    a whole-tensor reduction of at least ``PARALLEL_MIN_WORK`` elements is cut into
    ``REDUCE_CHUNKS`` parallel chunks of such vectors (rows: the rows in parallel); the
    partial results are combined serially at the end. Sums are added in another order than a
    serial loop (as any vectorized reduction); min / max and integer sums are exact."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    infos = _block_infos(sch)
    if not infos or infos[-1].is_injective() or any(not b.is_injective() for b in infos[:-1]):
        return None
    for b in infos[:-1]:
        sch.compute_inline(b.block_rv)
    block = infos[-1].block_rv
    st = sch.get(block)
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in st.iter_vars]
    store = _body_store(st)
    if store is None or len(loops) != len(kinds) or 2 not in kinds or kinds != sorted(kinds) or \
            any(_extent(sch, lp) is None for lp in loops):
        return None  # spatial loops first, then the reduction loops, static extents
    reds = [iv.var for iv in st.iter_vars if iv.iter_type == 2]
    red_set, walks = set(reds), 0
    for ld in _loads(store.value):  # the innermost reduction axis walks each operand's last dimension
        if ld.source.same_as(store.buffer) or not any(_vars_in(i) & red_set for i in ld.indices):
            continue  # the accumulator, or an operand the reduction does not index (a broadcast max)
        if reds[-1] not in _vars_in(ld.indices[-1]):
            return None
        walks += 1
    if not walks:
        return None
    spatial, red_loops = loops[:kinds.index(2)], loops[kinds.index(2):]
    r = sch.fuse(*red_loops) if len(red_loops) > 1 else red_loops[0]
    n = _extent(sch, r)
    vw = params.lanes(store.buffer.dtype)
    rows = 1
    for lp in spatial:
        rows *= _extent(sch, lp)
    if n % vw or n < 4 * vw:
        return None
    chunks = _largest_divisor(n // vw, REDUCE_CHUNKS) if rows == 1 and n >= PARALLEL_MIN_WORK else 1
    c, m, lane = sch.split(r, [chunks, None, vw])
    sch.reorder(c, lane, m)
    rf = sch.rfactor(sch.fuse(c, lane), factor_axis=len(store.buffer.shape))
    rf_loops = sch.get_loops(rf)
    c, lane = sch.split(rf_loops[len(spatial)], [chunks, vw])
    sch.reorder(c, rf_loops[-1], lane)
    outer = sch.fuse(*rf_loops[:len(spatial)], c) if spatial else c
    if rows * chunks > 1 and _func_work(func) >= (PARALLEL_MIN_WORK if rows == 1 else ROW_PARALLEL_MIN_WORK):
        sch.parallel(outer)
    sch.vectorize(lane)
    sch.vectorize(sch.get_loops(sch.decompose_reduction(rf, sch.get_loops(rf)[-2]))[-1])
    return sch.mod["main"]


def _rule_dlight(func, target, params):
    from tvm.s_tir.dlight import cpu as dl_cpu

    for rule in (dl_cpu.Reduction(), dl_cpu.GEMV()):
        sch = rule.apply(func, target, False)
        if sch is None:
            continue
        if isinstance(sch, list):
            sch = sch[0]
        if _func_work(func) < PARALLEL_MIN_WORK:  # DLight parallelizes whatever the size
            sch = _without_parallel(func, sch)
        return sch.mod["main"]
    return None


def _func_work(func) -> int:
    """The largest loop-nest size (iterations) of any block of the unscheduled ``func``."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    return max((_work(sch, b.block_rv) for b in _block_infos(sch)), default=0)


def _without_parallel(func, sch):
    """``sch``'s schedule of ``func`` replayed without its ``parallel`` steps: the same tiling,
    vectorization and unrolling, single-threaded (for loop nests below PARALLEL_MIN_WORK, where
    the thread pool's fork/join, or a descheduled worker on a busy machine, costs more than
    the loop: Silero VAD's 1-step conv1d GEMVs took milliseconds at 2 threads)."""
    from tvm import s_tir

    trace = sch.trace
    keep = [inst for inst in trace.insts if inst.kind.name != "Parallel"]
    if len(keep) == len(trace.insts):
        return sch
    decisions = {inst: d for inst, d in trace.decisions.items() if inst.kind.name != "Parallel"}
    new = s_tir.Schedule(func)
    s_tir.Trace(keep, decisions).apply_to_schedule(new, remove_postproc=False)
    return new


def _rule_injective(func, target, params):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    infos = _block_infos(sch)
    if not infos or not all(b.is_injective() for b in infos):
        return None
    blocks = [b.block_rv for b in infos]
    # inline everything that can be inlined into its consumers (shared large values excepted)
    for k, b in enumerate(blocks[:-1]):
        if _shared_and_large(sch, b, blocks[k + 1:]):
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001
            pass
    for b in _root_blocks(sch):
        _schedule_injective_block(sch, b, params)
    return sch.mod["main"]


def _shared_and_large(sch, block, later) -> bool:
    """Whether ``block``'s value is read more than once by the ``later`` blocks and has more
    than :data:`INLINE_SHARED_MAX_NODES` expression nodes (it stays a buffer: inlined, it would
    be copied into every read)."""
    import tvm.ir.expr

    store = _body_store(sch.get(block))
    if store is None or len(_collect(store.value, tvm.ir.expr.Expr)) <= INLINE_SHARED_MAX_NODES:
        return False  # small (most producers): no need to scan the later blocks for reads
    reads = 0
    for other in later:
        other_store = _body_store(sch.get(other))
        if other_store is not None:
            reads += sum(1 for ld in _loads(other_store.value) if ld.source.same_as(store.buffer))
    return reads > 1


def _rule_fallback(func, target, params):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    changed = False
    for b in _root_blocks(sch):
        loops = sch.get_loops(b)
        if not loops:
            continue
        st = sch.get(b)
        first = sch.get(loops[0])
        # the outermost loop must bind only data-parallel block iters
        realize = _realize_of(sch, b)
        if realize is None:
            continue
        ok = True
        for iv, val in zip(st.iter_vars, realize.iter_values):
            if first.loop_var in _vars_in(val) and iv.iter_type != 0:
                ok = False
        if ok and _extent(sch, loops[0]) and _extent(sch, loops[0]) > 1 and _work(sch, b) >= PARALLEL_MIN_WORK:
            sch.parallel(loops[0])
            changed = True
    return sch.mod["main"] if changed else None


def _realize_of(sch, block):
    from tvm.s_tir.stmt import SBlockRealize

    target = sch.get(block)
    found = [r for r in _collect(sch.mod["main"].body, SBlockRealize) if r.block.same_as(target)]
    return found[0] if found else None


default_threads()
