"""Verilog for the dataflow pipeline (plain Verilog-2005 from Python templates).

Every layer is a module with a valid/ready stream on each side (AXI-Stream handshake: a word
moves on a clock edge where valid and ready are both high). Inside a layer one clock enable,
``en = out_ready``, advances the whole layer pipeline, so a full downstream stalls it; the
layer's ``out_ready`` is always a flip-flop (the ready of the two-entry FIFO, ``optc_fifo2``,
that joins it to the next layer, or the harness's registered pin), so the enable has no logic
in front of it and no combinational path crosses a layer boundary.

``mvau``: issue stage (input vector register, fold counters; the next vector is accepted in
the cycle the current one issues its last fold, so a layer starts a vector every
``nf * sf`` cycles) -> weight memory read (constants when the layer is fully unrolled:
synthesis folds the XNORs into the popcount logic) -> pipelined popcount trees per PE (and per
weight/input bit-plane pair for k-bit layers) -> bit-plane combination -> accumulator over the
``sf`` folds -> thresholds -> output vector (``nf`` pieces of ``pe`` outputs).
``swg``: a line buffer (shift register of ``(kh - 1) * w + kw`` pixels) with fixed window
taps; it emits a window when the pixel just shifted in completes one.
``pool``: OR/AND (bipolar) or max/min (unsigned) per channel over a window, one register.
``pad``: inserts the padding pixels of a padded convolution into the pixel stream.

Layer modules carry ``(* keep_hierarchy *)`` so synthesis reports resources per layer.
"""

from __future__ import annotations

import math

from .ir import MVAU, SWG, DType, FpgaGraph, Pad, Pool, planes

LEAF = 4  # popcount leaves: 4 input bits -> 3-bit count in one LUT4 level per output bit
LEVELS_PER_STAGE = 2  # adder-tree levels between pipeline registers


