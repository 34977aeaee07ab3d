// optc FPGA kernel library (header-only, Vitis HLS style): bit-serial matrix-vector products,
// sliding-window generation and pooling on packed streams. The generated layer functions
// (layers.cpp) call these with their constants; see backends/fpga/ir.py for the semantics.
//
// Element types: BIPOLAR (1 bit, 1 = +1, 0 = -1), UINT (B-bit unsigned), INT (B-bit two's
// complement). A value is sum_p coef_p * plane_p over its bit planes: bipolar = b - ~b,
// uint = sum 2^i b_i, int = the same with -2^(B-1) for the top bit. So a dot product is
//   sum_a sum_b coef_a coef_b popcount(W_a & X_b)
// over weight planes a and input planes b ("bit-plane accumulation"); binary x binary
// layers use popcount(xnor(w, x)) instead (the dot product is 2 * popcount - N).
#ifndef OPTC_BNN_H
#define OPTC_BNN_H
#include <ap_int.h>
#include <hls_stream.h>

namespace optc {

enum Kind { BIPOLAR = 0, UINT = 1, INT = 2 };

template <int N> inline int popcount(const ap_uint<N>& x) {
  int c = 0;
  for (int i = 0; i < N; i++) {
#pragma HLS UNROLL
    c += x[i] ? 1 : 0;
  }
  return c;
}

// plane p of a lane-packed word (SIMD lanes of B bits): bit p of every lane
template <int SIMD, int B> inline ap_uint<SIMD> plane(const ap_uint<SIMD * B>& v, int p) {
  ap_uint<SIMD> r;
  for (int i = 0; i < SIMD; i++) {
#pragma HLS UNROLL
    r[i] = v[i * B + p];
  }
  return r;
}

template <int K, int B> struct Planes {
  static constexpr int count = (K == BIPOLAR) ? 2 : B;
  static int bit(int p) { return (K == BIPOLAR) ? 0 : p; }
  static bool inverted(int p) { return K == BIPOLAR && p == 1; }
  static long long coef(int p) {
    if (K == BIPOLAR) return p == 0 ? 1 : -1;
    if (K == INT && p == B - 1) return -(1ll << p);
    return 1ll << p;
  }
};

// One PE's contribution for one fold: SIMD weights against SIMD inputs.
template <int SIMD, int WK, int WB, int IK, int IB>
inline long long dot(const ap_uint<SIMD * WB>& w, const ap_uint<SIMD * IB>& x) {
  if (WK == BIPOLAR && IK == BIPOLAR) {
    return popcount<SIMD>(~(ap_uint<SIMD>(w) ^ ap_uint<SIMD>(x)));  // XNOR-popcount
  }
  long long acc = 0;
  for (int a = 0; a < Planes<WK, WB>::count; a++) {
#pragma HLS UNROLL
    ap_uint<SIMD> wa = plane<SIMD, WB>(w, Planes<WK, WB>::bit(a));
    if (Planes<WK, WB>::inverted(a)) wa = ~wa;
    for (int b = 0; b < Planes<IK, IB>::count; b++) {
#pragma HLS UNROLL
      ap_uint<SIMD> xb = plane<SIMD, IB>(x, Planes<IK, IB>::bit(b));
      if (Planes<IK, IB>::inverted(b)) xb = ~xb;
      acc += Planes<WK, WB>::coef(a) * Planes<IK, IB>::coef(b) * popcount<SIMD>(wa & xb);
    }
  }
  return acc;
}

// Sliding-window generator: pixels (C elements of B bits each) in raster order in, one window
// of KH x KW x C elements ((ky, kx, c) order) per output position out. A line buffer in RTL;
// here the image buffer that HLS maps to BRAM.
template <int H, int W, int C, int KH, int KW, int SH, int SW, int B>
void swg(hls::stream<ap_uint<C * B> >& in, hls::stream<ap_uint<KH * KW * C * B> >& out, int images) {
  static ap_uint<C * B> buf[H][W];
  const int OH = (H - KH) / SH + 1, OW = (W - KW) / SW + 1;
  for (int n = 0; n < images; n++) {
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
#pragma HLS PIPELINE II=1
        buf[y][x] = in.read();
      }
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
#pragma HLS PIPELINE II=1
        ap_uint<KH * KW * C * B> win;
        for (int ky = 0; ky < KH; ky++)
          for (int kx = 0; kx < KW; kx++) {
            const int t = (ky * KW + kx) * C * B;
            win.range(t + C * B - 1, t) = buf[oy * SH + ky][ox * SW + kx];
          }
        out.write(win);
      }
  }
}

// Zero padding of an image stream (FINN's FMPadding): padded pixels carry PADV in every channel.
// RECODE: bipolar input bits become 2-bit codes x + 1 (bit 1 = +1 -> 2, bit 0 = -1 -> 0; pad 1).
template <int H, int W, int C, int PT, int PL, int PB, int PR, int IB, int OB, bool RECODE>
void pad(hls::stream<ap_uint<C * IB> >& in, hls::stream<ap_uint<C * OB> >& out, int images, unsigned long long padv) {
  const int OH = H + PT + PB, OW = W + PL + PR;
  for (int n = 0; n < images; n++)
    for (int y = 0; y < OH; y++)
      for (int x = 0; x < OW; x++) {
#pragma HLS PIPELINE II=1
        ap_uint<C * OB> o;
        const bool inside = y >= PT && y < PT + H && x >= PL && x < PL + W;
        ap_uint<C * IB> p;
        if (inside) p = in.read();
        for (int c = 0; c < C; c++) {
#pragma HLS UNROLL
          unsigned long long v = padv;
          if (inside) {
            v = p.range(c * IB + IB - 1, c * IB).to_uint64();
            if (RECODE) v = v ? 2 : 0;
          }
          o.range(c * OB + OB - 1, c * OB) = v;
        }
        out.write(o);
      }
}

// Pooling over a window vector (K taps of C channels, unsigned codes): per channel max or min.
// On bipolar data max is OR and min is AND.
template <int C, int K, int B>
void pool(hls::stream<ap_uint<K * C * B> >& in, hls::stream<ap_uint<C * B> >& out, int vecs, const bool is_max[C]) {
  for (int v = 0; v < vecs; v++) {
#pragma HLS PIPELINE II=1
    ap_uint<K * C * B> win = in.read();
    ap_uint<C * B> r;
    for (int c = 0; c < C; c++) {
#pragma HLS UNROLL
      unsigned long long m = win.range(c * B + B - 1, c * B).to_uint64();
      for (int k = 1; k < K; k++) {
        unsigned long long e = win.range((k * C + c) * B + B - 1, (k * C + c) * B).to_uint64();
        m = is_max[c] ? (e > m ? e : m) : (e < m ? e : m);
      }
      r.range(c * B + B - 1, c * B) = m;
    }
    out.write(r);
  }
}

}  // namespace optc
#endif
