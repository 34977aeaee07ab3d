"""Export a PyTorch module to a checked ONNX file.

torch is an optional dependency of optc (``pip install optc[torch]``), so it is imported
inside :func:`export_torch` only: ``import optc.train.export`` works without it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from optc.errors import ToolchainError, UsageError

__all__ = ["ExportOptions", "export_torch"]


@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export_torch` asks torch's exporter to write the graph.

    ``dynamic_axes``: as for ``torch.onnx.export``, e.g. ``{"input": {0: "N"}}``; ``opset``:
    ONNX opset version; ``keep_batchnorm``: keep ``BatchNormalization`` nodes (inference form)
    instead of letting the exporter fold them into the preceding ``Conv`` (torch's default).
    """

    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None
    opset: int = 17
    keep_batchnorm: bool = False


def export_torch(
    module: Any,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    overwrite: bool = False,
    options: ExportOptions = ExportOptions(),
) -> pathlib.Path:
    """Export ``module`` to ONNX at ``path`` and return the path.

    The module is put in eval mode (its training flag is restored afterwards) and traced
    with the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which
    is the reliable one for torch 2.13. The result is validated with
    ``onnx.checker.check_model`` (full check, with shape inference) before it is moved into
    place: the file is written to a temporary file in the destination folder and renamed
    with :func:`os.replace`, so ``path`` never holds a partial or invalid model.

    Args:
        module: a ``torch.nn.Module``.
        example_inputs: one tensor or a tuple of tensors passed to ``module.forward``.
        path: destination ``.onnx`` file; its parent folder is created if needed.
        input_names / output_names: names of the graph inputs/outputs (torch's defaults
            otherwise).
        overwrite: replace an existing file at ``path``; without it an existing file is
            an error.
        options: dynamic axes, opset (default 17), BatchNormalization kept or folded
            (:class:`ExportOptions`).

    Raises:
        UsageError: ``path`` exists and ``overwrite`` is false.
        ToolchainError: torch is not installed.
    """
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists (pass overwrite=True to replace it)")
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ToolchainError(
            "exporting a torch module needs torch: pip install 'optc[torch]'"
        ) from exc
    import onnx

    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
    else:
        args = tuple(example_inputs)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; an exported model is an ordinary file
    was_training = module.training
    try:
        module.eval()
        with warnings.catch_warnings(), torch.no_grad():
            # torch 2.9+ warns on every call that the TorchScript exporter is deprecated
            # (and that some of its internals will be removed): expected, we chose it.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            # PRESERVE warns about constant folding of training-mode modules; ours is in
            # eval mode, where folding is exact.
            warnings.filterwarnings(
                "ignore", message="It is recommended that constant folding be turned off"
            )
            torch.onnx.export(
                module,
                args,
                str(tmp),
                input_names=list(input_names) if input_names is not None else None,
                output_names=list(output_names) if output_names is not None else None,
                dynamic_axes=dict(options.dynamic_axes) if options.dynamic_axes is not None else None,
                opset_version=options.opset,
                do_constant_folding=True,
                # PRESERVE on an eval-mode module exports inference BN nodes unfused.
                training=(
                    torch.onnx.TrainingMode.PRESERVE
                    if options.keep_batchnorm
                    else torch.onnx.TrainingMode.EVAL
                ),
                dynamo=False,
            )
        onnx.checker.check_model(str(tmp), full_check=True)
        if path.exists() and not overwrite:  # appeared while we were exporting
            raise UsageError(f"{path} already exists (pass overwrite=True to replace it)")
        os.replace(tmp, path)
    finally:
        module.train(was_training)
        if tmp.exists():
            tmp.unlink()
    return path