def clog2(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _vhex(value: int, bits: int) -> str:
    return f"{bits}'h{value:x}"


# ---------------------------------------------------------------------------------------------
# popcount trees


def popcount_latency(n: int) -> int:
    """Register stages of :func:`popcount_module` for ``n`` input bits."""
    leaves = math.ceil(n / LEAF)
    levels = math.ceil(math.log2(leaves)) if leaves > 1 else 0
    # leaf level + `levels` adder levels, a register after every LEVELS_PER_STAGE levels and at the end
    return max(1, math.ceil((levels + 1) / LEVELS_PER_STAGE))


def popcount_module(n: int) -> str:
    """``optc_popcount_<n>``: a pipelined popcount (4-bit LUT leaves, balanced adder tree)."""
    ow = (n).bit_length()
    lines = [f"module optc_popcount_{n} (input clk, input en, input [{n - 1}:0] x, output [{ow - 1}:0] y);",
             "  function [2:0] pc4(input [3:0] v);",
             "    case (v)"]
    for v in range(16):
        lines.append(f"      4'd{v}: pc4 = 3'd{bin(v).count('1')};")
    lines += ["    endcase", "  endfunction"]
    # level 0: leaves
    cur = []
    for i in range(0, n, LEAF):
        hi = min(n, i + LEAF) - 1
        name = f"l0_{i // LEAF}"
        pad = LEAF - (hi - i + 1)
        arg = f"{{{pad}'b0, x[{hi}:{i}]}}" if pad else f"x[{hi}:{i}]"
        lines.append(f"  wire [2:0] {name} = pc4({arg});")
        cur.append((name, 3, (hi - i + 1)))  # (signal, width, max value)
    level = 1
    stage_levels = 1  # the leaf level counts
    while True:
        last = len(cur) == 1
        if stage_levels >= LEVELS_PER_STAGE or last:
            nxt = []
            for j, (s, w, mx) in enumerate(cur):
                r = f"r{level}_{j}"
                lines.append(f"  reg [{w - 1}:0] {r};")
                lines.append(f"  always @(posedge clk) if (en) {r} <= {s};")
                nxt.append((r, w, mx))
            cur = nxt
            stage_levels = 0
        if last:
            break
        nxt = []
        for j in range(0, len(cur), 2):
            if j + 1 == len(cur):
                nxt.append(cur[j])
                continue
            (a, _, ma), (b, _, mb) = cur[j], cur[j + 1]
            mx = ma + mb
            w = mx.bit_length()
            s = f"l{level}_{j // 2}"
            lines.append(f"  wire [{w - 1}:0] {s} = {a} + {b};")
            nxt.append((s, w, mx))
        cur = nxt
        level += 1
        stage_levels += 1
    s, w, _ = cur[0]
    lines.append(f"  assign y = {s};" if w == ow else f"  assign y = {{{ow - w}'b0, {s}}};" if w < ow else f"  assign y = {s}[{ow - 1}:0];")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# helpers


FIFO = """module optc_fifo2 #(parameter W = 8) (
  input clk, input rst,
  input in_valid, output in_ready, input [W-1:0] in_data,
  output out_valid, input out_ready, output [W-1:0] out_data);
  // two-entry FIFO; in_ready is a register (the producer's stall enable comes straight from a
  // flip-flop) and out_valid/out_data are registers, so no combinational path crosses it
  reg [W-1:0] m0, m1;
  reg [1:0] cnt;
  reg ready_r;
  assign in_ready = ready_r;
  assign out_valid = cnt != 2'd0;
  assign out_data = m0;
  wire push = in_valid && ready_r;
  wire pop = out_valid && out_ready;
  wire [1:0] cnt_next = cnt + {1'b0, push} - {1'b0, pop};
  always @(posedge clk) begin
    if (rst) begin cnt <= 2'd0; ready_r <= 1'b0; end
    else begin
      cnt <= cnt_next;
      ready_r <= cnt_next != 2'd2;
      case ({push, pop})
        2'b10: begin if (cnt == 2'd0) m0 <= in_data; else m1 <= in_data; end
        2'b01: m0 <= m1;
        2'b11: begin if (cnt == 2'd1) m0 <= in_data; else begin m0 <= m1; m1 <= in_data; end end
        default: ;
      endcase
    end
  end
endmodule
"""


def _ports(iw: int, ow: int) -> str:
    return ("  input clk, input rst,\n"
            f"  input in_valid, output in_ready, input [{iw - 1}:0] in_data,\n"
            f"  output reg out_valid, input out_ready, output reg [{ow - 1}:0] out_data")


# ---------------------------------------------------------------------------------------------
# layers


def _lane_plane(sig: str, lanes: int, bits: int, plane: int, base: int = 0) -> str:
    """Concatenation of bit ``plane`` of every lane of ``sig`` (lane i at [base + i*bits])."""
    if bits == 1:
        return f"{sig}[{base + lanes - 1}:{base}]"
    return "{" + ", ".join(f"{sig}[{base + i * bits + plane}]" for i in reversed(range(lanes))) + "}"


def mvau_module(layer: MVAU) -> str:
    n = layer.name
    pe, simd, nf, sf = layer.pe, layer.simd, layer.nf, layer.sf
    wb, ib, ob = layer.wdtype.bits, layer.idtype.bits, layer.odtype.bits
    iw, ow = layer.mw * ib, layer.mh * ob
    cw = simd * ib
    ww = pe * simd * wb
    depth = nf * sf
    pcw = simd.bit_length()
    accw = max(layer.acc_dtype.bits + 1, pcw + 1)
    lp = popcount_latency(simd)
    dl = lp + (0 if layer.xnor else 1)  # s1 -> dot available
    nfb, sfb, ab = clog2(nf), clog2(sf), clog2(depth)
    from .hls import weight_words

    words = weight_words(layer)
    L = ["(* keep_hierarchy *)",
         f"module {n} (\n{_ports(iw, ow)});",
         f"  // MVAU {layer.mh}x{layer.mw}, weights {layer.wdtype.name}, inputs {layer.idtype.name}, outputs "
         f"{layer.odtype.name}; PE={pe} SIMD={simd}: {nf}x{sf} cycles/vector",
         "  wire en = out_ready;  // a register: the downstream FIFO's ready (stalls the whole layer)",
         "  // issue: input vector register and fold counters",
         "  reg busy;",
         f"  reg [{iw - 1}:0] vec;",
         f"  reg [{nfb - 1}:0] nf_i;",
         f"  reg [{sfb - 1}:0] sf_i;",
         f"  reg [{ab - 1}:0] waddr;",
         f"  wire last_step = (nf_i == {nfb}'d{nf - 1}) && (sf_i == {sfb}'d{sf - 1});",
         "  assign in_ready = en && (!busy || last_step);",
         "  // data registers carry no reset (reset only touches control: shorter enable paths)",
         "  always @(posedge clk) if (in_valid && in_ready) vec <= in_data;",
         "  always @(posedge clk) begin",
         "    if (rst) begin busy <= 1'b0; nf_i <= 0; sf_i <= 0; waddr <= 0; end",
         "    else if (en) begin",
         "      if (in_valid && in_ready) begin busy <= 1'b1; nf_i <= 0; sf_i <= 0; waddr <= 0; end",
         "      else if (busy) begin",
         "        if (last_step) busy <= 1'b0;",
         f"        waddr <= last_step ? {ab}'d0 : waddr + {ab}'d1;",
         f"        if (sf_i == {sfb}'d{sf - 1}) begin sf_i <= 0; nf_i <= (nf_i == {nfb}'d{nf - 1}) ? {nfb}'d0 : nf_i + {nfb}'d1; end",
         f"        else sf_i <= sf_i + {sfb}'d1;",
         "      end",
         "    end",
         "  end",
         "  // stage 1: input chunk and weights"]
    L += ["  reg s1_v, s1_first, s1_last;",
          f"  reg [{nfb - 1}:0] s1_nf;",
          f"  reg [{cw - 1}:0] s1_x;"]
    if depth == 1:
        L.append(f"  wire [{ww - 1}:0] s1_w = {_vhex(sum(w << (i * simd * wb) for i, w in enumerate(words[0])), ww)};")
    else:
        style = "block" if depth > 64 else "logic"
        L.append(f"  (* rom_style = \"{style}\", ram_style = \"{style}\" *) reg [{ww - 1}:0] wrom [0:{depth - 1}];")
        L.append("  initial begin")
        for a, row in enumerate(words):
            L.append(f"    wrom[{a}] = {_vhex(sum(w << (i * simd * wb) for i, w in enumerate(row)), ww)};")
        L.append("  end")
        L.append(f"  reg [{ww - 1}:0] s1_w;")
    L += ["  always @(posedge clk) begin",
          "    if (rst) s1_v <= 1'b0;",
          "    else if (en) s1_v <= busy;",
          "  end",
          "  always @(posedge clk) if (en) begin",
          "    s1_first <= sf_i == 0; s1_last <= sf_i == " + f"{sfb}'d{sf - 1}; s1_nf <= nf_i;",
          ("    s1_x <= vec;" if sf == 1 else f"    s1_x <= vec[sf_i * {cw} +: {cw}];")]
    if depth > 1:
        L.append("    s1_w <= wrom[waddr];")
    L += ["  end"]
    # popcounts
    L.append(f"  // popcounts ({lp} stage{'s' if lp > 1 else ''})")
    wpl = [(0, 1)] if layer.xnor else planes(layer.wdtype)
    xpl = [(0, 1)] if layer.xnor else planes(layer.idtype)
    for p in range(pe):
        base = p * simd * wb
        for ai, (abit, acoef) in enumerate(wpl):
            for bi, (bbit, bcoef) in enumerate(xpl):
                sig = f"pc_{p}_{ai}_{bi}"
                if layer.xnor:
                    expr = f"~(s1_w[{base + simd - 1}:{base}] ^ s1_x)"
                else:
                    wa = _lane_plane("s1_w", simd, wb, max(abit, 0), base)
                    xb = _lane_plane("s1_x", simd, ib, max(bbit, 0))
                    wa = f"~{wa}" if abit < 0 else wa
                    xb = f"~{xb}" if bbit < 0 else xb
                    expr = f"({wa}) & ({xb})"
                L.append(f"  wire [{pcw - 1}:0] {sig};")
                L.append(f"  optc_popcount_{simd} u_{sig} (.clk(clk), .en(en), .x({expr}), .y({sig}));")
    # control delay line s1 -> dot
    L += [f"  reg [{dl - 1}:0] d_v, d_first, d_last;",
          f"  reg [{nfb * dl - 1}:0] d_nf;",
          "  always @(posedge clk) begin",
          "    if (rst) d_v <= 0;",
          ("    else if (en) d_v <= s1_v;" if dl == 1 else f"    else if (en) d_v <= {{d_v[{dl - 2}:0], s1_v}};"),
          "  end",
          "  always @(posedge clk) if (en) begin",
          ("    d_first <= s1_first; d_last <= s1_last; d_nf <= s1_nf;" if dl == 1 else
           f"    d_first <= {{d_first[{dl - 2}:0], s1_first}}; "
           f"d_last <= {{d_last[{dl - 2}:0], s1_last}}; d_nf <= {{d_nf[{nfb * (dl - 1) - 1}:0], s1_nf}};"),
          "  end",
          f"  wire dv = d_v[{dl - 1}], dfirst = d_first[{dl - 1}], dlast = d_last[{dl - 1}];",
          f"  wire [{nfb - 1}:0] dnf = d_nf[{nfb * dl - 1}:{nfb * (dl - 1)}];"]
    # dot products (combine planes) and accumulators
    for p in range(pe):
        if layer.xnor:
            L.append(f"  wire signed [{accw - 1}:0] dot_{p} = {{{{{accw - pcw}{{1'b0}}}}, pc_{p}_0_0}};")
        else:
            terms = []
            for ai, (abit, acoef) in enumerate(wpl):
                for bi, (bbit, bcoef) in enumerate(xpl):
                    c = acoef * bcoef
                    sh = abs(c).bit_length() - 1
                    t = f"($signed({{{{{accw - pcw}{{1'b0}}}}, pc_{p}_{ai}_{bi}}}) <<< {sh})"
                    terms.append(("- " if c < 0 else "+ ") + t)
            expr = " ".join(terms)
            expr = expr[2:] if expr.startswith("+ ") else f"{accw}'sd0 " + expr
            L.append(f"  reg signed [{accw - 1}:0] dot_{p};")
            L.append(f"  always @(posedge clk) if (en) dot_{p} <= {expr};")
    L.append(f"  reg signed [{accw - 1}:0] " + ", ".join(f"acc_{p}" for p in range(pe)) + ";")
    L += ["  reg a_v;", f"  reg [{nfb - 1}:0] a_nf;",
          "  always @(posedge clk) begin",
          "    if (rst) a_v <= 1'b0;",
          "    else if (en) a_v <= dv && dlast;",
          "  end",
          "  always @(posedge clk) if (en) begin",
          "    a_nf <= dnf;"]
    for p in range(pe):
        L.append(f"    if (dv) acc_{p} <= dfirst ? dot_{p} : acc_{p} + dot_{p};")
    L += ["  end"]
    # thresholds: fetched with the accumulation (t_r), compared in their own stage (cmp), counted
    # while the output is written
    piece = pe * ob
    L += ["  reg c_v;", f"  reg [{nfb - 1}:0] c_nf;"]
    if layer.thresholds is not None:
        nt = layer.nt
        tw = pe * max(1, nt) * accw

        def tvec(f_):
            tv = 0
            for p in range(pe):
                for j in range(nt):
                    tv |= (int(layer.thresholds[f_ * pe + p, j]) & ((1 << accw) - 1)) << ((p * nt + j) * accw)
            return _vhex(tv, tw)

        if nf == 1:
            L.append(f"  wire [{tw - 1}:0] t_r = {tvec(0)};")
        else:
            L += [f"  reg [{tw - 1}:0] t_r;", "  always @(posedge clk) if (en) begin", "    case (dnf)"]
            for f_ in range(nf):
                L.append(f"      {nfb}'d{f_}: t_r <= {tvec(f_)};")
            L += [f"      default: t_r <= {tw}'d0;", "    endcase", "  end"]
        cw_ = pe * max(1, nt)
        L.append(f"  reg [{cw_ - 1}:0] cmp;")
        L += ["  always @(posedge clk) begin", "    if (rst) c_v <= 1'b0;", "    else if (en) c_v <= a_v;", "  end",
              "  always @(posedge clk) if (en) begin", "    c_nf <= a_nf;"]
        for p in range(pe):
            for j in range(nt):
                L.append(f"    cmp[{p * nt + j}] <= $signed(acc_{p}) >= $signed(t_r[{(p * nt + j + 1) * accw - 1}:{(p * nt + j) * accw}]);")
        L += ["  end"]
        for p in range(pe):
            if nt == 0:
                L.append(f"  wire [{ob - 1}:0] q_{p} = {ob}'d0;")
            elif ob == 1:
                L.append(f"  wire [0:0] q_{p} = cmp[{p * nt}];")
            else:
                terms = " + ".join(f"{{{{{ob - 1}{{1'b0}}}}, cmp[{p * nt + j}]}}" for j in range(nt))
                L.append(f"  wire [{ob - 1}:0] q_{p} = {terms};")
    else:
        L.append(f"  reg [{piece - 1}:0] cq;")
        L += ["  always @(posedge clk) begin", "    if (rst) c_v <= 1'b0;", "    else if (en) c_v <= a_v;", "  end",
              "  always @(posedge clk) if (en) begin", "    c_nf <= a_nf;",
              "    cq <= {" + ", ".join(f"acc_{p}[{ob - 1}:0]" for p in reversed(range(pe))) + "};",
              "  end"]
        for p in range(pe):
            L.append(f"  wire [{ob - 1}:0] q_{p} = cq[{(p + 1) * ob - 1}:{p * ob}];")
    qall = "{" + ", ".join(f"q_{p}" for p in reversed(range(pe))) + "}"
    L.append(f"  wire [{piece - 1}:0] qall = {qall};")
    if nf > 1:
        L.append(f"  reg [{ow - 1}:0] collect;")
    L += ["  always @(posedge clk) begin",
          "    if (rst) out_valid <= 1'b0;",
          f"    else if (en) out_valid <= c_v && c_nf == {nfb}'d{nf - 1};",
          "  end"]
    if nf == 1:
        L.append("  always @(posedge clk) if (en && c_v) out_data <= qall;")
    else:
        L.append("  always @(posedge clk) if (en && c_v) begin")
        for f_ in range(nf - 1):
            L.append(f"    if (c_nf == {nfb}'d{f_}) collect[{(f_ + 1) * piece - 1}:{f_ * piece}] <= qall;")
        L.append(f"    if (c_nf == {nfb}'d{nf - 1}) out_data <= {{qall, collect[{(nf - 1) * piece - 1}:0]}};")
        L.append("  end")
    L += ["endmodule", ""]
    return "\n".join(L)


def swg_module(layer: SWG) -> str:
    b = layer.dtype.bits
    pw = layer.c * b
    taps = (layer.kh - 1) * layer.w + layer.kw
    iw, ow = pw, layer.out_elems * b
    rb, cb = clog2(layer.h), clog2(layer.w)
    rowok = sum(1 << r for r in range(layer.h)
                if r >= layer.kh - 1 and (r - layer.kh + 1) % layer.sh == 0 and (r - layer.kh + 1) // layer.sh < layer.oh)
    colok = sum(1 << c for c in range(layer.w)
                if c >= layer.kw - 1 and (c - layer.kw + 1) % layer.sw == 0 and (c - layer.kw + 1) // layer.sw < layer.ow)
    L = ["(* keep_hierarchy *)",
         f"module {layer.name} (\n{_ports(iw, ow)});",
         f"  // sliding windows {layer.kh}x{layer.kw} stride {layer.sh}x{layer.sw} over {layer.h}x{layer.w}x{layer.c} "
         f"({layer.dtype.name}); line buffer of {taps} pixels",
         "  wire en = out_ready;  // a register: the downstream FIFO's ready (stalls the whole layer)",
         "  assign in_ready = en;",
         f"  localparam [{layer.h - 1}:0] ROWOK = {_vhex(rowok, layer.h)};",
         f"  localparam [{layer.w - 1}:0] COLOK = {_vhex(colok, layer.w)};",
         f"  reg [{rb - 1}:0] row;",
         f"  reg [{cb - 1}:0] col;"]
    if taps > 1:
        L.append(f"  reg [{(taps - 1) * pw - 1}:0] sr;  // sr[0] = previous pixel")
        L.append(f"  wire [{taps * pw - 1}:0] cur = {{sr, in_data}};  // cur[0] = incoming pixel")
    else:
        L.append(f"  wire [{pw - 1}:0] cur = in_data;")
    parts = []
    for ky in range(layer.kh):
        for kx in range(layer.kw):
            d = (layer.kh - 1 - ky) * layer.w + (layer.kw - 1 - kx)
            parts.append(f"cur[{(d + 1) * pw - 1}:{d * pw}]")
    L.append(f"  wire [{ow - 1}:0] window = {{{', '.join(reversed(parts))}}};")
    L.append("  always @(posedge clk) if (en && in_valid) begin")
    L.append("    out_data <= window;")
    if taps > 1:
        L.append(f"    sr <= {f'cur[{(taps - 1) * pw - 1}:0]'};")
    L.append("  end")
    L += _raster("in_valid && ROWOK[row] && COLOK[col]", "in_valid", layer.h, layer.w) + ["endmodule", ""]
    return "\n".join(L)


def _raster(valid: str, step: str, h: int, w: int) -> list[str]:
    """The always-block of a layer that walks an h x w raster: ``out_valid <= valid`` and
    (row, col) advance on ``step`` while enabled."""
    rb, cb = clog2(h), clog2(w)
    return ["  always @(posedge clk) begin",
            "    if (rst) begin out_valid <= 1'b0; row <= 0; col <= 0; end",
            "    else if (en) begin",
            f"      out_valid <= {valid};",
            f"      if ({step}) begin",
            f"        if (col == {cb}'d{w - 1}) begin col <= 0; row <= (row == {rb}'d{h - 1}) ? {rb}'d0 : row + {rb}'d1; end",
            f"        else col <= col + {cb}'d1;",
            "      end",
            "    end",
            "  end"]


def pad_module(layer: Pad) -> str:
    ib, ob = layer.dtype.bits, layer.odtype.bits
    pt, pl, pb, pr = layer.pads
    rb, cb = clog2(layer.oh), clog2(layer.ow)
    iw, ow = layer.c * ib, layer.c * ob
    if layer.recode:
        elems = [f"{{in_data[{c}], 1'b0}}" for c in range(layer.c)]
    else:
        elems = [f"in_data[{c * ib + ib - 1}:{c * ib}]" for c in range(layer.c)]
    padv = "{" + ", ".join([f"{ob}'d{layer.pad_value}"] * layer.c) + "}"
    L = ["(* keep_hierarchy *)",
         f"module {layer.name} (\n{_ports(iw, ow)});",
         f"  // zero padding {list(layer.pads)} of {layer.h}x{layer.w}x{layer.c} ({layer.dtype.name} -> {layer.odtype.name}, "
         f"pad code {layer.pad_value})",
         "  wire en = out_ready;  // a register: the downstream FIFO's ready (stalls the whole layer)",
         f"  reg [{rb - 1}:0] row;",
         f"  reg [{cb - 1}:0] col;",
         f"  wire inside = (row >= {rb}'d{pt}) && (row < {rb}'d{pt + layer.h}) && (col >= {cb}'d{pl}) && (col < {cb}'d{pl + layer.w});",
         "  assign in_ready = en && inside;",
         "  wire fire = !inside || in_valid;",
         f"  wire [{ow - 1}:0] value = inside ? {{{', '.join(reversed(elems))}}} : {padv};",
         "  always @(posedge clk) if (en && fire) out_data <= value;",
         *_raster("fire", "fire", layer.oh, layer.ow),
         "endmodule", ""]
    return "\n".join(L)


def pool_module(layer: Pool) -> str:
    b = layer.dtype.bits
    iw, ow = layer.k * layer.c * b, layer.c * b
    L = ["(* keep_hierarchy *)",
         f"module {layer.name} (\n{_ports(iw, ow)});",
         f"  // per-channel max/min over {layer.k} taps ({layer.dtype.name})",
         "  wire en = out_ready;  // a register: the downstream FIFO's ready (stalls the whole layer)",
         "  assign in_ready = en;",
         f"  wire [{ow - 1}:0] r;"]
    for c in range(layer.c):
        taps = [f"in_data[{(k * layer.c + c) * b + b - 1}:{(k * layer.c + c) * b}]" for k in range(layer.k)]
        if b == 1:
            op = " | " if layer.is_max[c] else " & "
            L.append(f"  assign r[{c}] = {op.join(taps)};")
        else:
            cmp = ">" if layer.is_max[c] else "<"
            cur = taps[0]
            for k, t in enumerate(taps[1:], 1):
                name = f"m{c}_{k}"
                L.append(f"  wire [{b - 1}:0] {name} = ({t} {cmp} {cur}) ? {t} : {cur};")
                cur = name
            L.append(f"  assign r[{c * b + b - 1}:{c * b}] = {cur};")
    L += ["  always @(posedge clk) begin",
          "    if (rst) out_valid <= 1'b0;",
          "    else if (en) out_valid <= in_valid;",
          "  end", "  always @(posedge clk) if (en && in_valid) out_data <= r;", "endmodule", ""]
    return "\n".join(L)


def width(elems: int, dt: DType) -> int:
    return elems * dt.bits


def top_module(graph: FpgaGraph) -> str:
    iw = width(graph.in_elems, graph.in_dtype)
    ow = width(graph.out_elems, graph.out_dtype)
    L = ["module optc_top (",
         "  input clk, input rst,",
         f"  input in_valid, output in_ready, input [{iw - 1}:0] in_data,",
         f"  output out_valid, input out_ready, output [{ow - 1}:0] out_data);"]
    prev = ("in_valid", "in_ready", "in_data")
    for i, layer in enumerate(graph.layers):
        lw = width(layer.out_elems, layer.out_dtype)
        last = i == len(graph.layers) - 1
        o = ("out_valid", "out_ready", "out_data") if last else (f"{layer.name}_ov", f"{layer.name}_or", f"{layer.name}_od")
        if not last:
            L += [f"  wire {o[0]}, {o[1]};", f"  wire [{lw - 1}:0] {o[2]};"]
        L.append(f"  {layer.name} u_{layer.name} (.clk(clk), .rst(rst), .in_valid({prev[0]}), .in_ready({prev[1]}), "
                 f".in_data({prev[2]}), .out_valid({o[0]}), .out_ready({o[1]}), .out_data({o[2]}));")
        if not last:
            f = (f"f{i}_v", f"f{i}_r", f"f{i}_d")
            L += [f"  wire {f[0]}, {f[1]};", f"  wire [{lw - 1}:0] {f[2]};",
                  f"  optc_fifo2 #(.W({lw})) u_fifo{i} (.clk(clk), .rst(rst), .in_valid({o[0]}), .in_ready({o[1]}), "
                  f".in_data({o[2]}), .out_valid({f[0]}), .out_ready({f[1]}), .out_data({f[2]}));"]
            prev = f
    L += ["endmodule", ""]
    return "\n".join(L)


def emit(graph: FpgaGraph, title: str = "optc FPGA pipeline") -> dict[str, str]:
    """``{"model.v": all modules, "tb.v": testbench}``."""
    parts = [f"// {title}: generated by optc (backends/fpga/rtl.py); do not edit.",
             f"// in: {graph.in_vecs} words/image of {graph.in_elems} x {graph.in_dtype.name}; "
             f"out: {graph.out_vecs} words/image of {graph.out_elems} x {graph.out_dtype.name}",
             "`default_nettype wire", ""]
    sizes = sorted({layer.simd for layer in graph.mvaus()})
    for s in sizes:
        parts.append(popcount_module(s))
    parts.append(FIFO)
    for layer in graph.layers:
        parts.append({"mvau": mvau_module, "swg": swg_module, "pool": pool_module, "pad": pad_module}[layer.kind](layer))
    parts.append(top_module(graph))
    return {"model.v": "\n".join(parts), "tb.v": testbench(graph)}


def testbench(graph: FpgaGraph) -> str:
    iw = width(graph.in_elems, graph.in_dtype)
    ow = width(graph.out_elems, graph.out_dtype)
    return f"""// Cycle-accurate testbench (generated by optc): streams the words of rtl_in.hex back to
// back (a new word whenever the design is ready), keeps out_ready high, and logs every input
// acceptance ("I cycle index") and output word ("O cycle hex") to rtl_log.txt.
`timescale 1ns/1ps
module tb;
  parameter NIN = 1;
  parameter NOUT = 1;
  parameter TIMEOUT = 1000000;
  reg clk = 1'b0;
  reg rst = 1'b1;
  always #5 clk = ~clk;
  reg [{iw - 1}:0] mem [0:NIN-1];
  integer ip = 0, op = 0, cycle = 0, fo;
  wire in_ready, out_valid;
  wire [{ow - 1}:0] out_data;
  wire in_valid = !rst && (ip < NIN);
  wire [{iw - 1}:0] in_data = (ip < NIN) ? mem[ip] : {iw}'d0;
  optc_top dut (.clk(clk), .rst(rst), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
                .out_valid(out_valid), .out_ready(1'b1), .out_data(out_data));
  initial begin
    $readmemh("rtl_in.hex", mem);
    fo = $fopen("rtl_log.txt", "w");
    repeat (3) @(posedge clk);
    rst <= 1'b0;
  end
  always @(posedge clk) begin
    if (!rst) begin
      cycle <= cycle + 1;
      if (in_valid && in_ready) begin
        $fdisplay(fo, "I %0d %0d", cycle, ip);
        ip <= ip + 1;
      end
      if (out_valid) begin
        $fdisplay(fo, "O %0d %h", cycle, out_data);
        op <= op + 1;
        if (op + 1 == NOUT) begin
          $fclose(fo);
          $finish;
        end
      end
      if (cycle > TIMEOUT) begin
        $fdisplay(fo, "T %0d", cycle);
        $fclose(fo);
        $finish;
      end
    end
  end
endmodule
"""


def shell(graph: FpgaGraph) -> str:
    """``optc_pnr_shell``: the pipeline behind narrow registered I/O for place-and-route. The
    input vector is shifted in from an 8-bit port (every input bit is a real input), each
    output word is XOR-folded onto an 8-bit port (every output bit stays observable, so
    synthesis removes nothing), and reset is registered."""
    iw = width(graph.in_elems, graph.in_dtype)
    ow = width(graph.out_elems, graph.out_dtype)
    shift = f"sh <= {{sh[{iw - 9}:0], din}};" if iw > 8 else f"sh <= din[{iw - 1}:0];"
    folds = " ^ ".join(f"od[{min(ow, i + 8) - 1}:{i}]" if min(ow, i + 8) - i == 8 else
                       f"{{{8 - (min(ow, i + 8) - i)}'b0, od[{min(ow, i + 8) - 1}:{i}]}}" for i in range(0, ow, 8))
    return f"""// Place-and-route harness (generated by optc): narrow registered I/O around optc_top.
module optc_pnr_shell (input clk, input rst_pin, input [7:0] din, input din_valid, input dout_ready,
                       output reg [7:0] dout, output reg dout_valid, output reg ready);
  reg rst, v, r;
  reg [{iw - 1}:0] sh;
  wire in_ready, ov;
  wire [{ow - 1}:0] od;
  always @(posedge clk) begin
    rst <= rst_pin; v <= din_valid; r <= dout_ready; ready <= in_ready;
    {shift}
    dout_valid <= ov;
    dout <= {folds};
  end
  optc_top core (.clk(clk), .rst(rst), .in_valid(v), .in_ready(in_ready), .in_data(sh),
                 .out_valid(ov), .out_ready(r), .out_data(od));
endmodule
"""
