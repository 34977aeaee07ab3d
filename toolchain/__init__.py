"""optc: a compiler-style model optimization toolchain.

This folder, ``toolchain/``, is the ``optc`` package (pyproject.toml maps it, like
``passes/`` -> ``optc.passes``, ``backends/`` -> ``optc.backends``, ``models/`` ->
``optc.models``, ``toolchain/train/`` -> ``optc.train``). It holds the core: ONNX I/O, the
pass infrastructure and pipeline text, the targets table, verification, packages and reports,
the public API (:mod:`optc.api`) and the CLI (:mod:`optc.cli`). ARCHITECTURE.md at the
repository root walks through ``optc compile`` file by file.

ONNX models come in; a graph IR (onnx-ir) runs cleanup, prune, quantize and binarize passes
named in a textual pipeline; backends lower the result with Apache TVM for x86 CPUs and 64-bit
ARM; every artifact is verified against onnxruntime and carries a report.

Public API (see :mod:`optc.api`): ``compile`` (options grouped in ``CompileOptions``), ``run``,
``bench`` (options in ``BenchOptions``), ``inspect``.
TVM and torch are imported only when a function needs them, so ``import optc`` is fast; torch
only inside :mod:`optc.train` (export, fine-tuning, binary training) and :mod:`optc.models`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["compile", "CompileOptions", "run", "bench", "BenchOptions", "inspect", "__version__", "DEFAULT_PIPELINE"]

DEFAULT_PIPELINE = "simplify,fold-constants,remove-identity,fuse-bn,batch-matmuls,dce"


def __getattr__(name: str):
    if name in ("compile", "CompileOptions", "run", "bench", "BenchOptions", "inspect"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
