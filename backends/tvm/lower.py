"""ONNX -> Relax -> compiled TVM executable: the stages shared by the CPU and ARM backends.

legalize: the ONNX frontend imports the (simplified, shape-bound) model with weights kept as
function parameters (``keep_params_in_input``), then ``DecomposeOpsForInference`` rewrites
training-style ops. lower: the target's default Relax pipeline (legalize to TIR, fuse,
plan memory) with optc's CPU stage inserted (NHWC conv layout before legalization, parallel
vectorized schedules after fusion: see ``schedule.py``). build: ``tvm.compile`` inside
``with target`` (needed for device codegen).
Weights are either bound into the library as constants ("embedded") or kept as trailing
``main`` arguments saved beside it ("separate", keys p0000, p0001, ... in order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optc.errors import InternalError, OptcError, UnsupportedModelError
from optc.frontend import TensorSpec
from optc.onnx_utils import uses_float16
from optc.targets import Target, host_cores

from . import schedule


# Converters optc adds to TVM's ONNX importer: "domain::OpType" -> a tvm OnnxOpConverter subclass
# (or anything with its ``get_converter(opset)``). optc's own ``ai.optc`` ops come from their
# registry entries (``optc.ops``: each op module's ``lower_tvm``, wrapped in :class:`OpLowering`).
# Standard ONNX ops the importer lacks or gets wrong are registered in the default domain ""
# (key "::OpType", listed by ``supported_ops`` as plain "OpType") by the modules listed in
# CONVERTER_MODULES when imported. :func:`load_converters` fills the table.
CUSTOM_CONVERTERS: dict[str, Any] = {}
CONVERTER_MODULES: tuple[str, ...] = ("optc.backends.tvm.int8", "optc.backends.tvm.onnx_ops",
                                      "optc.backends.tvm.recurrent", "optc.backends.tvm.control_flow",
                                      "optc.backends.tvm.signal_ops", "optc.backends.tvm.ml_ops",
                                      "optc.backends.tvm.vision_ops", "optc.backends.tvm.linalg_ops",
                                      "optc.backends.tvm.index_ops", "optc.backends.tvm.norm_ops",
                                      "optc.backends.tvm.contrib_ops")  # last: it aliases TVM's converters

# ops TVM's importer converts but whose lowering is wrong or fails to build: refused up front
# (listed as unsupported by ``supported_ops``) instead of failing the build or verification
BROKEN_OPS: dict[str, str] = {
    "NonMaxSuppression": "the build fails (buffer used before its definition) or the result has no boxes",
}


def register_converter(domain: str, op_type: str):
    """Decorator: lower ONNX op ``domain::op_type`` with this OnnxOpConverter subclass (one
    ``_impl_v<N>`` per opset version), or with this function ``(bb, inputs, attr, params) ->
    relax.Expr`` at every opset version (an :class:`OpLowering`)."""

    def wrap(converter):
        key = f"{domain}::{op_type}"
        CUSTOM_CONVERTERS[key] = converter if isinstance(converter, type) else OpLowering(converter)
        return converter

    return wrap


def opaque_kernel(func, ops: int | None = None):
    """A hand-scheduled PrimFunc (optc's own kernels) marked so that the Relax pipeline leaves it
    alone: scheduled (no DLight / default schedule), opaque to FuseOps, no aliasing, and no
    global_symbol (Relax's AttachGlobalSymbol names it after its unique GlobalVar). ``ops``:
    its arithmetic per call (2 per multiply-add), kept as the ``optc.ops`` attribute for the
    profile where TVM's FLOP counter cannot read a tensorized kernel."""
    attrs = {
        "tirx.is_scheduled": True,
        "tir.is_scheduled": True,
        "op_pattern": 8,  # kOpaque: FuseOps leaves the kernel alone
        "tirx.noalias": True,
    }
    if ops is not None:
        attrs["optc.ops"] = int(ops)
    return func.without_attr("global_symbol").with_attrs(attrs)


def static_shape(expr) -> list[int]:
    """The static shape of a Relax expression (converters of optc's kernels need one)."""
    return [int(v) for v in expr.ty.shape]


def call_kernel(bb, func, name: str, args: list, shape: list[int], dtype: str = "float32"):
    """``call_tir`` of PrimFunc ``func`` (added to the module as ``name``) on ``args``."""
    from tvm import relax

    return relax.call_tir(bb.add_func(func, name), args, out_ty=relax.TensorType(shape, dtype))


def conv_params(attr: dict) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel_shape, pads, strides, dilations) of an ONNX-style 2-D conv's attributes."""
    ks = [int(v) for v in attr["kernel_shape"]]
    pads = [int(v) for v in attr.get("pads", (0, 0, 0, 0))]
    strides = [int(v) for v in attr.get("strides", (1, 1))]
    dil = [int(v) for v in attr.get("dilations", (1, 1))]
    return ks, pads, strides, dil


def register_if_available(register) -> None:
    """Run a converter module's ``register()``; without TVM (ImportError) do nothing: the
    build reports that itself."""
    try:
        register()
    except ImportError:  # pragma: no cover - TVM missing
        pass


@dataclass(frozen=True)
class OpLowering:
    """An ``ai.optc`` op's TVM lowering (its registry entry's ``lowering["tvm"]``), or a standard
    op's converter function (:func:`register_converter`): a function ``(bb, inputs, attr,
    params) -> relax.Expr`` where the importer expects an ``OnnxOpConverter``, the same function
    for every opset version."""

    convert: Callable

    def get_converter(self, opset: int) -> Callable:  # noqa: ARG002 - ai.optc ops have one version
        return self.convert


def load_converters() -> dict[str, Any]:
    """Fill :data:`CUSTOM_CONVERTERS`: the TVM lowering of every registered ``ai.optc`` op
    (:func:`optc.ops.registry`) and the modules of :data:`CONVERTER_MODULES`. Returns it."""
    import importlib

    from optc import ops

    for name, op in ops.registry().items():
        if "tvm" in op.lowering:
            CUSTOM_CONVERTERS.setdefault(f"{op.domain}::{name}", OpLowering(op.lowering["tvm"]))
    for module in CONVERTER_MODULES:
        importlib.import_module(module)
    return CUSTOM_CONVERTERS


def supported_ops() -> set[str]:
    """Op types the TVM Relax ONNX frontend can convert, plus optc's registered custom ops
    (as "domain::OpType"), plus the ONNX ops defined by a function body (``expand.py``
    expands those the frontend lacks before the import)."""
    from . import expand

    return (_convertible() | expand.function_ops()) - set(BROKEN_OPS)


def _convertible() -> set[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    load_converters()
    return set(onnx_frontend._get_convert_map()) | {k.removeprefix("::") for k in CUSTOM_CONVERTERS}


def _from_onnx(model: onnx.ModelProto, shape_dict: dict, dtype_dict: dict):
    """``tvm.relax.frontend.onnx.from_onnx(model, ..., keep_params_in_input=True)`` with optc's
    converters (:data:`CUSTOM_CONVERTERS`) added for this import only.

    TVM 0.27's ``from_onnx`` takes no extra converters and its importer looks converters up
    in the module-level ``_get_convert_map()`` by op type alone. Instead of replacing that
    function for the duration of an import (global state, unsafe with concurrent imports), the
    importer here is a subclass of ``ONNXGraphImporter`` that holds its own table: its
    unsupported-op check and operator dispatch look in optc's table first (so optc's converters
    of default-domain ops replace TVM's, as before), everything else is TVM's. The module-level
    part of ``from_onnx`` (checker warning, opset detection) is repeated below.
    """
    import warnings

    from tvm import error, relax
    from tvm.relax.frontend.onnx import onnx_frontend

    load_converters()
    extra = {key.split("::", 1)[1]: cls for key, cls in CUSTOM_CONVERTERS.items()}
    # an ai.onnx.ml op gets that domain's opset (LabelEncoder 2 and 4 differ), not the default
    # domain's; the other domains' converters are written against the default opset
    ml = next((int(o.version) for o in model.opset_import if o.domain == "ai.onnx.ml"), None)
    own_opset = {key.split("::", 1)[1]: ml for key in CUSTOM_CONVERTERS if ml and key.startswith("ai.onnx.ml::")}

    class Importer(onnx_frontend.ONNXGraphImporter):
        def _check_for_unsupported_ops(self, graph) -> None:
            known = onnx_frontend._get_convert_map().keys() | extra.keys() | {"If", "Constant"}
            missing = {node.op_type for node in graph.node if node.op_type not in known}
            if missing:
                raise error.OpNotImplemented("The following operators are not supported for frontend ONNX: "
                                             + ", ".join(missing))

        def _convert_operator(self, op_name, inputs, attrs, opset):
            if op_name not in extra:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            sym = extra[op_name].get_converter(own_opset.get(op_name, opset))(self.bb, inputs, attrs,
                                                                             [self._nodes, self._params])
            return self.bb.normalize(sym) if isinstance(sym, relax.Expr) else sym

        def _convert_subgraph(self, bb, graph):
            from .control_flow import lift_branch  # an If branch: its own function, run only when taken

            convert = super()._convert_subgraph
            return lift_branch(bb, lambda: convert(bb, graph))

    if model.ir_version < 3:
        raise ValueError(f"Model IR version {model.ir_version} not supported. Must be at least after 1.1.0.")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - TVM only warns here too
        warnings.warn(str(exc))
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("ai.onnx", "")), 1)
    importer = Importer(shape_dict, dtype_dict, keep_params_in_input=True)
    return importer.from_onnx(model.graph, opset)


