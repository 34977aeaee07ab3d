"""Pass registry and textual pass pipelines.

A pass is a small named unit: an :class:`onnx_ir.passes.InPlacePass` subclass that is also a
dataclass, registered under a kebab-case name with :func:`register_pass`. Its dataclass fields
are its parameters (with types and defaults); the first line of its docstring is its one-line
summary (shown by ``optc passes``). It returns what it did in its :class:`PassResult`
(``modified`` and a ``details`` dict) and keeps nothing on the pass object.

Pipelines are text, in the spirit of LLVM's ``opt -passes=`` and MLIR's textual pipelines::

    simplify,fold-constants,fuse-bn,prune<ratio=0.5>,quantize<bits=8;per-channel>

Grammar::

    pipeline := item ("," item)*
    item     := NAME ("<" param (";" param)* ">")?
    param    := KEY ("=" VALUE)?        # a bare KEY sets a boolean flag to true

Values may contain commas and colons (``ratios=conv1:0.3,conv2:0.6``) but not ``;`` or ``>``.
Parameter keys are written with dashes; they map to field names with underscores.
:func:`parse_pipeline` followed by :func:`format_pipeline` prints canonical text back
exactly; :func:`format_pipeline` with ``explicit=True`` spells out every parameter, which is
what artifacts record so a build can be replayed even if defaults change.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import time
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx_ir as ir

from .errors import InternalError, OptcError, UsageError
from .progress import OptcWarning

__all__ = [
    "Pass",
    "PassResult",
    "PassSpec",
    "PassRecord",
    "register_pass",
    "registered_passes",
    "get_pass",
    "parse_pipeline",
    "format_pipeline",
    "instantiate",
    "run_pipeline",
    "with_cleanup",
    "PassWarning",
]


@dataclass
class PassResult(ir.passes.PassResult):
    """What one run of an optc pass did: the model (the input object: passes work in place),
    whether it changed, and ``details`` (rewrite counts, skipped layers and why, costs before
    and after; :func:`run_pipeline` copies them into the :class:`PassRecord`)."""

    details: dict = field(default_factory=dict)


class Pass(ir.passes.InPlacePass):
    """Base class of optc passes: an in-place onnx-ir pass with a registry name.

    Subclasses are dataclasses whose fields are the pass parameters. ``call(model)`` returns a
    :class:`PassResult` ``(model, modified, details)``; a pass keeps no state on its object
    between runs. ``idempotent`` says whether a second run right after the first changes
    nothing (``modified`` false, same model); tests/passes/test_idempotence.py checks it for
    every pass that claims it.
    """

    name: ClassVar[str] = ""
    # True: running the pass again on its own output changes nothing (False: e.g. prune, which
    # removes `ratio` of what is left on every run)
    idempotent: ClassVar[bool] = True
    lossy: ClassVar[bool] = False  # True: outputs may differ from the input model's (quantize)
    # True for compression passes (prune, quantize, binarize, ...): the cleanup passes run before
    # them (see with_cleanup), and a run that rewrites nothing is a warning (see run_pipeline)
    compression: ClassVar[bool] = False
    # cleanup passes that must not run before this one (e.g. fuse-bn before sign-to-threshold)
    cleanup_conflicts: ClassVar[frozenset[str]] = frozenset()
    # ONNX op types this pass removes where it can (unroll-loops: Loop, Scan): the frontend's
    # supported-op check lets them through before the passes and checks the result after them
    eliminates: ClassVar[frozenset[str]] = frozenset()
    # parameters optc compile fills from the target when the pipeline text leaves them unset:
    # parameter key -> name of a backend fact (``backend.target_facts(target)``, e.g. prune's
    # multiple <- channel_multiple, the fp32 SIMD lanes); the package records the value used
    target_params: ClassVar[dict[str, str]] = {}

    def cleanup_exclusions(self) -> frozenset[str]:
        """The cleanup passes :func:`with_cleanup` must not put before this configured pass."""
        return self.cleanup_conflicts

    def summary(self) -> str:  # pragma: no cover - trivial
        return _summary(type(self))


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: make ``cls`` a dataclass and register it as pass ``name``."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ValueError(f"bad pass name {name!r}")

    def wrap(cls: type[Pass]) -> type[Pass]:
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        cls = dataclass(cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _ensure_builtin_passes() -> None:
    # The built-in passes live in optc.passes; importing it registers them.
    from optc import passes  # noqa: F401  (import for side effect)


def registered_passes() -> dict[str, type[Pass]]:
    """Name -> pass class, for every registered pass (sorted by name)."""
    _ensure_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; an unknown name lists the close candidates."""
    passes = registered_passes()
    if name not in passes:
        close = difflib.get_close_matches(name, passes, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"unknown pass {name!r}{hint}; known passes: {', '.join(passes)}")
    return passes[name]


