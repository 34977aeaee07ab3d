"""Pipeline text: parse, print back identically, explicit form, and errors that help."""

import pytest

from optc import DEFAULT_PIPELINE
from optc.errors import UsageError
from optc.pipeline import (format_pipeline, parse_pipeline, registered_passes, run_pipeline)


@pytest.mark.parametrize("text", [
    DEFAULT_PIPELINE,
    "simplify",
    "fold-constants<input-size-limit=10;output-size-limit=20>,dce",
    "simplify<check=2>,fuse-bn",
    "",
])
def test_roundtrip_is_identical(text):
    assert format_pipeline(parse_pipeline(text)) == text


def test_explicit_spells_out_defaults_and_reparses():
    specs = parse_pipeline("fold-constants<input-size-limit=10>,dce")
    explicit = format_pipeline(specs, explicit=True)
    assert explicit == "fold-constants<input-size-limit=10;output-size-limit=4194304;fill-limit=4096>,dce"
    assert format_pipeline(parse_pipeline(explicit)) == explicit


def test_whitespace_is_tolerated_and_normalised():
    assert format_pipeline(parse_pipeline(" simplify , dce ")) == "simplify,dce"


@pytest.mark.parametrize("text, message", [
    ("simplfy", "did you mean simplify"),
    ("simplify<nope=1>", "has no parameter 'nope'"),
    ("simplify<check=abc>", "bad value 'abc'"),
    ("simplify<check=1;check=2>", "given twice"),
    ("simplify<check=1", "missing '>'"),
    ("simplify<check=<1>>", "nested"),
    ("simplify<check>", "needs a value"),
    ("dce>", "unmatched"),
])
def test_errors_name_the_problem(text, message):
    with pytest.raises(UsageError, match=message):
        parse_pipeline(text)


def test_unknown_pass_lists_candidates():
    with pytest.raises(UsageError) as err:
        parse_pipeline("no-such-pass")
    for name in registered_passes():
        assert name in str(err.value)


def test_every_registered_pass_has_a_summary():
    for name, cls in registered_passes().items():
        assert (cls.__doc__ or "").strip(), name


def test_run_pipeline_records_each_pass():
    import onnx_ir as ir

    from tests.conftest import make_conv_model

    model = ir.serde.deserialize_model(make_conv_model(with_bn=True))
    model, records = run_pipeline(model, "fuse-bn,dce")
    assert [r.name for r in records] == ["fuse-bn", "dce"]
    assert records[0].modified and records[0].details == {"rewrites": 1}
    assert records[0].nodes_after == records[0].nodes_before - 1


def test_empty_collections_round_trip():
    """Explicit pipelines print empty list/dict parameters as `key=`; they must parse back."""
    from optc.pipeline import _parse_value

    assert _parse_value("", dict[str, float], "x") == {}
    assert _parse_value("", tuple[str, ...], "x") == ()
    for name, cls in registered_passes().items():
        explicit = format_pipeline(parse_pipeline(name), explicit=True)
        assert format_pipeline(parse_pipeline(explicit), explicit=True) == explicit