def tvm_target(target: Target):
    """The concrete ``tvm.target.Target`` of a table entry ("host" values are detected)."""
    import tvm

    spec = dict(target.tvm)
    if spec.get("mcpu") == "host":
        spec["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    if spec.get("num-cores") == "host":
        spec["num-cores"] = host_cores()
    return tvm.target.Target(spec)


def resolved_target_dict(target: Target) -> dict:
    """The TVM target dict with host values filled in (recorded in manifests)."""
    t = tvm_target(target)
    return {k: (list(v) if not isinstance(v, (str, int, float, bool)) else v)
            for k, v in dict(t.export()).items() if k in ("kind", "mtriple", "mcpu", "mattr", "num-cores", "keys")}


def import_onnx(model: onnx.ModelProto, inputs: list[TensorSpec], target: Target | None = None):
    """Relax module with weights as parameters, and the weights (list of tvm tensors). With a
    ``target``, the import runs in its scope: converters of optc's integer ops pick their
    kernels by target (without one, they and the integer MaxPool fall back or refuse)."""
    from tvm import relax

    from . import expand
    from .empty_tensors import replace_empty_nodes
    from .norm_fusion import fuse_layer_norms
    from .static_operands import constants_for_static_operands
    from .weight_folding import fold_constant_dequantize

    try:
        model, _ = expand.expand_functions(model, _convertible())
    except Exception as err:
        msg = " ".join(str(err).split())[:400]
        raise UnsupportedModelError(f"expanding ONNX function ops into their bodies failed: {msg}") from err
    if any(n.op_type in ("Loop", "Scan") and n.domain in ("", "ai.onnx") for n in model.graph.node):
        from optc.passes.control_flow import unroll_model  # a body's Scan (LinearAttention): static ones

        copied = onnx.ModelProto()
        copied.CopyFrom(model)
        model, _, kept = unroll_model(copied)
        if kept:
            raise UnsupportedModelError("a function op's body has a loop that cannot be unrolled: " + "; ".join(
                f"{op} {name}: {why}" for name, (op, why) in kept.items()))
    model = constants_for_static_operands(model)  # shapes/axes as compile-time constants
    model, _ = replace_empty_nodes(model)  # nodes whose outputs have no elements: empty tensors
    shape_dict = {s.name: list(s.shape) for s in inputs}
    model, _ = fold_constant_dequantize(model)  # QDQ weights of layers left in float: constants
    model, _ = fuse_layer_norms(model, shape_dict)  # written-out layer norms as one kernel
    dtype_dict = {s.name: s.dtype for s in inputs}
    scope = tvm_target(target) if target is not None else contextlib.nullcontext()
    try:
        with scope:
            mod = _from_onnx(model, shape_dict, dtype_dict)
    except OptcError:
        raise  # a converter's own named refusal
    except Exception as err:
        from .static_operands import hint

        msg = " ".join(str(err).split())[:400]
        bug = optc_bug_frame(err)
        if bug is not None:
            where = f"{type(err).__name__} at {Path(bug.filename).name}:{bug.lineno} in {bug.name}"
            raise InternalError("import (optc's ONNX converters)", f"{where}: {msg}") from err
        raise UnsupportedModelError(f"TVM's ONNX frontend could not import the model: {msg}{hint(model)}") from err
    mod, params = relax.frontend.detach_params(mod)
    return mod, list(params.get("main", []))


def _optc_source_dirs() -> tuple[Path, ...]:
    """The folders of optc's own source: ``toolchain/`` (optc), ``passes/``, ``backends/``."""
    import optc
    import optc.backends
    import optc.passes

    return tuple(Path(m.__file__).resolve().parent for m in (optc, optc.backends, optc.passes))


def optc_bug_frame(err: BaseException):
    """The innermost traceback frame of ``err`` if it marks a bug in optc's own code, else None.

    An import failure is the model's (a refusal) when TVM's frontend raised it, or when one
    of optc's converters refused a pattern on purpose (a ``raise`` statement: ``ValueError``
    "Det: 5x5 matrices are not lowered", ...). It is optc's bug when the innermost frame is in
    optc's source and is not such a statement: a ``NameError``, ``AttributeError``,
    ``TypeError``, ``KeyError``, an ``assert``, a failed unpacking, ... in a converter; a
    ``raise`` of a programming-error class (``TypeError``, ``KeyError``, ...) there too; and a
    TVM check failure (``tvm.error.InternalError``: an IR built wrongly, e.g. an op on an
    expression not yet normalized) or a ``SyntaxError`` (TVMScript optc generated) inside a
    TVM call one of optc's converters made (the innermost frame of optc's source outside this
    module's import driver is returned)."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ is not None else []
    if not frames:
        return None
    last = frames[-1]
    try:
        path = Path(last.filename).resolve()
    except OSError:  # pragma: no cover - an unusual frame name (<string>)
        return None
    dirs = _optc_source_dirs()
    if not any(path.is_relative_to(d) for d in dirs):
        if isinstance(err, SyntaxError) or (type(err).__module__ == "tvm.error" and type(err).__name__ == "InternalError"):
            mine = [f for f in frames if Path(f.filename).resolve() != Path(__file__).resolve()
                    and any(Path(f.filename).resolve().is_relative_to(d) for d in dirs)]
            return mine[-1] if mine else None
        return None
    deliberate = (last.line or "").lstrip().startswith("raise ")
    programming = isinstance(err, (NameError, AttributeError, TypeError, LookupError, AssertionError,
                                   ZeroDivisionError, RecursionError))
    return last if programming or not deliberate else None


def bounded_gathers(mod):
    """``mod`` with every ``take`` in ``clip`` mode instead of TVM's default ``fast``: an index
    outside the table (the frontend has already wrapped negative ones), such as a token id past
    an embedding's vocabulary, reads the nearest row instead of memory past the table (a
    segfault, or garbage). onnxruntime refuses such an input; optc's code stays memory-safe but
    does not detect it. Clamping costs a min and a max per index; it also keeps TVM's "Fast
    mode segfaults" warning, printed once per gather at every build, off the user's terminal."""
    from tvm import relax

    from .schedule import _rewrite_calls

    def clip(_m, call):
        if getattr(call.op, "name", None) != "relax.take" or str(call.attrs.mode) != "fast":
            return call
        return relax.op.take(call.args[0], call.args[1], axis=call.attrs.axis, mode="clip")

    return _rewrite_calls(mod, clip)


