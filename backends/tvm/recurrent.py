"""Converters for the ONNX recurrent ops TVM's Relax ONNX importer lacks: LSTM, GRU, RNN, and
com.microsoft DynamicQuantizeLSTM (onnxruntime's ``quantize_dynamic`` of an LSTM) on CPUs:
:func:`convert_dynamic` inside :func:`register`, the same kernel on integer GEMVs.

Registered in the default domain (``lower.register_converter("", op)``). The sequence length
is static after optc's shape binding. float32 nodes on CPUs (:func:`use_kernel`): the input projection
``X W^T (+ biases)`` of all steps and directions is one ``matmul``, the recurrence one call of a
hand-scheduled TIR kernel (``recurrent_kernel.py``: a serial loop over the steps per direction,
the GEMV ``h R^T`` and the cell fused per step), which supports every variant below. Other
dtypes: the recurrence unrolled over the time steps in plain Relax ops (one ``matmul`` of the
hidden state per step and direction), a few VM calls and allocations per step.

ONNX definitions (``t`` the time step, gates' weights stacked in ``W``/``R``/``B``, ``f``, ``g``,
``h`` the activations, default Sigmoid, Tanh, Tanh; ``(.)`` elementwise):

- RNN (gate i): ``Ht = f(Xt Wi^T + Ht-1 Ri^T + Wbi + Rbi)``, default ``f`` = Tanh.
- GRU (gates z, r, h)::

    zt = f(Xt Wz^T + Ht-1 Rz^T + Wbz + Rbz)
    rt = f(Xt Wr^T + Ht-1 Rr^T + Wbr + Rbr)
    ht = g(Xt Wh^T + (rt (.) Ht-1) Rh^T + Rbh + Wbh)        # linear_before_reset = 0
    ht = g(Xt Wh^T + rt (.) (Ht-1 Rh^T + Rbh) + Wbh)        # linear_before_reset != 0
    Ht = (1 - zt) (.) ht + zt (.) Ht-1

- LSTM (gates i, o, f, c; peepholes ``P[iof]``)::

    it = f(Xt Wi^T + Ht-1 Ri^T + Pi (.) Ct-1 + Wbi + Rbi)
    ft = f(Xt Wf^T + Ht-1 Rf^T + Pf (.) Ct-1 + Wbf + Rbf)   # 1 - it with input_forget
    ct = g(Xt Wc^T + Ht-1 Rc^T + Wbc + Rbc)
    Ct = ft (.) Ct-1 + it (.) ct
    ot = f(Xt Wo^T + Ht-1 Ro^T + Po (.) Ct + Wbo + Rbo)
    Ht = ot (.) h(Ct)

``clip`` bounds the input of every activation to ``[-clip, clip]``. ``direction`` forward,
reverse (steps from the last to the first) or bidirectional (both, stacked on the
num_directions axis). ``layout`` 1 puts the batch first in X, initial states and outputs.
Outputs: ``Y`` ``[T, D, B, H]`` (every step's hidden state), ``Y_h`` (and LSTM's ``Y_c``) the last
state ``[D, B, H]``. ``sequence_lens`` ``[B]``: a constant equal to T everywhere is ignored;
otherwise a step ``t >= len[b]`` leaves sequence b's state unchanged and its ``Y`` zero (as
onnxruntime does: a reverse direction then starts at step ``len[b] - 1``).

Activations (names case-insensitive; ``activation_alpha`` / ``activation_beta`` consumed in
order by the activations that take them, else the ONNX operator's default): Relu, Tanh,
Sigmoid, Affine (alpha x + beta), LeakyRelu, ThresholdedRelu, ScaledTanh (alpha tanh(beta x)),
HardSigmoid (clip(alpha x + beta, 0, 1)), Elu, Softsign, Softplus.
"""

from __future__ import annotations

from .lower import register_converter, register_if_available

