"""HLS C++: golden snapshot of the emitted code, and C simulation (g++ with the stand-in
ap_int / hls::stream headers) bit-exact against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from optc.backends.fpga import extract, folding, hls, ir

from .golden_util import check_golden
from .tiny_models import binary_cnn, qdq_mlp, reference_pipeline, ternary_mlp


def _csim(graph, tmp_path, images=4, seed=0):
    d = tmp_path / "hls"
    hls.write(hls.emit(graph), d)
    binary = hls.compile(d)
    x = np.random.default_rng(seed).choice(graph.in_dtype.values(), size=(images, graph.in_vecs, graph.in_elems))
    return hls.csim(graph, x, binary, tmp_path / "run"), ir.execute(graph, x)


def test_golden_hls_reference_pipeline():
    files = hls.emit(reference_pipeline(), "reference pipeline")
    check_golden("reference_model.cpp", files["model.cpp"])
    check_golden("reference_tb.cpp", files["tb.cpp"])
    assert "#pragma HLS PIPELINE II=1" in files["model.cpp"] and "ARRAY_PARTITION" in files["model.cpp"]
    assert "#pragma HLS DATAFLOW" in files["model.cpp"]


def test_csim_reference_pipeline_bit_exact(tmp_path):
    y, ref = _csim(reference_pipeline(), tmp_path)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("fold", ["fastest", "slowest"])
def test_csim_bit_planes_bit_exact(tmp_path, fold):
    g = extract.partition(qdq_mlp(sizes=(24, 12, 6))).graph
    folding.fold(g, 1 if fold == "fastest" else 10 ** 6)
    y, ref = _csim(g, tmp_path)
    np.testing.assert_array_equal(y, ref)


def test_csim_ternary_bit_exact(tmp_path):
    g = extract.partition(ternary_mlp()).graph
    y, ref = _csim(g, tmp_path, images=16)
    np.testing.assert_array_equal(y, ref)


def test_csim_padded_binary_cnn_bit_exact(tmp_path):
    g = extract.partition(binary_cnn(pads=1)).graph
    folding.fold(g, 100)
    y, ref = _csim(g, tmp_path, images=3)
    np.testing.assert_array_equal(y, ref)