def prepare_module(model: onnx.ModelProto, inputs: list[TensorSpec], target: Target, *, embed_params: bool):
    """The Relax module that :func:`build` schedules and tuning extracts tasks from: imported
    in the target's scope, weights bound as constants (``embed_params``) or left as trailing
    parameters, training-style ops decomposed. Returns (module, params or [] if embedded).

    The importer builds a graph with an ``If`` without any dataflow block (Relax allows no
    control flow inside one), and FuseOps fuses only inside dataflow blocks: the runs of
    plain bindings around the If and in the branch functions (``control_flow.lift_branch``)
    are put back into dataflow blocks (``ConvertToDataflow``), so those models get fused
    kernels too."""
    from tvm import relax

    mod, params = import_onnx(model, inputs, target)
    if uses_float16(model):
        from .half_accumulate import accumulate_half_in_float

        mod = accumulate_half_in_float(mod)  # float16 conv/matmul sums in float32, one rounding
    if any(n.op_type == "If" for n in model.graph.node):
        mod = relax.transform.ConvertToDataflow(min_size=1)(mod)
    if embed_params and params:
        weights = mod["main"].params[len(inputs):]
        mod = relax.transform.BindParams("main", dict(zip(weights, params)))(mod)
        params = []
    mod = bounded_gathers(mod)
    try:
        return relax.transform.DecomposeOpsForInference()(mod), params
    except Exception as err:  # the module imported: failing to decompose it is optc's (or TVM's) bug
        msg = " ".join(str(err).split())[:400]
        raise InternalError(f"build for {target.name} (DecomposeOpsForInference)", msg) from err