# activation name (lower case) -> (alpha default, beta default); None: takes no such parameter
_ACTIVATION_PARAMS: dict[str, tuple[float | None, float | None]] = {
    "relu": (None, None), "tanh": (None, None), "sigmoid": (None, None),
    "affine": (1.0, 0.0), "leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, None),
    "softsign": (None, None), "softplus": (None, None),
}

# op type -> (gates, default activations per direction)
_CELLS = {"RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")), "LSTM": (4, ("Sigmoid", "Tanh", "Tanh"))}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def activation_specs(op_type: str, attr: dict, directions: int) -> list[list[tuple[str, float, float]]]:
    """Per direction, the cell's activations as (lower-case name, alpha, beta)."""
    _, defaults = _CELLS[op_type]
    names = [_text(a) for a in attr.get("activations", [])] or list(defaults) * directions
    if len(names) == len(defaults) and directions == 2:
        names = names * 2
    if len(names) != len(defaults) * directions:
        raise ValueError(f"{op_type} needs {len(defaults) * directions} activations, got {len(names)}")
    alphas = [float(a) for a in attr.get("activation_alpha", [])]
    betas = [float(b) for b in attr.get("activation_beta", [])]
    specs = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATION_PARAMS:
            raise ValueError(f"{op_type}: unsupported activation {name!r}")
        alpha_default, beta_default = _ACTIVATION_PARAMS[key]
        alpha = (alphas.pop(0) if alphas else alpha_default) if alpha_default is not None else 0.0
        beta = (betas.pop(0) if betas else beta_default) if beta_default is not None else 0.0
        specs.append((key, alpha, beta))
    per = len(defaults)
    return [specs[d * per:(d + 1) * per] for d in range(directions)]


def use_kernel(dtype: str, target_kind: str | None = None) -> bool:
    """Whether a recurrent node is lowered to the ``recurrent_kernel``: float32 on LLVM CPU
    targets (the kernel is a CPU loop nest; ``target_kind`` None: the import runs outside a
    target scope, e.g. tuning task extraction), else unrolled in Relax ops (which GPU
    schedules such as DLight's handle)."""
    return dtype == "float32" and target_kind in (None, "llvm")


