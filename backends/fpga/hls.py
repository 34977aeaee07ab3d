"""HLS C++ for Xilinx/AMD-style flows (Vitis HLS), and its C simulation with g++.

``emit`` writes ``hls/``:

* ``optc_bnn.h`` — the kernel library (popcount, bit-plane dot product, sliding windows,
  pooling; :file:`templates/hls/optc_bnn.h`);
* ``model.cpp`` — one function per layer with its weights (``ap_uint`` constant arrays,
  partitioned per PE) and thresholds, ``#pragma HLS PIPELINE II=1`` on the fold loop, and the
  ``optc_top`` dataflow function connecting them with ``hls::stream``s (AXI-Stream ports);
* ``tb.cpp`` — a testbench: hex words in, hex words out;
* ``include/ap_int.h``, ``include/hls_stream.h`` — small stand-ins so g++ compiles all of it
  without Vitis (use the real headers by leaving ``include/`` off the include path).

``compile`` builds the C simulation binary; ``run`` streams packed words through it.
"""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np

from optc import tools
from optc.errors import ToolchainError

from .ir import MVAU, SWG, DType, FpgaGraph, Pad, Pool

KIND = {"bipolar": "optc::BIPOLAR", "uint": "optc::UINT", "int": "optc::INT"}


def _tpl(name: str) -> str:
    return resources.files("optc.backends.fpga").joinpath("templates", "hls", name).read_text()


def _hex(value: int, bits: int) -> str:
    return f"0x{value:0{max(1, (bits + 3) // 4)}x}"


def weight_words(layer: MVAU) -> list[list[int]]:
    """``[nf*sf][pe]`` packed weight words: lane i holds the code of
    ``weights[nf*PE + pe, sf*SIMD + i]`` (bipolar: 1 = +1; int: two's complement)."""
    wb = layer.wdtype.bits
    codes = layer.wdtype.encode(layer.weights)
    out = []
    for nf in range(layer.nf):
        for sf in range(layer.sf):
            row = []
            for pe in range(layer.pe):
                lanes = codes[nf * layer.pe + pe, sf * layer.simd:(sf + 1) * layer.simd]
                row.append(sum(int(c) << (i * wb) for i, c in enumerate(lanes)))
            out.append(row)
    return out


def _mvau(layer: MVAU) -> str:
    wb, ib, ob = layer.wdtype.bits, layer.idtype.bits, layer.odtype.bits
    accb = layer.acc_dtype.bits + 1
    n = layer.name
    words = weight_words(layer)
    wrows = ",\n".join("    {" + ", ".join(f'ap_uint<{layer.simd * wb}>("{_hex(w, layer.simd * wb)}")' for w in row) + "}"
                       for row in words)
    lines = [
        f"// {n}: {layer.mh} x {layer.mw} matrix, weights {layer.wdtype.name}, inputs {layer.idtype.name}, "
        f"outputs {layer.odtype.name}",
        f"// folding PE={layer.pe} SIMD={layer.simd}: {layer.nf} x {layer.sf} cycles per vector, {layer.vecs} vectors per image"
        + (" (XNOR-popcount)" if layer.xnor else " (bit-plane popcounts)"),
        f"typedef ap_int<{accb}> {n}_acc_t;",
        f"static const ap_uint<{layer.simd * wb}> {n}_W[{layer.nf * layer.sf}][{layer.pe}] = {{\n{wrows}}};",
    ]
    if layer.thresholds is not None:
        nt = max(1, layer.nt)
        trows = []
        for nf in range(layer.nf):
            trows.append("  {" + ", ".join("{" + ", ".join(str(int(t)) for t in (layer.thresholds[nf * layer.pe + pe] if layer.nt else [0])) + "}"
                                           for pe in range(layer.pe)) + "}")
        lines.append(f"static const {n}_acc_t {n}_T[{layer.nf}][{layer.pe}][{nt}] = {{\n" + ",\n".join(trows) + "};")
    lines += [
        f"void {n}(hls::stream<ap_uint<{layer.mw * ib}> >& in, hls::stream<ap_uint<{layer.mh * ob}> >& out, int images) {{",
        "#pragma HLS INLINE off",
        f"#pragma HLS ARRAY_PARTITION variable={n}_W complete dim=2",
    ]
    if layer.thresholds is not None:
        lines.append(f"#pragma HLS ARRAY_PARTITION variable={n}_T complete dim=2")
    lines += [
        f"  for (int v = 0; v < images * {layer.vecs}; v++) {{",
        f"    const ap_uint<{layer.mw * ib}> x = in.read();",
        f"    ap_uint<{layer.mh * ob}> y;",
        f"    for (int nf = 0; nf < {layer.nf}; nf++) {{",
        f"      {n}_acc_t acc[{layer.pe}];",
        "#pragma HLS ARRAY_PARTITION variable=acc complete",
        f"      for (int sf = 0; sf < {layer.sf}; sf++) {{",
        "#pragma HLS PIPELINE II=1",
        f"        const ap_uint<{layer.simd * ib}> xs = x.range((sf + 1) * {layer.simd * ib} - 1, sf * {layer.simd * ib});",
        f"        for (int pe = 0; pe < {layer.pe}; pe++) {{",
        "#pragma HLS UNROLL",
        f"          const long long d = optc::dot<{layer.simd}, {KIND[layer.wdtype.kind]}, {wb}, {KIND[layer.idtype.kind]}, {ib}>"
        f"({n}_W[nf * {layer.sf} + sf][pe], xs);",
        "          acc[pe] = (sf == 0) ? " + f"{n}_acc_t(d) : {n}_acc_t(acc[pe] + d);",
        "        }",
        "      }",
        f"      for (int pe = 0; pe < {layer.pe}; pe++) {{",
        "#pragma HLS UNROLL",
        f"        const int o = (nf * {layer.pe} + pe) * {ob};",
    ]
    if layer.thresholds is not None:
        lines += [
            "        unsigned q = 0;",
            f"        for (int j = 0; j < {layer.nt}; j++) q += (acc[pe] >= {n}_T[nf][pe][j]) ? 1 : 0;",
            f"        y.range(o + {ob - 1}, o) = q;",
        ]
    else:
        lines.append(f"        y.range(o + {ob - 1}, o) = (unsigned long long)(long long)acc[pe];")
    lines += ["      }", "    }", "    out.write(y);", "  }", "}", ""]
    return "\n".join(lines)


