"""Resize as one constant interpolation matrix per resized axis, for the cases TVM gets wrong.

Linear and cubic Resize are separable: along each axis the output is an affine map of the
input, ``y = M x + c`` (``c`` is tf_crop_and_resize's extrapolation value at points outside
the input, else 0). ``M`` and ``c`` are built at compile time by the ONNX reference
implementation's own 1-D routine (``onnx.reference.ops.op_resize``) applied to the identity
and to zeros, so every mode, coordinate transformation, ``cubic_coeff_a``,
``exclude_outside`` and ``antialias`` means exactly what the reference computes; the graph
gets one matmul per resized axis.

TVM's resize (``topi.image.resize2d``) is kept where it is right and cheaper: this path is
taken only for linear / cubic with ``antialias`` (TVM has none), ``half_pixel_symmetric``
(TVM refuses it), a given scale that is not ``out / in`` (TVM derives the coordinate scale
from the sizes: ``scales`` 0.6 on 4 pixels give 2 outputs sampled at 1/0.6, not 1/0.5), or
align_corners down to one pixel (TVM divides by zero).
"""

from __future__ import annotations

import numpy as np


def _text(v, default: str) -> str:
    v = default if v is None else v
    return v.decode() if isinstance(v, bytes) else str(v)


def plan(dims: list[int], axes: list[int], scales, sizes, policy: str) -> tuple[list[float], list[int]]:
    """(scale per axis, output size per axis) as the ONNX reference computes them
    (``_interpolate_nd``): sizes give ``out / in`` (one min / max ratio under not_larger /
    not_smaller, sizes then ``round_half_up(scale * in)``); scales give ``floor(in * scale)``."""
    r = len(dims)
    if sizes is not None:
        out = list(dims)
        for i, a in enumerate(axes):
            out[a] = int(sizes[i])
        factors = [out[i] / dims[i] for i in range(r)]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(factors[a] for a in axes)
            factors = [s if i in axes else 1.0 for i in range(r)]
            out = [int(s * dims[i] + 0.5) if i in axes else dims[i] for i in range(r)]
        return factors, out
    factors = [1.0] * r
    for i, a in enumerate(axes):
        factors[a] = float(scales[i])
    return factors, [int(np.float64(factors[i]) * dims[i]) for i in range(r)]


def wanted(mode: str, ctm: str, antialias: bool, dims: list[int], out: list[int], factors: list[float]) -> bool:
    """Whether this Resize takes the matrix path (see the module docstring): linear / cubic with
    antialias, half_pixel_symmetric, a scale that is not ``out / in`` on some axis (TVM
    uses ``out / in``), or align_corners down to one pixel."""
    if mode not in ("linear", "cubic"):
        return False
    inexact = any(not np.isclose(f, o / d) for f, o, d in zip(factors, out, dims))
    corner = ctm == "align_corners" and any(o == 1 < d for o, d in zip(out, dims))
    return antialias or ctm == "half_pixel_symmetric" or inexact or corner


def axis_matrix(length: int, scale: float, out: int, attr: dict, roi: list[float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(M ``[out, length]``, c ``[out]``), float64, for one axis (the reference's 1-D routine)."""
    try:
        from onnx.reference.ops import op_resize as ref
    except ImportError as err:  # pragma: no cover - onnx without the reference implementation
        raise ValueError(f"Resize: the ONNX reference implementation is not available ({err})") from err
    mode = _text(attr.get("mode"), "nearest")
    antialias = bool(attr.get("antialias", 0))
    a = float(attr.get("cubic_coeff_a", -0.75))
    if mode == "cubic":
        fn = ref._cubic_coeffs_antialias if antialias else ref._cubic_coeffs

        def coeffs(ratio, s):
            return fn(ratio, s, A=a)
    else:
        coeffs = ref._linear_coeffs_antialias if antialias else ref._linear_coeffs
    kwargs = {"roi": roi, "exclude_outside": bool(attr.get("exclude_outside", 0)),
              "extrapolation_value": float(attr.get("extrapolation_value", 0.0)),
              "coordinate_transformation_mode": _text(attr.get("coordinate_transformation_mode"), "half_pixel")}
    run = lambda data: ref._interpolate_1d_along_axis(data, 0, scale, out, coeffs, **kwargs)  # noqa: E731
    c = np.asarray(run(np.zeros((length, 1))), np.float64)[:, 0]
    m = np.asarray(run(np.eye(length)), np.float64) - c[:, None]
    return m, c


def register_lowering(relax):
    """``lower(bb, x, attr, roi, factors, out)``: the Relax expression of the matrix path."""
    op = relax.op

    def lower(bb, x, attr: dict, roi, factors: list[float], out: list[int]):
        dtype = str(x.ty.dtype)
        work = "float32" if dtype in ("float16", "bfloat16") else dtype
        y = bb.normalize(op.astype(x, work)) if work != dtype else x
        dims = [int(v) for v in x.ty.shape]
        r = len(dims)
        for axis in range(r):
            pair = None if roi is None else [float(roi[axis]), float(roi[axis + r])]
            identity = np.isclose(factors[axis], 1.0) and out[axis] == dims[axis] and (
                pair is None or (np.isclose(pair[0], 0.0) and np.isclose(pair[1], 1.0)))
            if identity:
                continue
            m, c = axis_matrix(dims[axis], factors[axis], out[axis], attr, pair)
            perm = [i for i in range(r) if i != axis] + [axis]
            moved = bb.normalize(op.permute_dims(y, perm))
            z = op.matmul(moved, relax.const(m.T.astype(work), work))
            if np.any(c):
                z = op.add(z, relax.const(c.astype(work), work))
            back = [perm.index(i) for i in range(r)]
            y = bb.normalize(op.permute_dims(bb.normalize(z), back))
        return op.astype(y, dtype) if work != dtype else y

    return lower
