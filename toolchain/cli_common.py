"""What the ``cli_*`` subcommand modules share: printing a report as JSON, and argparse options
that several subcommands declare the same way (one declaration, so their help stays the same)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def print_json(data) -> None:
    """A report on stdout as JSON (numpy values and paths as :func:`optc.artifact.write_json` writes them)."""
    from .artifact import _json_default

    print(json.dumps(data, indent=2, default=_json_default))


def add_training_command(add, name: str, func: Callable, help: str, *, model: str,
                         data: tuple[str, str]) -> argparse.ArgumentParser:
    """A subcommand that trains on an ONNX model (``prune-train``, ``qat``): the positional
    ``model`` (its help text ``model``) and the required ``--data`` (``data``: metavar, help)."""
    p = add(name, func, help)
    p.add_argument("model", help=model)
    p.add_argument("--data", required=True, metavar=data[0], help=data[1])
    return p


def add_channel_multiple(p: argparse.ArgumentParser) -> None:
    """``--multiple`` and ``-t/--target`` of the pruning commands (``cli_prune._multiple`` reads them)."""
    p.add_argument("--multiple", type=int, default=None,
                   help="round kept channels per layer to a multiple (default: the fp32 SIMD lanes of --target, "
                        "8 on AVX2, 16 on AVX-512, 4 on NEON; 1 keeps exact counts)")
    p.add_argument("-t", "--target", default="cpu", help="target the model is pruned for (sets the default "
                   "--multiple; default cpu)")