def _summary(cls: type) -> str:
    """The docstring's first paragraph, on one line (a summary may run over several lines)."""
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


@dataclass(frozen=True)
class ParamInfo:
    """One pass parameter as shown by ``optc passes``."""

    key: str  # as written in pipelines (dashes)
    type: str
    default: Any
    doc: str


def param_info(cls: type[Pass]) -> list[ParamInfo]:
    """The parameters of a pass class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(ParamInfo(f.name.replace("_", "-"), _type_name(hints[f.name]), default,
                             f.metadata.get("doc", "")))
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Ellipsis:
        return "..."
    if origin is typing.Union:
        return " | ".join("none" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    args = ", ".join(_type_name(a) for a in typing.get_args(tp))
    return f"{getattr(origin, '__name__', str(origin))}[{args}]"


# ---------------------------------------------------------------------------------------------
# Values: text <-> typed Python values


def _parse_value(text: str, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if text == "none":
            return None
        return _parse_value(text, inner[0], where)
    try:
        if tp is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            if not text:
                raise ValueError("empty value")
            return text
        if origin in (tuple, list, dict) and text == "":
            return origin()  # `key=` is the empty collection (explicit pipelines print it so)
        if origin in (tuple, list):
            items = [s for s in text.split(",") if s]
            return tuple(_parse_value(s, args[0], where) for s in items)
        if origin is dict:
            out = {}
            for item in text.split(","):
                key, sep, val = item.rpartition(":")
                if not sep or not key:
                    raise ValueError(f"expected NAME:VALUE pairs, got {item!r}")
                out[key] = _parse_value(val, args[1], where)
            return out
    except ValueError as err:
        raise UsageError(f"{where}: bad value {text!r} ({err})") from None
    raise TypeError(f"unsupported parameter type {tp!r}")  # a bug in a pass definition


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{_format_value(v)}" for k, v in value.items())
    return str(value)


# ---------------------------------------------------------------------------------------------
# Pipelines


@dataclass(frozen=True)
class PassSpec:
    """One pipeline item: a pass name and the parameters written for it (in order)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def format(self, explicit: bool = False) -> str:
        params = list(self.params)
        if explicit:
            given = dict(self.params)
            params = [(p.key, given.get(p.key, p.default)) for p in param_info(get_pass(self.name))]
        if not params:
            return self.name
        parts = []
        for key, value in params:
            parts.append(key if value is True else f"{key}={_format_value(value)}")
        return f"{self.name}<{';'.join(parts)}>"


_ITEM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(?:<([^<>]*)>)?\s*")


def _split_items(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
            if depth > 1:
                raise UsageError(f"pipeline {text!r}: nested '<' at column {i + 1}")
        elif ch == ">":
            depth -= 1
            if depth < 0:
                raise UsageError(f"pipeline {text!r}: unmatched '>' at column {i + 1}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise UsageError(f"pipeline {text!r}: missing '>'")
    items.append(text[start:])
    return items


def parse_pipeline(text: str) -> list[PassSpec]:
    """Parse pipeline text into pass specs, checking names, keys and value types.

    The empty string is the empty pipeline. Errors are :class:`UsageError` naming the item.
    """
    if not text.strip():
        return []
    specs = []
    for item in _split_items(text):
        m = _ITEM.fullmatch(item)
        if not m:
            raise UsageError(f"pipeline {text!r}: cannot parse item {item.strip()!r}")
        name, body = m.group(1), m.group(2)
        cls = get_pass(name)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        params: list[tuple[str, Any]] = []
        for raw in (body.split(";") if body and body.strip() else []):
            key, eq, value = raw.strip().partition("=")
            key = key.strip()
            attr = key.replace("-", "_")
            if attr not in fields:
                known = ", ".join(p.key for p in param_info(cls)) or "none"
                raise UsageError(f"pass {name!r} has no parameter {key!r} (parameters: {known})")
            if any(k == key for k, _ in params):
                raise UsageError(f"pass {name!r}: parameter {key!r} given twice")
            where = f"{name}<{key}>"
            if not eq:
                if hints[attr] is not bool:
                    raise UsageError(f"{where}: needs a value ({key}=...)")
                params.append((key, True))
            else:
                params.append((key, _parse_value(value.strip(), hints[attr], where)))
        specs.append(PassSpec(name, tuple(params)))
    return specs


def format_pipeline(specs: list[PassSpec], explicit: bool = False) -> str:
    """Print specs back as pipeline text (``explicit``: with every parameter spelled out)."""
    return ",".join(s.format(explicit) for s in specs)


def instantiate(spec: PassSpec) -> Pass:
    """A configured pass object for ``spec``."""
    cls = get_pass(spec.name)
    kwargs = {key.replace("-", "_"): value for key, value in spec.params}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"pass {spec.name!r}: {err}") from None


@dataclass
class PassRecord:
    """What one pass did during a pipeline run (recorded in report.json)."""

    name: str
    text: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    details: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class PassWarning(OptcWarning):
    """A pass ran but did not do what it was asked (a compression pass that rewrote nothing).
    Recorded in the pass record's ``warnings`` and issued with :func:`warnings.warn` (the CLI
    prints it as ``optc: warning: ...`` on stderr)."""


def _count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes()) if hasattr(model.graph, "all_nodes") else len(model.graph)


