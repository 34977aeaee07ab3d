"""Frontend: loading, checking, shape binding and the unsupported-op report."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc.errors import InvalidModelError, UnsupportedModelError
from optc.frontend import (bind_input_shapes, check_supported, load_model, output_specs,
                           parse_shape_args)
from tests.conftest import make_conv_model, make_unsupported_ops_model


def test_load_missing_truncated_and_garbage(tmp_path, conv_model):
    with pytest.raises(InvalidModelError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(InvalidModelError, match="is a directory"):
        load_model(tmp_path)
    (tmp_path / "garbage.onnx").write_bytes(b"this is not a protobuf \x00\xff")
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        load_model(tmp_path / "garbage.onnx")
    data = conv_model.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="trunc.onnx"):
        load_model(tmp_path / "trunc.onnx")


def test_checker_failure_is_reported(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(InvalidModelError, match="checker rejected"):
        load_model(tmp_path / "bad.onnx")


def test_external_data_is_loaded(tmp_path):
    model = make_conv_model()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").exists()
    loaded = load_model(tmp_path / "ext.onnx")
    assert all(not i.external_data for i in loaded.graph.initializer) or loaded.graph.initializer[0].raw_data
    (tmp_path / "ext.data").unlink()
    with pytest.raises(InvalidModelError):
        load_model(tmp_path / "ext.onnx")


def test_old_opset_is_upgraded(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    onnx.save(model, str(tmp_path / "old.onnx"))
    loaded = load_model(tmp_path / "old.onnx")
    assert next(o.version for o in loaded.opset_import if o.domain == "") >= 11


def test_parse_shape_args():
    assert parse_shape_args(["input=1,3,224,224", "mask=1x128"]) == {"input": (1, 3, 224, 224), "mask": (1, 128)}
    assert parse_shape_args(["past=1,0"]) == {"past": (1, 0)}  # 0: an empty dimension (tests/test_zero_size.py)
    for bad in ["input", "input=a,b", "input=1,-1", "=1,2"]:
        with pytest.raises(InvalidModelError):
            parse_shape_args([bad])


def test_bind_dynamic_shapes(dynamic_conv_model):
    model = load_model(dynamic_conv_model)
    with pytest.raises(InvalidModelError, match=r"--input-shape x=N,3,8,8"):
        bind_input_shapes(model)
    bound, specs = bind_input_shapes(model, {"x": (4, 3, 8, 8)})
    assert specs[0].shape == (4, 3, 8, 8) and specs[0].dtype == "float32"
    assert [d.dim_value for d in bound.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 8, 8]
    assert output_specs(bound)[0].shape == (4, 4)
    # the original is untouched
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


@pytest.mark.parametrize("shapes, message", [
    ({"y": (1, 3, 8, 8)}, "unknown input name.*'y'.*inputs are 'x'"),
    ({"x": (1, 3, 8)}, "rank 4"),
    ({"x": (1, 4, 8, 8)}, "dimension 1 is fixed to 3"),
])
def test_bind_errors(conv_model, shapes, message):
    with pytest.raises(InvalidModelError, match=message):
        bind_input_shapes(load_model(conv_model), shapes)


def test_unsupported_ops_are_all_listed_with_node_names():
    with pytest.raises(UnsupportedModelError) as err:
        check_supported(make_unsupported_ops_model(), {"Relu"}, "test")
    msg = str(err.value)
    assert "2 unsupported op type(s)" in msg
    assert "com.acme::Custom (custom_1, custom_2)" in msg and "RandomNormalLike (noise)" in msg


def test_input_sets_split_rows_into_calls_and_never_drop_any():
    """Rows beyond the bound batch become further calls (up to max_rows for verification);
    a run refuses rows that do not fill a last call instead of dropping them."""
    from optc.frontend import TensorSpec
    from optc.verify import join_calls, sample_sets

    spec = [TensorSpec("x", "float32", (1, 3))]
    rows = np.arange(15, dtype=np.float64).reshape(5, 3)
    sets = sample_sets({"x": rows}, spec, "f.npz")
    assert len(sets) == 5 and all(s["x"].shape == (1, 3) and s["x"].dtype == np.float32 for s in sets)
    assert np.array_equal(join_calls([[s["x"]] for s in sets])[0], rows)
    assert len(sample_sets({"x": rows}, spec, "f.npz", max_rows=2)) == 2
    spec2 = [TensorSpec("x", "float32", (2, 3))]
    with pytest.raises(InvalidModelError, match="5 rows, not a multiple of the package's batch"):
        sample_sets({"x": rows}, spec2, "f.npz")
    assert len(sample_sets({"x": rows}, spec2, "f.npz", max_rows=8)) == 2  # verification: first full calls
    with pytest.raises(InvalidModelError, match=r"missing input 'x' \(the file has: 'label', 'z'\)"):
        sample_sets({"z": np.ones((1, 3)), "label": np.ones(1)}, spec, "f.npz")
    with pytest.raises(InvalidModelError, match="shape"):
        sample_sets({"x": np.ones((1, 4), np.float32)}, spec, "f.npz")
    with pytest.raises(InvalidModelError, match="dtype"):
        sample_sets({"x": np.ones((1, 3), np.int64)}, spec, "f.npz")


def test_dynamic_batch_binds_to_one_never_to_the_data():
    """A dynamic batch is bound to 1 with a note, whatever the data's row count; other dynamic
    dims come from the data."""
    from optc.stages import default_shapes

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "T"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    shapes, notes = default_shapes(model, {}, {"x": np.zeros((540, 3, 7), np.float32)})
    assert shapes == {"x": (1, 3, 7)} and "batch dimension bound to 1" in notes[0]
    shapes, notes = default_shapes(model, {"x": (4, 3, 2)}, None)
    assert shapes == {"x": (4, 3, 2)} and notes == []
    shapes, _ = default_shapes(model, {}, None)  # T unbound: left for bind_input_shapes to report
    assert shapes == {}