def build(model: onnx.ModelProto, inputs: list[TensorSpec], target: Target, *, embed_params: bool,
          tuning=None, record: dict | None = None):
    """Compile the model for ``target``; returns (executable, params or [] if embedded).

    ``tuning`` (a ``tune.TuningRequest``; None: the default database location, no tuning) is
    the explicit MetaSchedule input: tune first if it asks for trials, then apply the target's
    database (if any) before optc's rule schedules. ``record`` receives what the build did:
    ``schedules`` (``schedule.schedule_cpu``'s per-function records), ``tuning`` (the applied
    ``tune.BuildTuning`` or None) and ``tuning_summary``. A failure after a successful import is
    a bug in optc or TVM: :class:`InternalError` with the cause chained."""
    import tvm

    from . import tune
    from .empty_tensors import check_constants

    record = {} if record is None else record
    request = tuning or tune.TuningRequest()
    mod, params = prepare_module(model, inputs, target, embed_params=embed_params)
    tgt = tvm_target(target)
    try:
        record["tuning_summary"] = request.tune(mod, tgt)
        record["tuning"] = database = tune.open_build(tgt, request.root)
        with tgt:
            pipeline = schedule.relax_pipeline(tgt, log=record.setdefault("schedules", []),
                                               pre_schedule=database.apply if database else None)
            lowered = pipeline(mod)
            check_constants(lowered)  # zero-size constants TVM cannot load back: refused by name
            executable = tvm.compile(lowered, tgt)
    except OptcError:
        raise
    except Exception as err:
        msg = " ".join(str(err).split())[:400]
        if "has not been computed" in msg:  # VM shape lowering: a shape only known from input values
            from .static_operands import hint

            raise UnsupportedModelError("an output or intermediate shape depends on input values TVM cannot "
                                        f"compute before running ({msg[:200]}){hint(model)}") from err
        raise InternalError(f"TVM build for {target.name}", msg) from err
    return executable, params


