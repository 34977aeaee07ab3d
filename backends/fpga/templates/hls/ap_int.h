// optc stand-in for Vitis HLS <ap_int.h>: just enough of ap_uint<N> / ap_int<N> for the
// generated kernels to compile with g++ (C simulation) without the Xilinx headers. With Vitis,
// drop this directory from the include path and the real header is used instead.
// ap_uint<N>: N-bit unsigned, any N (bit access, range access, bitwise ops, hex constructor).
// ap_int<N>: N-bit signed, N <= 64, wraps like hardware on assignment.
#ifndef OPTC_AP_INT_STANDIN_H
#define OPTC_AP_INT_STANDIN_H
#include <cstdint>
#include <cstring>
#include <string>

template <int N> struct ap_uint;

template <int N> struct ap_bit_ref {
  ap_uint<N>* p; int i;
  operator bool() const { return (p->w[i >> 6] >> (i & 63)) & 1u; }
  ap_bit_ref& operator=(bool b) {
    uint64_t m = uint64_t(1) << (i & 63);
    p->w[i >> 6] = b ? (p->w[i >> 6] | m) : (p->w[i >> 6] & ~m);
    return *this;
  }
  ap_bit_ref& operator=(const ap_bit_ref& o) { return *this = bool(o); }
};

template <int N> struct ap_range_ref {
  ap_uint<N>* p; int hi, lo;
  uint64_t to_uint64() const {
    uint64_t v = 0;
    for (int i = hi; i >= lo; --i) v = (v << 1) | ((p->w[i >> 6] >> (i & 63)) & 1u);
    return v;
  }
  template <int M> operator ap_uint<M>() const {
    ap_uint<M> r;
    for (int i = lo; i <= hi && i - lo < M; ++i) r[i - lo] = bool((*p)[i]);
    return r;
  }
  ap_range_ref& operator=(uint64_t v) {
    for (int i = lo; i <= hi; ++i) { (*p)[i] = (i - lo < 64) ? ((v >> (i - lo)) & 1u) : 0; }
    return *this;
  }
  template <int M> ap_range_ref& operator=(const ap_uint<M>& v) {
    for (int i = lo; i <= hi; ++i) (*p)[i] = (i - lo < M) ? bool(v[i - lo]) : false;
    return *this;
  }
};

template <int N> struct ap_uint {
  static constexpr int WORDS = (N + 63) / 64;
  uint64_t w[WORDS];
  void clear_top() { if (N % 64) w[WORDS - 1] &= (uint64_t(1) << (N % 64)) - 1; }
  ap_uint() { std::memset(w, 0, sizeof w); }
  ap_uint(unsigned long long v) { std::memset(w, 0, sizeof w); w[0] = v; clear_top(); }
  ap_uint(unsigned long v) : ap_uint((unsigned long long)v) {}
  ap_uint(unsigned v) : ap_uint((unsigned long long)v) {}
  ap_uint(long long v) : ap_uint((unsigned long long)v) {}
  ap_uint(long v) : ap_uint((unsigned long long)v) {}
  ap_uint(int v) : ap_uint((unsigned long long)(long long)v) {}
  ap_uint(bool v) : ap_uint((unsigned long long)v) {}
  template <int M> ap_uint(const ap_uint<M>& o) {
    std::memset(w, 0, sizeof w);
    for (int i = 0; i < WORDS && i < ap_uint<M>::WORDS; ++i) w[i] = o.w[i];
    clear_top();
  }
  ap_uint(const char* s, int radix = 16) {  // hexadecimal only (what the generator emits)
    std::memset(w, 0, sizeof w);
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
    int len = (int)std::strlen(s), bit = 0;
    (void)radix;
    for (int k = len - 1; k >= 0 && bit < N; --k, bit += 4) {
      char c = s[k];
      uint64_t d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : c - 'A' + 10;
      for (int b = 0; b < 4 && bit + b < N; ++b) if ((d >> b) & 1u) w[(bit + b) >> 6] |= uint64_t(1) << ((bit + b) & 63);
    }
  }
  ap_bit_ref<N> operator[](int i) { return ap_bit_ref<N>{this, i}; }
  bool operator[](int i) const { return (w[i >> 6] >> (i & 63)) & 1u; }
  ap_range_ref<N> range(int hi, int lo) { return ap_range_ref<N>{this, hi, lo}; }
  ap_range_ref<N> range(int hi, int lo) const { return ap_range_ref<N>{const_cast<ap_uint*>(this), hi, lo}; }
  ap_uint operator~() const { ap_uint r; for (int i = 0; i < WORDS; ++i) r.w[i] = ~w[i]; r.clear_top(); return r; }
  ap_uint operator^(const ap_uint& o) const { ap_uint r; for (int i = 0; i < WORDS; ++i) r.w[i] = w[i] ^ o.w[i]; return r; }
  ap_uint operator&(const ap_uint& o) const { ap_uint r; for (int i = 0; i < WORDS; ++i) r.w[i] = w[i] & o.w[i]; return r; }
  ap_uint operator|(const ap_uint& o) const { ap_uint r; for (int i = 0; i < WORDS; ++i) r.w[i] = w[i] | o.w[i]; return r; }
  bool operator==(const ap_uint& o) const { return std::memcmp(w, o.w, sizeof w) == 0; }
  bool operator!=(const ap_uint& o) const { return !(*this == o); }
  uint64_t to_uint64() const { return w[0]; }
  std::string to_hex() const {  // big-endian hex digits, ceil(N/4) of them
    static const char* d = "0123456789abcdef";
    std::string s;
    for (int k = (N + 3) / 4 - 1; k >= 0; --k) {
      int v = 0;
      for (int b = 3; b >= 0; --b) { int i = 4 * k + b; v = (v << 1) | (i < N ? (*this)[i] : 0); }
      s += d[v];
    }
    return s;
  }
};

template <int N> struct ap_int {
  static_assert(N >= 1 && N <= 64, "ap_int stand-in: N <= 64");
  long long v;
  static long long wrap(long long x) {
    if (N == 64) return x;
    unsigned long long m = (1ull << N) - 1, u = (unsigned long long)x & m;
    return (u >> (N - 1)) ? (long long)(u | ~m) : (long long)u;
  }
  ap_int() : v(0) {}
  ap_int(long long x) : v(wrap(x)) {}
  ap_int(int x) : v(wrap(x)) {}
  ap_int(unsigned x) : v(wrap((long long)x)) {}
  ap_int(long x) : v(wrap(x)) {}
  ap_int(unsigned long x) : v(wrap((long long)x)) {}
  ap_int(unsigned long long x) : v(wrap((long long)x)) {}
  operator long long() const { return v; }
  ap_int& operator+=(long long x) { v = wrap(v + x); return *this; }
  ap_int& operator-=(long long x) { v = wrap(v - x); return *this; }
};
#endif