def register() -> None:
    import numpy as np
    import tvm
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_constant

    op = relax.op

    def dtype_of(expr) -> str:
        return str(expr.ty.dtype)

    def shape_of(expr) -> list:
        """Static dims as ints; a symbolic dim stays the TIR expression (X is checked)."""
        shape = getattr(expr.ty, "shape", None)
        if shape is None:
            return []
        return [int(v) if isinstance(v, tirx.IntImm) else v for v in shape]

    def activate(bb, x, spec, clip):
        name, alpha, beta = spec
        # bind an expression once; re-emitting a bound var would add an alias binding that
        # stops FuseOps from fusing the gate's slice into this activation's kernel
        x = x if isinstance(x, relax.Var) else bb.emit(x)
        dt = dtype_of(x)

        def c(v):
            return relax.const(v, dt)

        if clip is not None:
            x = op.clip(x, -clip, clip)
        if name == "relu":
            y = op.nn.relu(x)
        elif name == "tanh":
            y = op.tanh(x)
        elif name == "sigmoid":
            y = op.sigmoid(x)
        elif name == "affine":
            y = op.add(op.multiply(x, c(alpha)), c(beta))
        elif name == "leakyrelu":
            y = op.where(op.greater_equal(x, c(0.0)), x, op.multiply(x, c(alpha)))
        elif name == "thresholdedrelu":
            y = op.where(op.greater(x, c(alpha)), x, op.zeros_like(x))
        elif name == "scaledtanh":
            y = op.multiply(op.tanh(op.multiply(x, c(beta))), c(alpha))
        elif name == "hardsigmoid":
            y = op.minimum(op.maximum(op.add(op.multiply(x, c(alpha)), c(beta)), c(0.0)), c(1.0))
        elif name == "elu":
            y = op.where(op.greater_equal(x, c(0.0)), x, op.multiply(op.subtract(op.exp(x), c(1.0)), c(alpha)))
        elif name == "softsign":
            y = op.divide(x, op.add(op.abs(x), c(1.0)))
        else:  # softplus, stable: max(x, 0) + log(1 + exp(-|x|))
            y = op.add(op.nn.relu(x), op.log(op.add(op.exp(op.negative(op.abs(x))), c(1.0))))
        return bb.emit(y)

    def pick(bb, x, index: int, axis: int = 0):
        """x[index] along axis (that axis dropped)."""
        part = op.strided_slice(x, axes=[axis], begin=[index], end=[index + 1])
        return bb.emit(op.squeeze(part, axis=[axis]))

    def parts(bb, x, n: int, axis: int = -1) -> list:
        """x cut into n equal parts along axis: one strided_slice each (injective, so fusion
        folds it into the gate's elementwise kernel; a ``split`` is a kernel of its own per
        step, writing n new tensors)."""
        if n == 1:
            return [x]
        size = shape_of(x)[axis] // n
        return [bb.emit(op.strided_slice(x, axes=[axis], begin=[i * size], end=[(i + 1) * size]))
                for i in range(n)]

    def sequence_mask(bb, seq, steps: int, batch: int):
        """None when sequence_lens is absent or a constant equal to ``steps``; else a
        ``[T, B, 1]`` bool tensor (step t < len[b])."""
        lens = constant_lens(seq, steps, batch)
        if lens is None:
            return None
        t = relax.const(np.arange(steps, dtype="int64").reshape(steps, 1))
        return bb.emit(op.expand_dims(op.less(t, op.reshape(lens, (1, batch))), axis=[2]))

    def convert(op_type: str, bb, inputs, attr, params):
        """The recurrent kernel (``recurrent_kernel``) for float32; the unrolled Relax ops else."""
        target = tvm.target.Target.current(allow_none=True)
        if use_kernel(dtype_of(inputs[0]), str(target.kind.name) if target is not None else None):
            return convert_kernel(op_type, bb, inputs, attr, params)
        return convert_unrolled(op_type, bb, inputs, attr, params)

    def node_attrs(op_type: str, attr) -> dict:
        direction = _text(attr.get("direction", b"forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"{op_type}: unknown direction {direction!r}")
        dirs = 2 if direction == "bidirectional" else 1
        return dict(direction=direction, dirs=dirs, layout=int(attr.get("layout", 0)),
                    clip=float(attr["clip"]) if "clip" in attr else None,
                    input_forget=bool(int(attr.get("input_forget", 0))),
                    linear_before_reset=bool(int(attr.get("linear_before_reset", 0))),
                    acts=activation_specs(op_type, attr, dirs))

    def unpack(op_type: str, bb, inputs, layout: int = 0) -> list:
        """X, W, R, B, sequence_lens, initial_h, initial_c, P (None where absent); with
        ``layout`` 1 (batch first) X [B, T, I] -> [T, B, I] and the states [B, D, H] -> [D, B, H]."""
        x, w, r, b, seq, h0, c0, p = list(inputs) + [None] * (8 - len(inputs))
        c0, p = (c0, p) if op_type == "LSTM" else (None, None)
        if layout == 1:
            x, h0, c0 = (bb.emit(op.permute_dims(v, [1, 0, 2])) if v is not None else None for v in (x, h0, c0))
        return [x, w, r, b, seq, h0, c0, p]

    def static_x(op_type: str, x) -> list[int]:
        x_shape = shape_of(x)
        if len(x_shape) != 3 or not all(isinstance(v, int) for v in x_shape):  # also: rank unknown
            raise ValueError(f"{op_type}: input X must be 3-D with static dims ([seq, batch, input], or "
                             f"[batch, seq, input] with layout=1), got shape {tuple(x_shape)}; in a "
                             "branch of an If, the branch not taken for the bound input shapes may be "
                             "invalid for them (freeze the condition's input with --const-input)")
        return x_shape

    def constant_lens(seq, steps: int, batch: int):
        """None when sequence_lens is absent or a constant equal to ``steps``; else as int64."""
        if seq is None:
            return None
        if isinstance(seq, tvm.ir.expr.Constant):
            lens = seq.value.numpy()
            if lens.size == batch and bool(np.all(lens == steps)):
                return None
        return op.astype(seq, "int64") if dtype_of(seq) != "int64" else seq

    def int8_weight(r, params, rk):
        """R's transpose as int8 codes and per-column scales (``recurrent_kernel.int8_grid``)
        where R is a constant on such a grid (a quantized model's weights), else None. Each step
        reads the whole R: an LSTM with H = 512 over 100 steps ran in 0.58x the time (1 thread,
        0.66x at 2) with a quarter of the bytes; H = 128: 0.94x / 0.86x; H = 32: 0.98x / 1.03x."""
        r = get_constant(r, params)
        if not isinstance(r, tvm.ir.expr.Constant) or r.value.dtype != "float32":
            return None
        return rk.int8_grid(np.transpose(r.value.numpy(), (0, 2, 1)))

    def convert_kernel(op_type: str, bb, inputs, attr, params):
        """Input projection of every step and direction as one matmul, the recurrence as one
        ``recurrent_kernel`` call writing Y [T, D, B, H], Y_h (and Y_c) directly."""
        from . import recurrent_kernel as rk

        gates, _ = _CELLS[op_type]
        x, w, r, b, seq, h0, c0, p = unpack(op_type, bb, inputs, int(attr.get("layout", 0)))
        a = node_attrs(op_type, attr)
        dirs, dt = a["dirs"], "float32"
        hidden = int(attr["hidden_size"]) if "hidden_size" in attr else shape_of(r)[-1]
        steps, batch, size = static_x(op_type, x)
        lens = constant_lens(get_constant(seq, params) if seq is not None else None, steps, batch)
        gh = gates * hidden
        w_t = op.permute_dims(op.reshape(w, (dirs * gh, size)), [1, 0])  # [I, D*G*H]
        xw = op.matmul(op.reshape(x, (steps * batch, size)), w_t)  # [T*B, D*G*H]
        rb = None
        if b is not None:
            wb, rb = parts(bb, b, 2)  # [D, G*H] each
            xw = op.add(xw, op.reshape(op.add(wb, rb) if op_type != "GRU" else wb, (dirs * gh,)))
        zeros = relax.const(np.zeros((dirs, batch, hidden), dtype=dt))
        grid = int8_weight(r, params, rk)
        rt = [relax.const(grid[0]), relax.const(grid[1])] if grid else [bb.emit(op.permute_dims(r, [0, 2, 1]))]
        args = [bb.emit(xw), *rt, h0 if h0 is not None else zeros]
        if op_type == "LSTM":
            args.append(c0 if c0 is not None else zeros)
            if p is not None:
                args.append(p)
        if op_type == "GRU":
            args.append(rb if rb is not None else relax.const(np.zeros((dirs, gh), dtype=dt)))
        if lens is not None:
            args.append(bb.emit(lens))
        return call_kernel(op_type, bb, a, (steps, batch, hidden), args, peepholes=p is not None,
                           lens=lens is not None, int8_weights=grid is not None)

    def call_kernel(op_type: str, bb, a: dict, dims: tuple[int, int, int], args: list, **flags):
        """The ``recurrent_kernel`` call on ``args`` (``kernel_args`` order) and its outputs
        (``layout`` 1: batch first again); ``flags``: the rest of the CellSpec."""
        from optc.backends.tvm.schedule import _vector_bits

        from . import recurrent_kernel as rk

        steps, batch, hidden = dims
        dirs, dt = a["dirs"], "float32"
        target = tvm.target.Target.current(allow_none=True)
        spec = rk.CellSpec(op_type, steps, batch, hidden,
                           tuple(a["direction"] == "reverse" or d == 1 for d in range(dirs)),
                           tuple(tuple(s) for s in a["acts"]), a["clip"], a["input_forget"],
                           a["linear_before_reset"], lanes=(_vector_bits(target) if target is not None else 128) // 32,
                           **flags)
        outs = [relax.TensorType([steps, dirs, batch, hidden], dt)]
        outs += [relax.TensorType([dirs, batch, hidden], dt) for _ in range(2 if op_type == "LSTM" else 1)]
        gv = bb.add_func(rk.kernel(spec), f"{op_type.lower()}_kernel")
        res = bb.emit(relax.call_tir(gv, args, out_ty=outs))
        y, y_h = bb.emit(relax.TupleGetItem(res, 0)), bb.emit(relax.TupleGetItem(res, 1))
        y_c = bb.emit(relax.TupleGetItem(res, 2)) if op_type == "LSTM" else None
        if a["layout"] == 1:
            y = bb.emit(op.permute_dims(y, [2, 0, 1, 3]))  # [B, T, D, H]
            y_h = bb.emit(op.permute_dims(y_h, [1, 0, 2]))
            y_c = bb.emit(op.permute_dims(y_c, [1, 0, 2])) if y_c is not None else None
        return relax.Tuple([y, y_h] + ([y_c] if y_c is not None else []))

    def convert_dynamic(bb, inputs, attr, params):
        """com.microsoft DynamicQuantizeLSTM as onnxruntime computes it
        (``optc.passes.quant.dynamic_lstm``): X quantized to uint8 per tensor at run time, the
        input projection of every step on the int8 dense kernel (MatMulInteger's lowering),
        scaled by ``s_x * s_w``; the recurrence in the ``recurrent_kernel`` with the state
        quantized per step and the GEMV in int32 (``CellSpec.dynamic``: VNNI where the target
        has it and R is symmetric int8, else int16 codes minus zero points)."""
        from optc.passes.quant.dynamic_lstm import unsupported_attrs

        from . import int8
        from . import recurrent_kernel as rk

        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "llvm":
            raise ValueError("DynamicQuantizeLSTM is lowered for CPU targets only (expand-dynamic-lstm "
                             "rewrites it to a float LSTM for others)")
        if why := unsupported_attrs(attr):
            raise ValueError(f"DynamicQuantizeLSTM: {why} are not supported")
        x, w, r, b, seq, h0, c0, p, ws, wz, rs, rz = list(inputs) + [None] * (12 - len(inputs))
        a = node_attrs("LSTM", attr)
        dirs, hidden = a["dirs"], int(attr["hidden_size"])
        if a["layout"]:
            raise ValueError("DynamicQuantizeLSTM: layout=1 is not supported")
        steps, batch, size = static_x("DynamicQuantizeLSTM", x)
        if seq is not None and constant_lens(get_constant(seq, params), steps, batch) is not None:
            raise ValueError("DynamicQuantizeLSTM: sequence_lens shorter than the sequence are not supported")
        consts = {}
        for label, v in (("W", w), ("R", r), ("W_scale", ws), ("W_zero_point", wz), ("R_scale", rs),
                         ("R_zero_point", rz)):
            v = get_constant(v, params) if v is not None else None
            if v is not None and not isinstance(v, tvm.ir.expr.Constant):
                raise ValueError(f"DynamicQuantizeLSTM: {label} is not a constant")
            consts[label] = None if v is None else v.value.numpy()
        if consts["W"] is None or consts["R"] is None or consts["W_scale"] is None or consts["R_scale"] is None:
            raise ValueError("DynamicQuantizeLSTM: W, R and their scales are required")
        gh = 4 * hidden

        def per_column(v, d, dtype):  # a per-direction [D] or per-column [D, 4H] parameter, as [4H]
            return np.broadcast_to(np.asarray(v, dtype).reshape(dirs, -1)[d], (gh,))

        # one GEMM for every direction: W's columns side by side, per-column zero points and scales
        xq, sx, zx = int8.dynamic_quantize(bb, bb.emit(op.reshape(x, (steps * batch, size))))
        w_cols = np.ascontiguousarray(np.concatenate(list(consts["W"]), axis=1))  # [I, D*4H]
        zw = None if consts["W_zero_point"] is None or not np.any(consts["W_zero_point"]) else relax.const(
            np.concatenate([per_column(consts["W_zero_point"], d, consts["W"].dtype) for d in range(dirs)]))
        acc = bb.emit(int8._matmul_integer(bb, xq, relax.const(w_cols), zx, zw, params))
        w_scale = relax.const(np.concatenate([per_column(consts["W_scale"], d, np.float32) for d in range(dirs)]))
        xw = op.multiply(op.astype(acc, "float32"), op.multiply(sx, w_scale))  # [T*B, D*4H]
        if b is not None:  # Wb + Rb, added after the recurrent term (as the spec reference)
            wb, rb = parts(bb, b, 2)
            bias = bb.emit(op.add(wb, rb))
        else:
            bias = relax.const(np.zeros((dirs, gh), np.float32))
        codes, zr = consts["R"], consts["R_zero_point"]  # [D, H, 4H]: rows k, columns n
        vnni = int8.current_isa() == "vnni" and codes.dtype == np.int8 and (zr is None or not np.any(zr))
        r_scale = np.stack([per_column(consts["R_scale"], d, np.float32) for d in range(dirs)])
        r_zero = None if zr is None else np.stack([per_column(zr, d, np.int64) for d in range(dirs)])
        rt = [relax.const(v) for v in rk.dynamic_weights(codes, r_zero, r_scale, vnni)] + [bias]
        zeros = relax.const(np.zeros((dirs, batch, hidden), dtype="float32"))
        args = [bb.emit(xw), *rt, h0 if h0 is not None else zeros, c0 if c0 is not None else zeros]
        if p is not None:
            args.append(p)
        return call_kernel("LSTM", bb, a, (steps, batch, hidden), args, peepholes=p is not None,
                           dynamic="vnni" if vnni else "int16")

    def convert_unrolled(op_type: str, bb, inputs, attr, params):
        gates, _ = _CELLS[op_type]
        x, w, r, b, seq, h0, c0, p = unpack(op_type, bb, inputs, int(attr.get("layout", 0)))
        if seq is not None:
            seq = get_constant(seq, params)
        a = node_attrs(op_type, attr)
        direction, dirs, layout, acts = a["direction"], a["dirs"], a["layout"], a["acts"]
        clip, input_forget, linear_before_reset = a["clip"], a["input_forget"], a["linear_before_reset"]
        hidden = int(attr["hidden_size"]) if "hidden_size" in attr else shape_of(r)[-1]
        dt = dtype_of(x)
        steps, batch, _ = static_x(op_type, x)
        mask = sequence_mask(bb, seq, steps, batch)
        zeros = relax.const(np.zeros((batch, hidden), dtype=dt), dt)  # (relax.const alone: float64 -> float32)

        ys, hs, cs = [], [], []
        for d in range(dirs):
            reverse = direction == "reverse" or d == 1
            f_acts = acts[d]
            w_d = pick(bb, w, d)  # [G*H, I]
            r_t = bb.emit(op.permute_dims(pick(bb, r, d), [1, 0]))  # [H, G*H]
            xw = op.matmul(x, op.permute_dims(w_d, [1, 0]))  # [T, B, G*H]
            rb = None
            if b is not None:
                b_d = pick(bb, b, d)
                wb, rb = parts(bb, b_d, 2)
                if op_type != "GRU":  # Wb + Rb folded into the input projection
                    xw = op.add(xw, op.add(wb, rb))
                    rb = None
                else:
                    xw = op.add(xw, wb)
            xw = bb.emit(xw)
            xw_steps = [pick(bb, xw, t) for t in range(steps)]
            h = pick(bb, h0, d) if h0 is not None else zeros
            c = pick(bb, c0, d) if c0 is not None else zeros
            p_i = p_o = p_f = None
            if p is not None:
                p_i, p_o, p_f = parts(bb, pick(bb, p, d), 3)
            if op_type == "GRU" and not linear_before_reset:
                r_h = parts(bb, r_t, 3)[2]  # [H, H]
                rb_h = parts(bb, rb, 3)[2] if rb is not None else None
            y_steps = [None] * steps
            order = range(steps - 1, -1, -1) if reverse else range(steps)
            for t in order:
                hr = op.matmul(h, r_t)  # [B, G*H]
                if op_type == "RNN":
                    h_new = activate(bb, op.add(xw_steps[t], hr), f_acts[0], clip)
                    c_new = None
                elif op_type == "GRU":
                    hr = bb.emit(op.add(hr, rb) if rb is not None else hr)
                    x_z, x_r, x_h = parts(bb, xw_steps[t], 3)
                    h_z, h_r, h_h = parts(bb, hr, 3)
                    z = activate(bb, op.add(x_z, h_z), f_acts[0], clip)
                    rr = activate(bb, op.add(x_r, h_r), f_acts[0], clip)
                    if linear_before_reset:
                        cand = op.add(x_h, op.multiply(rr, h_h))
                    else:
                        cand = op.add(x_h, op.matmul(op.multiply(rr, h), r_h))
                        if rb_h is not None:
                            cand = op.add(cand, rb_h)
                    hh = activate(bb, cand, f_acts[1], clip)
                    one = relax.const(1.0, dt)
                    h_new = bb.emit(op.add(op.multiply(op.subtract(one, z), hh), op.multiply(z, h)))
                    c_new = None
                else:
                    g_i, g_o, g_f, g_c = parts(bb, bb.emit(op.add(xw_steps[t], hr)), 4)
                    if p_i is not None:
                        g_i = op.add(g_i, op.multiply(p_i, c))
                        g_f = op.add(g_f, op.multiply(p_f, c))
                    i_t = activate(bb, g_i, f_acts[0], clip)
                    f_t = (bb.emit(op.subtract(relax.const(1.0, dt), i_t)) if input_forget
                           else activate(bb, g_f, f_acts[0], clip))
                    c_t = activate(bb, g_c, f_acts[1], clip)
                    c_new = bb.emit(op.add(op.multiply(f_t, c), op.multiply(i_t, c_t)))
                    if p_o is not None:
                        g_o = op.add(g_o, op.multiply(p_o, c_new))
                    o_t = activate(bb, g_o, f_acts[0], clip)
                    h_new = bb.emit(op.multiply(o_t, activate(bb, c_new, f_acts[2], None)))
                if mask is not None:
                    m = pick(bb, mask, t)  # [B, 1]
                    y_steps[t] = bb.emit(op.where(m, h_new, zeros))
                    h = bb.emit(op.where(m, h_new, h))
                    if c_new is not None:
                        c = bb.emit(op.where(m, c_new, c))
                else:
                    y_steps[t] = h = h_new
                    if c_new is not None:
                        c = c_new
            ys.append(bb.emit(op.stack(y_steps, axis=0)))  # [T, B, H]
            hs.append(h)
            cs.append(c)

        y = bb.emit(op.stack(ys, axis=1))  # [T, D, B, H]
        y_h = bb.emit(op.stack(hs, axis=0))  # [D, B, H]
        y_c = bb.emit(op.stack(cs, axis=0)) if op_type == "LSTM" else None
        if layout == 1:
            y = bb.emit(op.permute_dims(y, [2, 0, 1, 3]))  # [B, T, D, H]
            y_h = bb.emit(op.permute_dims(y_h, [1, 0, 2]))
            y_c = bb.emit(op.permute_dims(y_c, [1, 0, 2])) if y_c is not None else None
        return relax.Tuple([y, y_h] + ([y_c] if y_c is not None else []))

    def make(op_type: str):
        @register_converter("", op_type)
        class _Recurrent(OnnxOpConverter):
            @classmethod
            def _impl_v7(cls, bb, inputs, attr, params):
                return convert(op_type, bb, inputs, attr, params)

            _impl_v1 = _impl_v7

        _Recurrent.__name__ = _Recurrent.__qualname__ = op_type
        return _Recurrent

    for name in _CELLS:
        make(name)

    register_converter("com.microsoft", "DynamicQuantizeLSTM")(convert_dynamic)


register_if_available(register)