def _swg(layer: SWG) -> str:
    b = layer.dtype.bits
    return "\n".join([
        f"// {layer.name}: {layer.h}x{layer.w}x{layer.c} image -> {layer.kh}x{layer.kw} windows, stride "
        f"{layer.sh}x{layer.sw}, {layer.oh}x{layer.ow} outputs",
        f"void {layer.name}(hls::stream<ap_uint<{layer.c * b}> >& in, hls::stream<ap_uint<{layer.out_elems * b}> >& out, int images) {{",
        "#pragma HLS INLINE off",
        f"  optc::swg<{layer.h}, {layer.w}, {layer.c}, {layer.kh}, {layer.kw}, {layer.sh}, {layer.sw}, {b}>(in, out, images);",
        "}", ""])


def _pad(layer: Pad) -> str:
    ib, ob = layer.dtype.bits, layer.odtype.bits
    pt, pl, pb, pr = layer.pads
    return "\n".join([
        f"// {layer.name}: zero padding {list(layer.pads)} of a {layer.h}x{layer.w}x{layer.c} image, pad code "
        f"{layer.pad_value}" + (" (bipolar re-encoded as 2-bit x + 1)" if layer.recode else ""),
        f"void {layer.name}(hls::stream<ap_uint<{layer.c * ib}> >& in, hls::stream<ap_uint<{layer.c * ob}> >& out, int images) {{",
        "#pragma HLS INLINE off",
        f"  optc::pad<{layer.h}, {layer.w}, {layer.c}, {pt}, {pl}, {pb}, {pr}, {ib}, {ob}, {'true' if layer.recode else 'false'}>"
        f"(in, out, images, {layer.pad_value}ull);",
        "}", ""])


def _pool(layer: Pool) -> str:
    b = layer.dtype.bits
    flags = ", ".join("true" if m else "false" for m in layer.is_max)
    return "\n".join([
        f"// {layer.name}: per-channel {'max' if layer.is_max.all() else 'max/min'} over {layer.k} taps"
        + (" (OR/AND on bipolar bits)" if layer.dtype.kind == "bipolar" else ""),
        f"static const bool {layer.name}_MAX[{layer.c}] = {{{flags}}};",
        f"void {layer.name}(hls::stream<ap_uint<{layer.k * layer.c * b}> >& in, hls::stream<ap_uint<{layer.c * b}> >& out, int images) {{",
        "#pragma HLS INLINE off",
        f"  optc::pool<{layer.c}, {layer.k}, {b}>(in, out, images * {layer.vecs}, {layer.name}_MAX);",
        "}", ""])


def stream_width(elems: int, dt: DType) -> int:
    return elems * dt.bits


