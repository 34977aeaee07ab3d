"""optc's own ONNX operators (domain ``ai.optc``): one module per op.

Each module here defines one op completely: its contract (the reference class's docstring), its
schema, numpy reference, cost and TVM lowering, declared together by :func:`optc.ops.define`
(the registry, :mod:`optc.ops`, imports this package on its first lookup). Adding an op is
adding a module here (plus its test); nothing else names it. Modules whose name starts with
``_`` hold what several ops share (schema pieces, cost surrogates, examples, lowering glue)
and define no op.

The numerics the references and kernels share live beside the passes that emit the ops:
bit packing and the exact binary / bit-serial integer cores in :mod:`optc.passes.optc_ops`,
fixed-point requantization and the integer layer cores in :mod:`optc.passes.quant.int_ops`.
The lowerings import the TVM backend (its kernel libraries :mod:`optc.backends.tvm.bitserial`
and :mod:`optc.backends.tvm.int8`) inside the function only, so importing an op module (and
``optc``) never imports TVM.
"""

from __future__ import annotations

import importlib
import pkgutil

MODULES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