def run_pipeline(
    model: ir.Model,
    specs: list[PassSpec] | str,
    *,
    on_pass: Callable[[PassSpec, ir.Model], None] | None = None,
) -> tuple[ir.Model, list[PassRecord]]:
    """Run each pass once, in order, on ``model`` (in place); return it with per-pass records.

    A pass's result carries a ``details`` dict (:class:`PassResult`; e.g. rewrite counts); it
    is copied into the record. ``on_pass(spec, model)`` is called before
    each pass. A pass that raises an :class:`OptcError` (bad input it detected) passes it on;
    any other exception is a bug in optc: :class:`InternalError` naming the pass, its cause
    chained.
    """
    if isinstance(specs, str):
        specs = parse_pipeline(specs)
    records = []
    for spec in specs:
        p = instantiate(spec)
        if on_pass:
            on_pass(spec, model)
        before = _count_nodes(model)
        t0 = time.perf_counter()
        try:
            result = p(model)
        except OptcError:
            raise
        except Exception as err:
            msg = " ".join(str(err).split())[:300]
            raise InternalError(f"pass {spec.format()}", f"{type(err).__name__}: {msg}") from err
        model = result.model
        record = PassRecord(spec.name, spec.format(), bool(result.modified),
                            round(time.perf_counter() - t0, 4), before, _count_nodes(model),
                            # a pass returning onnx-ir's plain PassResult has no details
                            dict(getattr(result, "details", None) or {}))
        if p.compression and not result.modified:
            cleaned = any(r.name in ("simplify", "fold-constants") for r in records)
            record.warnings.append(_unchanged_warning(spec, record.details, cleaned))
            warnings.warn(record.warnings[-1], PassWarning, stacklevel=2)
        records.append(record)
    return model, records


def _unchanged_warning(spec: PassSpec, details: dict, cleaned: bool) -> str:
    """Why a compression pass rewrote nothing, from its details (``unchanged`` or ``note``, and
    the first ``skipped`` entries), and what may help."""
    why = [str(details.get("unchanged") or details.get("note") or "")]
    items = details.get("skipped") or []
    if items:
        shown = [f"{i['name']}: {i['reason']}" if isinstance(i, dict) else str(i) for i in items[:3]]
        why.append("skipped " + "; ".join(shown) + (f"; ... ({len(items)} in all)" if len(items) > 3 else ""))
    why = "; ".join(w for w in why if w)
    msg = f"{spec.format()} rewrote nothing" + (f" ({why})" if why else "")
    if not cleaned and (not why or "comput" in why):
        msg += ("; no cleanup pass ran before it: weights computed by a subgraph (e.g. an exported "
                "sign(w) * alpha) become constants only after fold-constants (simplify or fold-constants "
                "first, or leave out --no-cleanup)")
    return msg


# ---------------------------------------------------------------------------------------------
# The cleanup prefix


def _default_specs() -> list[PassSpec]:
    from . import DEFAULT_PIPELINE

    return parse_pipeline(DEFAULT_PIPELINE)


def with_cleanup(specs: list[PassSpec] | str) -> tuple[list[PassSpec], list[PassSpec]]:
    """``specs`` with the cleanup prefix, and the passes that were added.

    The default pipeline's passes (``optc.DEFAULT_PIPELINE``: simplify, fold-constants,
    remove-identity, fuse-bn, batch-matmuls, dce) that do not already run before the first compression pass
    (prune, quantize, binarize, ...) are inserted just before it, in the default order, so
    compression sees constant weights, folded BatchNorms and the layer names ``optc inspect``
    shows. A pass may exclude cleanup passes it conflicts with
    (:meth:`Pass.cleanup_exclusions`: the binarization passes fold BatchNorm into thresholds
    themselves, ``prune<criterion=bn-scale>`` reads the BatchNorms). A pipeline without a
    compression pass, or one that already has its cleanup, is returned unchanged, so applying
    this to a recorded pipeline changes nothing.
    """
    if isinstance(specs, str):
        specs = parse_pipeline(specs)
    specs = list(specs)
    first = next((i for i, s in enumerate(specs) if get_pass(s.name).compression), None)
    if first is None:
        return specs, []
    skip: set[str] = {s.name for s in specs[:first]}
    for s in specs:
        skip |= instantiate(s).cleanup_exclusions()
    added = [d for d in _default_specs() if d.name not in skip]
    return specs[:first] + added + specs[first:], added