def save_params(params: list, path: Path) -> None:
    import tvm

    tvm.runtime.save_param_dict_to_file({f"p{i:04d}": p for i, p in enumerate(params)}, str(path))


def load_params(path: Path) -> list:
    import tvm

    d = tvm.runtime.load_param_dict_from_file(str(path))
    return [d[k] for k in sorted(d)]


_DLPACK_DTYPES = frozenset(("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16",
                            "uint32", "uint64", "bool"))


def host_tensor(array: np.ndarray):
    """A numpy array as a TVM host tensor without a copy where it is 64-byte aligned,
    contiguous (the alignment TVM's kernels assume) and writable, else through one aligned
    copy; a zero-size array as a fresh compact tensor."""
    import tvm_ffi

    a = np.asarray(array, order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
    if a.size == 0:  # numpy gives a zero-size array all-zero strides, which TVM refuses as not compact
        import tvm

        return tvm.runtime.empty(a.shape, str(a.dtype))
    # a read-only array (np.frombuffer, onnx's numpy_helper.to_array, a memory map) cannot go
    # through DLPack as it is: copied like an unaligned one. The address is read from the DLPack
    # tensor (``ndarray.ctypes.data`` costs 1.7 us, more than the whole conversion)
    if a.dtype.kind in "fiub" and a.dtype.byteorder != ">" and a.flags.writeable:
        t = tvm_ffi.from_dlpack(a)
        if t.data_ptr() % 64 == 0:
            return t
    buf = np.empty(a.nbytes + 64, np.uint8)
    off = (-tvm_ffi.from_dlpack(buf).data_ptr()) % 64
    b = buf[off:off + a.nbytes].view(a.dtype.newbyteorder("=")).reshape(a.shape)
    b[...] = a
    return tvm_ffi.from_dlpack(b)


def flatten_outputs(out) -> list[np.ndarray]:
    """A VM result (tensor or nested tuple of tensors) as a flat list of numpy arrays (host
    tensors copied through DLPack, which costs a fraction of ``Tensor.numpy()``'s overhead)."""
    if hasattr(out, "numpy"):
        if out.device.dlpack_device_type() == 1 and str(out.dtype) in _DLPACK_DTYPES:  # kDLCPU
            return [np.from_dlpack(out).copy()]
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(flatten_outputs(item))
    return result