def emit(graph: FpgaGraph, title: str = "optc FPGA pipeline") -> dict[str, str]:
    """The HLS sources for ``graph``: ``{relative path: text}``."""
    in_w = stream_width(graph.in_elems, graph.in_dtype)
    out_w = stream_width(graph.out_elems, graph.out_dtype)
    body = [f"// {title}: generated by optc (backends/fpga/hls.py); do not edit.",
            "// Input: " + f"{graph.in_vecs} words of {graph.in_elems} x {graph.in_dtype.name} per image; output: "
            f"{graph.out_vecs} words of {graph.out_elems} x {graph.out_dtype.name}.",
            '#include "optc_bnn.h"', ""]
    for layer in graph.layers:
        body.append({"mvau": _mvau, "swg": _swg, "pool": _pool, "pad": _pad}[layer.kind](layer))
    body += [f"void optc_top(hls::stream<ap_uint<{in_w}> >& in, hls::stream<ap_uint<{out_w}> >& out, int images) {{",
             "#pragma HLS INTERFACE axis port=in",
             "#pragma HLS INTERFACE axis port=out",
             "#pragma HLS INTERFACE s_axilite port=images",
             "#pragma HLS DATAFLOW"]
    prev = "in"
    for i, layer in enumerate(graph.layers):
        if i == len(graph.layers) - 1:
            nxt = "out"
        else:
            nxt = f"s{i}"
            body.append(f"  hls::stream<ap_uint<{stream_width(layer.out_elems, layer.out_dtype)}> > {nxt}(\"{nxt}\");")
            body.append(f"#pragma HLS STREAM variable={nxt} depth=2")
        body.append(f"  {layer.name}({prev}, {nxt}, images);")
        prev = nxt
    body += ["}", ""]
    tb = "\n".join([
        "// C-simulation testbench (generated by optc): reads hex input words (one per line),",
        "// runs optc_top on all of them, writes the output words as hex, one per line.",
        "#include <cstdio>",
        "#include <cstring>",
        "#include <string>",
        "#include <vector>",
        '#include "optc_bnn.h"',
        f"void optc_top(hls::stream<ap_uint<{in_w}> >& in, hls::stream<ap_uint<{out_w}> >& out, int images);",
        "int main(int argc, char** argv) {",
        "  if (argc != 3) { std::fprintf(stderr, \"usage: %s IN.hex OUT.hex\\n\", argv[0]); return 2; }",
        "  FILE* f = std::fopen(argv[1], \"r\");",
        "  if (!f) { std::perror(argv[1]); return 2; }",
        f"  hls::stream<ap_uint<{in_w}> > in(\"in\");",
        f"  hls::stream<ap_uint<{out_w}> > out(\"out\");",
        "  std::vector<char> line(1 << 16);",
        "  int words = 0;",
        "  while (std::fgets(line.data(), (int)line.size(), f)) {",
        "    std::string s(line.data());",
        "    while (!s.empty() && (s.back() == '\\n' || s.back() == '\\r' || s.back() == ' ')) s.pop_back();",
        "    if (s.empty()) continue;",
        f"    in.write(ap_uint<{in_w}>(s.c_str(), 16));",
        "    words++;",
        "  }",
        "  std::fclose(f);",
        f"  if (words % {graph.in_vecs}) {{ std::fprintf(stderr, \"input words not a multiple of {graph.in_vecs}\\n\"); return 2; }}",
        f"  optc_top(in, out, words / {graph.in_vecs});",
        "  FILE* g = std::fopen(argv[2], \"w\");",
        "  if (!g) { std::perror(argv[2]); return 2; }",
        "  while (!out.empty()) std::fprintf(g, \"%s\\n\", out.read().to_hex().c_str());",
        "  std::fclose(g);",
        "  return 0;",
        "}", ""])
    return {"model.cpp": "\n".join(body), "tb.cpp": tb, "optc_bnn.h": _tpl("optc_bnn.h"),
            "include/ap_int.h": _tpl("ap_int.h"), "include/hls_stream.h": _tpl("hls_stream.h")}


def write(files: dict[str, str], hls_dir: Path) -> None:
    for rel, text in files.items():
        p = hls_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def compiler() -> str:
    cxx = os.environ.get("CXX") or tools.which("g++") or tools.which("c++")
    if not cxx:
        raise ToolchainError("the FPGA C simulation needs a C++ compiler (g++): apt-get install g++")
    return cxx


def compile(hls_dir: Path, binary: Path | None = None) -> Path:
    """g++ the kernels and testbench into the C-simulation binary ``hls_dir/csim``."""
    binary = binary or hls_dir / "csim"
    cmd = [compiler(), "-std=c++17", "-O2", "-w", f"-I{hls_dir / 'include'}", f"-I{hls_dir}",
           str(hls_dir / "model.cpp"), str(hls_dir / "tb.cpp"), "-o", str(binary)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolchainError(f"g++ failed on the generated HLS code: {r.stderr.strip()[-2000:]}")
    return binary


def run(binary: Path, words: list[int], in_width: int, workdir: Path) -> list[int]:
    """Stream ``words`` through the C simulation; returns the output words."""
    workdir.mkdir(parents=True, exist_ok=True)
    fin, fout = workdir / "csim_in.hex", workdir / "csim_out.hex"
    digits = max(1, (in_width + 3) // 4)
    fin.write_text("".join(f"{w:0{digits}x}\n" for w in words))
    r = subprocess.run([str(binary), str(fin), str(fout)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolchainError(f"C simulation failed: {r.stderr.strip()[-1000:]}")
    return [int(line, 16) for line in fout.read_text().split()]


def csim(graph: FpgaGraph, x: np.ndarray, binary: Path, workdir: Path) -> np.ndarray:
    """Values ``[images, vecs, elems]`` through the compiled C simulation -> output values."""
    from .ir import pack_words, unpack_words

    words = pack_words(x.reshape(-1, graph.in_elems), graph.in_dtype)
    out = run(binary, words, stream_width(graph.in_elems, graph.in_dtype), workdir)
    y = unpack_words(out, graph.out_elems, graph.out_dtype)
    return y.reshape(x.shape[0], graph.out_vecs, graph.out_elems)
